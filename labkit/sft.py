"""Supervised fine-tuning plumbing: what Lab 06 builds by hand, for the labs after it and the grader.

One example becomes the chat-templated conversation (user: the task's query, assistant: the answer) with labels
that are -100 on every prompt token, so the loss is only on the answer and the <eos> that ends it. Batches are
right-padded (pad labels -100 too). ``finetune`` trains whatever parameters require a gradient, so the same loop
does a full fine-tune and a LoRA one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from labkit import world
from labkit.lm import cosine_lr, logits_of, sequence_loss

__all__ = ["IGNORE", "collate", "finetune", "sft_example", "sft_loss"]

IGNORE = -100  # the label cross_entropy skips


def sft_example(tokenizer: PreTrainedTokenizerBase, task: world.Task, ex: world.Example) -> dict[str, list[int]]:
    """input_ids of the whole conversation, and labels equal to them on the assistant's tokens (answer and <eos>)
    and IGNORE on the prompt's. The prompt is the conversation up to the generation prompt; the chat template
    guarantees that its tokens are a prefix of the whole conversation's."""
    user = [{"role": "user", "content": task.query(ex)}]
    prompt = tokenizer.apply_chat_template(user, tokenize=True, add_generation_prompt=True, return_dict=True)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": ex.answer}], tokenize=True,
                                         return_dict=True)
    ids, n = list(full["input_ids"]), len(prompt["input_ids"])
    if ids[:n] != list(prompt["input_ids"]):
        raise ValueError("the chat template's prompt tokens are not a prefix of the conversation's tokens")
    return {"input_ids": ids, "labels": [IGNORE] * n + ids[n:]}


def collate(batch: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids with pad_id, labels with IGNORE, attention_mask 1 on real tokens."""
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        labels[i, :n] = torch.tensor(b["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of the whole batch (each label predicted from the tokens before
    it): a sum over all unmasked tokens divided by their count, not a mean of per-example means."""
    logits = logits_of(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))
    return sequence_loss(logits[:, :-1], batch["labels"][:, 1:])


def finetune(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: world.Task,
             examples: Sequence[world.Example], steps: int, lr: float, batch_size: int = 16, seed: int = 0,
             warmup_steps: int | None = None, weight_decay: float = 0.0, progress: bool = True,
             desc: str = "fine-tuning") -> list[float]:
    """AdamW on the parameters that require a gradient, warm-up then cosine to lr/10, batches drawn at random
    (seeded) from the examples; returns the loss of every step. The model is left in eval mode."""
    data = [sft_example(tokenizer, task, ex) for ex in examples]
    if not data:
        raise ValueError("finetune needs at least one example")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no parameter requires a gradient: nothing to fine-tune")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 10) if warmup_steps is None else warmup_steps
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    losses = []
    model.train()
    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress, mininterval=1.0)
    for step in bar:
        pick = torch.randint(0, len(data), (batch_size,), generator=gen).tolist()
        batch = {k: v.to(device) for k, v in collate([data[i] for i in pick], tokenizer.pad_token_id).items()}
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, lr, lr / 10, warmup, steps)
        loss = sft_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    return losses
