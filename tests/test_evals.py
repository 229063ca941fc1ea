"""labkit.evals (the one evaluation harness) and labkit.sft (the fine-tuning plumbing), on the zoo tokenizer with
small random models of three architectures: the harness must work unchanged on any Hugging Face causal LM."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from labkit import evals, sft, world, zoo
from labkit.lm import document_stream, heldout_nats

SMALL = zoo.Recipe(vocab_size=320, tokenizer_chars=50_000)


@pytest.fixture(scope="module")
def tokenizer():
    """The zoo's tokenizer recipe, chat template included, trained on less text (no model build needed)."""
    return zoo._train_tokenizer(SMALL)


def _model(arch: str, vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        model = LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        model = Qwen2ForCausalLM(cfg)
    else:
        cfg = GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=256)
        model = GPT2LMHeadModel(cfg)
    return model.eval()


def test_wilson_interval_known_values_and_edges():
    low, high = evals.wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    low, high = evals.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)  # not the empty interval rate ± z·se gives
    low, high = evals.wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.7225, abs=1e-4)
    assert evals.wilson_interval(500, 1000)[1] - evals.wilson_interval(500, 1000)[0] < 0.07  # narrows with n
    for bad in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            evals.wilson_interval(*bad)


def test_exact_match_strips_and_refuses_mismatched_lengths():
    score = evals.exact_match([" 2021-03-03\n", "2021-3-3", "x"], ["2021-03-03", "2021-03-03", "y"])
    assert (score.hits, score.n) == (1, 3) and score.rate == pytest.approx(1 / 3)
    assert "33.3%" in str(score)
    with pytest.raises(ValueError):
        evals.exact_match(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        evals.exact_match([], [])


def test_chat_template_prompt_is_a_prefix_and_masks_match_the_templates_own(tokenizer):
    for name, task in world.TASKS.items():
        for ex in task.examples("val", 20, seed=1):
            prompt = evals.chat_prompt(tokenizer, task, ex)
            assert prompt == f"<bos>user:\n{task.query(ex)}\nassistant:\n"
            item = sft.sft_example(tokenizer, task, ex)
            msgs = [{"role": "user", "content": task.query(ex)}, {"role": "assistant", "content": ex.answer}]
            full = tokenizer.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True)
            assert item["input_ids"] == full["input_ids"]
            assert [lab != sft.IGNORE for lab in item["labels"]] == [bool(m) for m in full["assistant_masks"]], name
            assert item["input_ids"].count(tokenizer.bos_token_id) == 1, "one <bos>, not two"
            answer = [i for i, lab in zip(item["input_ids"], item["labels"], strict=True) if lab != sft.IGNORE]
            assert tokenizer.decode(answer) == ex.answer + "<eos>"


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_batched_generation_equals_one_at_a_time(tokenizer, arch):
    """Left padding must not change any row's greedy continuation (GPT-2 has absolute positions: the position ids
    must start at each row's first real token)."""
    model = _model(arch, len(tokenizer))
    task = world.TASKS["dates"]
    prompts = [evals.chat_prompt(tokenizer, task, ex) for ex in task.examples("val", 6, seed=2)]
    prompts[0] = evals.chat_prompt(tokenizer, task, world.Example("1 jan 2000", "2000-01-01", "3 mar"))  # short
    together = evals.generate(model, tokenizer, prompts, max_new_tokens=6, stop=(), batch_size=6)
    alone = [evals.generate(model, tokenizer, [p], max_new_tokens=6, stop=())[0] for p in prompts]
    assert together == alone
    assert any(together), "a random model says something"
    plain = evals.generate(model, tokenizer, [task.prompt(ex) for ex in task.examples("val", 3, seed=2)],
                           max_new_tokens=4, stop=())
    assert len(plain) == 3
    with pytest.raises(ValueError, match="mixing"):
        evals.generate(model, tokenizer, [prompts[0], "plain text"])
    assert not model.training


