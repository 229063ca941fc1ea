"""Small models built from config for hidden checks: a learner's code must work on a real Hugging Face architecture,
not only on the course's base model, so checks run it again on a second one the notebook never showed."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

VOCAB = 512  # the zoo tokenizer's ids, so its batches feed these models too


def tiny_qwen2(seed: int, *, width: int = 64, device: str | torch.device = "cpu", random_biases: bool = False,
               **overrides) -> Qwen2ForCausalLM:
    """Qwen2 (grouped-query attention: two key/value heads for four query heads, biases on q, k and v), in eval mode.

    A fresh model's biases are zero; `random_biases` draws them, so that code which drops a bias shows it.
    `name_or_path` is set because peft records it as an adapter's base model."""
    torch.manual_seed(seed)
    kw = {"vocab_size": VOCAB, "hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False,
          **overrides}
    model = Qwen2ForCausalLM(Qwen2Config(**kw)).to(device).eval()
    model.name_or_path = f"grader/qwen2-width-{width}"
    if random_biases:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(std=0.1)
    return model


def tiny_llama(seed: int, *, device: str | torch.device = "cpu", **overrides) -> LlamaForCausalLM:
    """A Llama with the zoo model's layer names and other shapes (width 64 unless overridden), in eval mode."""
    torch.manual_seed(seed)
    kw = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 4,
          "num_attention_heads": 4, "num_key_value_heads": 4, **overrides}
    model = LlamaForCausalLM(LlamaConfig(**kw)).to(device).eval()
    model.name_or_path = f"grader/llama-width-{kw['hidden_size']}-ff-{kw['intermediate_size']}"
    return model
