"""Realistic bugs in lab 11: (name, text in the solution, replacement, questions that must lose points).

None of them retrains or re-measures the speed ladder: the ladder's cells are expensive and no bug here is one the
speed check is meant to catch (a slower rung is a measurement, graded only as a ratio in the learner's own run).
"""

_LOSS = (
    "        nats = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), mb[\"labels\"][:, 1:].flatten(),\n"
    "                               ignore_index=-100, reduction=\"sum\")\n"
    "        (nats / n_targets).backward()\n"
)
_MICRO_MEAN = 'int((mb["labels"][:, 1:] != -100).sum())'

BUGS = [
    # the five
    ("accumulation without dividing the loss (each micro-batch's mean loss backpropagated as it is)",
     "(nats / n_targets).backward()", f"(nats / {_MICRO_MEAN}).backward()", {"eff_train_step"}),
    ("gradients cleared inside the accumulation loop", "    for mb in micro_batches:\n        mb = {k: v.to(device)",
     "    for mb in micro_batches:\n        optimizer.zero_grad(set_to_none=True)\n        mb = {k: v.to(device)",
     {"eff_train_step"}),
    ("autocast around the optimizer step", "    optimizer.step()\n    return total.item() / n_targets",
     "    with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):\n"
     "        optimizer.step()\n    return total.item() / n_targets", {"eff_train_step"}),
    ("MFU from 2N FLOPs per token (the forward pass only)", "return 6 * n_params + 12 * n_layers",
     "return 2 * n_params + 12 * n_layers", {"eff_flops"}),
    ("checkpointing that recomputes with other dropout masks",
     "checkpoint(self.layer, *args, use_reentrant=False, **kwargs)",
     "checkpoint(self.layer, *args, use_reentrant=False, preserve_rng_state=False, **kwargs)", {"eff_checkpoint"}),
    # more accumulation mistakes
    ("accumulation as the mean of the micro-batches' means", "(nats / n_targets).backward()",
     f"(nats / {_MICRO_MEAN} / len(micro_batches)).backward()", {"eff_train_step"}),
    ("gradients never cleared: the previous step's leak into this one",
     "    optimizer.zero_grad(set_to_none=True)\n    total = torch.zeros", "    total = torch.zeros",
     {"eff_train_step"}),
    ("targets counted before the shift", 'n_targets = sum(int((mb["labels"][:, 1:] != -100).sum())',
     'n_targets = sum(int((mb["labels"] != -100).sum())', {"eff_train_step"}),
    # accounting
    ("grouped-query attention ignored: k and v as wide as q", "2 * d * kv_heads * head_dim",
     "2 * d * heads * head_dim", {"eff_params"}),
    ("a tied output head counted twice", "config.vocab_size * d * (1 if config.tie_word_embeddings else 2)",
     "config.vocab_size * d * 2", {"eff_params"}),
    ("mixed precision without the float32 master copy", "optimizer += 12 * n  # float32 master copy, m and v",
     "optimizer += 8 * n  # m and v", {"eff_memory"}),
    ("8-bit states for every tensor, small ones too", "optimizer += (2 if n >= 4096 else 8) * n",
     "optimizer += 2 * n", {"eff_memory"}),
    ("activations: every saved tensor counted, views again", "saved[id(storage)] = storage",
     "saved[len(saved)] = storage", {"eff_activations"}),
    ("activations: storages told apart by data_ptr (all 0 on the meta device)", "saved[id(storage)] = storage",
     "saved[storage.data_ptr()] = storage", {"eff_activations"}),
    ("profile ranked by total time", 'attr = "self_device_time_total" if torch.device(device).type == "cuda" else '
     '"self_cpu_time_total"', 'attr = "device_time_total" if torch.device(device).type == "cuda" else '
     '"cpu_time_total"', {"eff_profile"}),
    # the ladder, fp16, checkpointing
    ("the fused rung builds a foreach AdamW", '"fused": {"fused": True}', '"fused": {"foreach": True}', {"eff_build"}),
    ("rungs not seeded: each starts from other weights",
     "    torch.manual_seed(seed)\n    model = AutoModelForCausalLM", "    model = AutoModelForCausalLM",
     {"eff_build"}),
    ("fp16 step with optimizer.step() instead of scaler.step(optimizer)",
     "    scaler.step(optimizer)\n    scaler.update()",
     "    optimizer.step()\n    scaler.update()", {"eff_grad_scaler"}),
    ("fp16 step without scaler.update()", "    scaler.update()\n    return loss.item()", "    return loss.item()",
     {"eff_grad_scaler"}),
    ("checkpointing with the KV cache left on", "    model.config.use_cache = False\n", "", {"eff_checkpoint"}),
]

# Other valid answers: they must keep full marks.
CORRECT = [
    ("the model's own loss with num_items_in_batch",
     "        with amp:\n"
     "            logits = model(input_ids=mb[\"input_ids\"], attention_mask=mb[\"attention_mask\"]).logits\n"
     + _LOSS + "        total += nats.detach()\n",
     "        with amp:\n"
     "            loss = model(**mb, num_items_in_batch=n_targets).loss\n"
     "        loss.backward()\n"
     "        total += loss.detach().float() * n_targets\n"),
    ("gradients cleared with model.zero_grad()", "    optimizer.zero_grad(set_to_none=True)\n    total = torch.zeros",
     "    model.zero_grad()\n    total = torch.zeros"),
    ("transformers' own gradient checkpointing",
     "    model.config.use_cache = False\n    layers = model.model.layers\n    for i, layer in enumerate(layers):\n"
     "        layers[i] = Checkpointed(layer)\n",
     '    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})\n'),
    ("the model compiled in place", "        model = torch.compile(model)", "        model.compile()"),
    ("top operators with heapq.nlargest",
     "    rows = sorted(prof.key_averages(), key=lambda row: getattr(row, attr), reverse=True)\n"
     "    return [(row.key, getattr(row, attr) / 1e3) for row in rows[:k]]",
     "    import heapq\n\n"
     "    rows = heapq.nlargest(k, prof.key_averages(), key=lambda row: getattr(row, attr))\n"
     "    return [(row.key, getattr(row, attr) / 1e3) for row in rows]"),
]