def test_stop_strings_cut_the_continuation(tokenizer, monkeypatch):
    model = _model("llama", len(tokenizer))
    free = evals.generate(model, tokenizer, ["the capital of"], max_new_tokens=12, stop=())[0]
    stop = free[len(free) // 2]
    if stop.strip():
        cut = evals.generate(model, tokenizer, ["the capital of"], max_new_tokens=12, stop=(stop,))[0]
        assert cut == free[: free.index(stop)] and stop not in cut


def test_evaluate_task_scores_overall_and_by_slice(tokenizer, monkeypatch):
    task = world.TASKS["dates"]
    examples = task.examples("test", 40, seed=5)
    # An oracle that knows the answers except for one slice: the harness must count exactly that.
    wrong_slice = examples[0].slice
    answers = {evals.chat_prompt(tokenizer, task, ex): ex for ex in examples}
    monkeypatch.setattr(evals, "generate", lambda model, tok, prompts, *a, **k: [
        "nope" if answers[p].slice == wrong_slice else answers[p].answer + "\nmore" for p in prompts])
    result = evals.evaluate_task(None, tokenizer, task, examples)
    n_wrong = sum(ex.slice == wrong_slice for ex in examples)
    assert result.overall.hits == 40 - n_wrong and result.overall.n == 40
    assert result.slices[wrong_slice].hits == 0
    assert sum(s.n for s in result.slices.values()) == 40
    assert all(s.rate == 1.0 for name, s in result.slices.items() if name != wrong_slice)
    assert len(result.mistakes(100)) == n_wrong and wrong_slice in result.table()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_bits_per_char_is_the_whole_texts_loss_per_character(tokenizer, arch):
    model = _model(arch, len(tokenizer))
    docs = world.documents(3_000, seed=evals.FORGETTING_SEED)
    nats, tokens = heldout_nats(model, document_stream(tokenizer, docs), 128)
    assert tokens == len(document_stream(tokenizer, docs)) - 1
    bpc = evals.bits_per_char(model, tokenizer, docs)
    assert bpc == pytest.approx(nats / sum(map(len, docs)) / math.log(2), rel=1e-6)
    # a random model is near uniform over its vocabulary: log2(vocab) bits per token, a few tokens per ... char
    per_token = nats / tokens / math.log(2)
    assert abs(per_token - math.log2(len(tokenizer))) < 1.0
    default = evals.bits_per_char(model, tokenizer)
    assert default > 0 and math.isfinite(default)
    with pytest.raises(ValueError):
        evals.bits_per_char(model, tokenizer, [])


def test_collate_pads_right_and_loss_is_per_answer_token_not_mean_of_means(tokenizer):
    task = world.TASKS["units"]
    items = [sft.sft_example(tokenizer, task, ex) for ex in task.examples("train", 4, seed=0)]
    items[0] = sft.sft_example(tokenizer, world.TASKS["extract"], world.TASKS["extract"].examples("train", 1)[0])
    batch = sft.collate(items, tokenizer.pad_token_id)
    width = max(len(i["input_ids"]) for i in items)
    assert batch["input_ids"].shape == (4, width) == batch["labels"].shape == batch["attention_mask"].shape
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == item["input_ids"]
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()
        assert (batch["labels"][row, n:] == sft.IGNORE).all() and batch["attention_mask"][row].sum() == n
    model = _model("llama", len(tokenizer))
    loss = sft.sft_loss(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"][:, 1:],
                                                  ignore_index=sft.IGNORE, reduction="none")
    counted = batch["labels"][:, 1:] != sft.IGNORE
    assert loss.item() == pytest.approx((per_token.sum() / counted.sum()).item(), rel=1e-5)
    mean_of_means = (per_token.sum(1) / counted.sum(1)).mean()
    assert abs(loss.item() - mean_of_means.item()) > 1e-4  # uneven answer lengths: the two differ


def test_finetune_lowers_the_loss_and_trains_only_what_requires_grad(tokenizer):
    model = _model("qwen2", len(tokenizer))
    frozen = model.model.embed_tokens.weight
    frozen.requires_grad_(False)
    before = frozen.detach().clone()
    task = world.TASKS["dates"]
    losses = sft.finetune(model, tokenizer, task, task.examples("train", 64, seed=0), steps=30, lr=3e-3,
                          batch_size=8, progress=False)
    assert len(losses) == 30 and sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert torch.equal(frozen, before) and not model.training
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to fine-tune"):
        sft.finetune(model, tokenizer, task, task.examples("train", 4), steps=1, lr=1e-3, progress=False)
