"""Realistic bugs in lab 06: (name, text in the solution, replacement, questions that must lose points[, options])."""

_LABELS = 'return {"input_ids": list(ids), "labels": [-100] * len(prompt) + list(ids[len(prompt):])}'
_PROMPT = 'prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True)["input_ids"]'
_IDS = 'ids = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": ex.answer}])["input_ids"]'

BUGS = [
    # The two mistakes that spoil training: the model is retrained with them (measured: 0-2 % exact match).
    ("prompt not masked (labels = input_ids)", _LABELS, 'return {"input_ids": list(ids), "labels": list(ids)}',
     {"sft_example", "ft_model"}, {"retrain": True}),
    ("<eos> not in the labels: the model never learns to stop", _LABELS,
     'labels = [-100] * len(prompt) + list(ids[len(prompt):])\n'
     '    return {"input_ids": list(ids), "labels": labels[:-1] + [-100]}',
     {"sft_example", "ft_model"}, {"retrain": True}),
    ("first answer token masked too", _LABELS,
     'return {"input_ids": list(ids), "labels": [-100] * (len(prompt) + 1) + list(ids[len(prompt) + 1:])}',
     {"sft_example"}),
    ("prompt without the generation prompt: 'assistant:' left in the labels", _PROMPT,
     'prompt = tokenizer.apply_chat_template(user)["input_ids"]', {"sft_example"}),
    ("template text tokenized again: <bos> twice", f"{_PROMPT}\n    {_IDS}",
     'prompt = tokenizer(tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False))'
     '["input_ids"]\n'
     '    ids = tokenizer(tokenizer.apply_chat_template(user + [{"role": "assistant", "content": ex.answer}], '
     'tokenize=False))["input_ids"]', {"sft_example"}),
    # Right for the zoo template, wrong for any other: caught by the hidden check with a second template.
    ("chat template written out by hand", f"{_PROMPT}\n    {_IDS}",
     'prompt = tokenizer("user:\\n" + task.query(ex) + "\\nassistant:\\n")["input_ids"]\n'
     '    ids = tokenizer("user:\\n" + task.query(ex) + "\\nassistant:\\n" + ex.answer)["input_ids"] + '
     '[tokenizer.eos_token_id]', {"sft_example"}),
    ("padding labelled with pad_id instead of -100", "labels = torch.full((len(batch), width), -100, dtype=torch.long)",
     "labels = torch.full((len(batch), width), pad_id, dtype=torch.long)", {"sft_collate"}),
    ("padding found by its id (masks <eos> when pad = eos)",
     '    return {"input_ids": ids, "attention_mask": mask, "labels": labels}',
     '    mask = (ids != pad_id).long()\n    labels = labels.masked_fill(mask == 0, -100)\n'
     '    return {"input_ids": ids, "attention_mask": mask, "labels": labels}', {"sft_collate"}),
    ("loss as a mean of per-example means",
     'return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)',
     'per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], ignore_index=-100,\n'
     '                                reduction="none")\n'
     '    return (per_token.sum(dim=1) / (batch["labels"][:, 1:] != -100).sum(dim=1)).mean()', {"sft_loss"}),
    ("labels not shifted",
     'return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)',
     'return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)', {"sft_loss"}),
    ("model called with input_ids only (a packed batch's mask is lost)",
     'inputs = {k: v for k, v in batch.items() if k != "labels"}', 'inputs = {"input_ids": batch["input_ids"]}',
     {"sft_loss"}),
    ("packing: an example that exactly fills a block goes to the next", "if used + n > block_size:",
     "if used + n >= block_size:", {"sft_packing"}),
    ("packing: position ids not restarted per example",
     'positions = [i for e in group for i in range(len(e["input_ids"]))]', "positions = list(range(len(ids)))",
     {"sft_packing"}),
    ("packing with the causal mask alone: examples attend to each other",
     "allowed = (example[:, :, None] == example[:, None, :]) & causal",
     "allowed = causal.expand(len(blocks), size, size)", {"sft_packing"}),
    ("packing mask as booleans (eager attention adds it to the scores)",
     "mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)", "mask = allowed",
     {"sft_packing"}),
    ("AdamW's 8 bytes per parameter of state forgotten", '"optimizer": 2 * grads, "total": weights + 3 * grads}',
     '"optimizer": 0, "total": weights + grads}', {"ft_memory"}),
    ("4 bytes per parameter assumed, whatever the dtype",
     "weights = sum(p.numel() * p.element_size() for p in params)\n"
     "    grads = sum(p.numel() * p.element_size() for p in params if p.requires_grad)",
     "weights = sum(4 * p.numel() for p in params)\n    grads = sum(4 * p.numel() for p in params if p.requires_grad)",
     {"ft_memory"}),
    ("gradients and states counted for frozen parameters",
     "grads = sum(p.numel() * p.element_size() for p in params if p.requires_grad)",
     "grads = sum(p.numel() * p.element_size() for p in params)", {"ft_memory"}),
    ("optimizer state read as exp_avg and exp_avg_sq only",
     "for state in optimizer.state.values() for v in state.values()",
     'for state in optimizer.state.values() for v in (state["exp_avg"], state["exp_avg_sq"])', {"ft_memory"}),
    ("batches drawn from the global random generator",
     "pick = torch.randint(0, len(train_data), (batch_size,), generator=generator).tolist()",
     "pick = torch.randint(0, len(train_data), (batch_size,)).tolist()", {"ft_loop"}),
    ("gradients never zeroed (they accumulate over steps)", "        optimizer.zero_grad(set_to_none=True)\n", "",
     {"ft_loop"}),
    ("model left in training mode after fine-tuning", "    model.eval()\n    return losses", "    return losses",
     {"ft_loop"}),
    ("evaluation on training examples", "return evals.evaluate_task(model, tokenizer, task, val_examples)",
     "return evals.evaluate_task(model, tokenizer, task, train_examples[:200])", {"ft_eval"}),
    ("forgetting 'before' measured on the fine-tuned model", '"before": evals.bits_per_char(base, tokenizer)',
     '"before": evals.bits_per_char(tuned, tokenizer)', {"ft_forgetting"}),
    ("forgetting measured on task text instead of world text", '"after": evals.bits_per_char(tuned, tokenizer)',
     '"after": evals.bits_per_char(tuned, tokenizer, [task.text(e) for e in val_examples])', {"ft_forgetting"}),
]

# Other valid answers: they must keep full marks.
CORRECT = [
    ("labels from the template's assistant mask", f"{_PROMPT}\n    {_IDS}\n    {_LABELS}",
     'out = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": ex.answer}],\n'
     "                                        return_assistant_tokens_mask=True)\n"
     '    ids = list(out["input_ids"])\n'
     '    return {"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, out["assistant_masks"])]}'),
    ("prompt tokenized from the template's text without special tokens", _PROMPT,
     "prompt = tokenizer(tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False),\n"
     '                       add_special_tokens=False)["input_ids"]'),
    ("loss from the model's own labels= loss",
     '    inputs = {k: v for k, v in batch.items() if k != "labels"}\n    logits = model(**inputs).logits.float()\n'
     '    return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)',
     "    return model(**batch).loss"),
    ("loss from log_softmax, summed and divided by the count",
     'return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)',
     'targets = batch["labels"][:, 1:]\n'
     "    keep = targets != -100\n"
     "    logp = F.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]\n"
     "    return -logp[keep].sum() / keep.sum()"),
    ("packing mask with -inf",
     "mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)",
     'mask = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))'),
    ("optimizer given every parameter (AdamW skips those without a gradient)",
     "optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)",
     "optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)"),
]
