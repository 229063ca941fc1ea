"""Realistic bugs in lab 08: (name, text in the solution, replacement, questions that must lose points[, options])."""

BUGS = [
    ("trainable set read from the active adapter only",
     "            owner = next((adapter for adapter in model.peft_config if adapter in parts), None)",
     "            owner = model.active_adapter if model.active_adapter in parts else None",
     {"adapters_trainable"}),
    ("specialist trained without set_adapter: whichever adapter is trainable trains",
     "    model.set_adapter(name)\n    trainable", "    trainable", {"adapters_trainable"}),
    ("specialist trained without checking what else is trainable",
     "    if trainable != {name}:\n", "    if not trainable:\n", {"adapters_trainable"}),
    ("adapter matched by substring (dates2's parameters counted as dates')",
     "            parts = name.split(\".\")\n", "            parts = name\n", {"adapters_trainable"}),
    ("router keyed on the adapter's name instead of the task's prefix",
     "        if request.startswith(prefix):", "        if request.startswith(name):", {"adapters_routing"}),
    ("answers returned grouped by adapter, not in request order",
     "        for i, text in zip(idx, texts, strict=True):\n            answers[i] = world.Task.parse(text)\n"
     "    return answers",
     "        answers += [world.Task.parse(text) for text in texts]\n    return answers[len(requests):]",
     {"adapters_routing"}),
    ("requests no specialist handles served by whatever adapter is active",
     "            with model.disable_adapter():\n                texts = evals.generate(model, tokenizer, prompts, "
     "MAX_NEW_TOKENS)",
     "            texts = evals.generate(model, tokenizer, prompts, MAX_NEW_TOKENS)", {"adapters_routing"}),
    ("delta without the layer's scale",
     "out[name] = module.scaling[adapter] * (module.lora_B[adapter].weight @ module.lora_A[adapter].weight)",
     "out[name] = module.lora_B[adapter].weight @ module.lora_A[adapter].weight", {"adapters_deltas"}),
    ("combination name reused: add_weighted_adapter keeps the stale mix",
     "    if name in model.peft_config:\n        model.delete_adapter(name)  # add_weighted_adapter would silently "
     "keep the old combination\n", "", {"adapters_combine"}),
    ("cross terms with w instead of sqrt(|w s|) on each factor",
     "                root = math.sqrt(abs(ws))\n", "                root = abs(ws)\n", {"adapters_combine"}),
    ("cross terms include the diagonal (the exact part)",
     "for j, (_, ca, a_j, _) in enumerate(factors) if i != j)", "for j, (_, ca, a_j, _) in enumerate(factors))",
     {"adapters_combine"}),
    ("deploy merges whatever adapter is active", "    merged.set_adapter(adapter)\n", "", {"adapters_deploy"}),
    ("deploy merges the model in place", "    merged = copy.deepcopy(model)\n", "    merged = model\n",
     {"adapters_deploy"}),
    ("foreign adapter refused only when peft raises (silent partial loads pass)",
     "        extra = [*result.missing_keys, *result.unexpected_keys]\n", "        extra = []\n", {"adapters_load"}),
    ("half-loaded adapter left in the model after a refusal",
     "        if adapter_name in model.peft_config:\n            model.delete_adapter(adapter_name)\n", "",
     {"adapters_load"}),
    ("4-bit load with bitsandbytes' default fp4", 'bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,\n'
     "                                bnb_4bit_compute_dtype=torch.float32)\n    return",
     "bnb_4bit_use_double_quant=True,\n                                bnb_4bit_compute_dtype=torch.float32)\n"
     "    return", {"qlora_load"}),
    ("4-bit load without double quantization", "bnb_4bit_use_double_quant=True,\n                                "
     "bnb_4bit_compute_dtype=torch.float32)\n    return",
     "bnb_4bit_use_double_quant=False,\n                                bnb_4bit_compute_dtype=torch.float32)\n"
     "    return", {"qlora_load"}),
    ("4-bit bytes without the absmax statistics",
     "            n += state.absmax.numel() * state.absmax.element_size()\n            if state.nested:",
     "            if False:", {"qlora_bytes"}),
    ("every linear layer counted as 4-bit, the float32 head included",
     "        n = w.numel() * w.element_size()\n        state = getattr(w, \"quant_state\", None)",
     "        n = w.numel() // 2 if w.dtype != torch.uint8 else w.numel()\n"
     "        state = getattr(w, \"quant_state\", None)", {"qlora_bytes"}),
    ("65B budget with the embeddings and head in 4 bits too",
     '    linears = [m for name, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in name]\n'
     "    n_linear = sum(m.weight.numel() for m in linears)\n    n_other",
     '    linears = [m for name, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in name]\n'
     "    n_linear = sum(p.numel() for p in model.parameters())\n    n_other", {"qlora_65b"}),
    ("65B budget with one Adam moment", '"Adam states": 8 * n_lora}', '"Adam states": 4 * n_lora}', {"qlora_65b"}),
]

# Other valid answers: they must keep full marks.
CORRECT = [
    ("combine refuses a taken name instead of replacing it",
     "        model.delete_adapter(name)  # add_weighted_adapter would silently keep the old combination",
     "        raise ValueError(f\"an adapter called {name!r} exists; pick another name\")"),
    ("deploy with merge_and_unload(adapter_names=[adapter]) after set_adapter",
     "    return merged.merge_and_unload()", "    return merged.merge_and_unload(adapter_names=[adapter])"),
    ("deltas from peft's get_delta_weight",
     "out[name] = module.scaling[adapter] * (module.lora_B[adapter].weight @ module.lora_A[adapter].weight)",
     "out[name] = module.get_delta_weight(adapter)"),
    ("router by a regular expression on the prefix", "        if request.startswith(prefix):",
     "        if __import__(\"re\").match(__import__(\"re\").escape(prefix), request):"),
    ("serve with set_adapter(..., inference_mode=True)", "            model.set_adapter(name)\n            texts",
     "            model.set_adapter(name, inference_mode=True)\n            texts"),
]
