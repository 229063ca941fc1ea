"""Realistic bugs in lab 07: (name, text in the solution, replacement, questions that must lose points[, options]).

One variant retrains (A initialised to zero: the LoRA layers never learn, and the trained model shows it); the
others change pure functions and re-run only their cells.
"""

BUGS = [
    ("B randomly initialised",
     "self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=w.device, dtype=w.dtype))",
     "self.lora_B = nn.Parameter(torch.randn(base.out_features, r, device=w.device, dtype=w.dtype) * 0.01)",
     {"lora_linear", "lora_inject"}),
    ("scale alpha instead of alpha / r", "self.r, self.alpha, self.scaling = r, alpha, alpha / r",
     "self.r, self.alpha, self.scaling = r, alpha, alpha",
     {"lora_linear", "lora_merge", "lora_inject", "lora_peft", "lora_merge_unload"}),
    ("A initialised to zero too (no gradient ever flows)", "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))",
     "nn.init.zeros_(self.lora_A)", {"lora_linear", "lora_peft", "lora_specialist"}, {"retrain": True}),
    ("A created without the base weight's dtype and device",
     "self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=w.device, dtype=w.dtype))",
     "self.lora_A = nn.Parameter(torch.empty(r, base.in_features))", {"lora_linear"}),
    ("the layer does not freeze its base", "        self.base = base\n        base.requires_grad_(False)\n",
     "        self.base = base\n", {"lora_linear"}),
    ("forward adds the update even when merged", "        if self.merged:\n            return out\n", "",
     {"lora_merge"}),
    ("merge without the scale", "self.base.weight += self.scaling * (self.lora_B @ self.lora_A)",
     "self.base.weight += self.lora_B @ self.lora_A", {"lora_merge", "lora_merge_unload"}),
    ("merge twice adds the update twice",
     "        if not self.merged:\n            self.base.weight += self.scaling * (self.lora_B @ self.lora_A)\n"
     "            self.merged = True",
     "        self.base.weight += self.scaling * (self.lora_B @ self.lora_A)\n        self.merged = True",
     {"lora_merge", "lora_merge_unload"}),
    ("unmerge that does not restore the weight",
     "            self.base.weight -= self.scaling * (self.lora_B @ self.lora_A)\n            self.merged = False",
     "            self.merged = False", {"lora_merge"}),
    ("the base model left trainable", "    model.requires_grad_(False)\n    for name, linear in linears.items():",
     "    for name, linear in linears.items():", {"lora_inject"}),
    ("LoRA on every Linear layer, targets ignored (only checked)", "        if any(matches(name, t) for t in targets):",
     "        if True:", {"lora_inject", "lora_peft", "lora_merge_unload"}),
    ("targets matched as substrings", 'return name == target or name.endswith("." + target)',
     "return target in name", {"lora_inject"}),
    ("a wrong target name ignored instead of raising", "    if missing:\n        available",
     "    if False:\n        available", {"lora_inject"}),
    ("the model frozen before the target names are checked",
     "    missing = [t for t in targets if not any(matches(name, t) for name in linears)]",
     "    model.requires_grad_(False)\n"
     "    missing = [t for t in targets if not any(matches(name, t) for name in linears)]", {"lora_inject"}),
    ("a generator of target names read twice", "    targets = list(target_modules)\n    linears = {",
     "    targets = target_modules\n    linears = {", {"lora_inject"}),
    ("count that forgets d_out", "r * (m.in_features + m.out_features)", "r * m.in_features", {"lora_count"}),
    ("count of every Linear layer, targets ignored",
     "if isinstance(m, nn.Linear) and any(name == t or name.endswith(\".\" + t) for t in targets))",
     "if isinstance(m, nn.Linear))", {"lora_count"}),
    ("peft's default lora_alpha (8) instead of alpha", "config = LoraConfig(r=r, lora_alpha=alpha, target_modules",
     "config = LoraConfig(r=r, target_modules", {"lora_peft"}),
    ("A and B copied into the wrong peft weights",
     'layer.lora_A["default"].weight.copy_(module.lora_A)\n'
     '                layer.lora_B["default"].weight.copy_(module.lora_B)',
     'layer.lora_A["default"].weight.copy_(module.lora_B.T)\n'
     '                layer.lora_B["default"].weight.copy_(module.lora_A.T)',
     {"lora_peft"}),
    ("merge_lora merges but leaves the LoRA layers in place",
     "            module.merge()\n            parent, _, child = name.rpartition(\".\")\n"
     "            setattr(model.get_submodule(parent), child, module.base)",
     "            module.merge()", {"lora_merge_unload"}),
    ("load_adapter lets peft's RuntimeError through",
     "    try:\n        return PeftModel.from_pretrained(base_model, path)",
     "    return PeftModel.from_pretrained(base_model, path)\n    try:\n        pass", {"lora_adapter"}),
    ("load_adapter's error leaves out the base model the adapter was saved for",
     'raise ValueError(f"the adapter in {path} was saved for the base model {saved_for!r}, whose layers have "',
     'raise ValueError(f"the adapter in {path} does not fit this base model, whose layers have "', {"lora_adapter"}),
]

# Other valid answers: they must keep full marks.
CORRECT = [
    ("A drawn with uniform_ on ±1/sqrt(d_in)", "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))",
     "bound = 1 / math.sqrt(base.in_features)\n        nn.init.uniform_(self.lora_A, -bound, bound)"),
    ("forward with F.linear", "return out + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling",
     "return out + torch.nn.functional.linear(torch.nn.functional.linear(x, self.lora_A), self.lora_B) * self.scaling"),
    ("merge through .data", "self.base.weight += self.scaling * (self.lora_B @ self.lora_A)",
     "self.base.weight.data.add_(self.scaling * (self.lora_B @ self.lora_A))"),
    ("suffix matching by name parts", 'return name == target or name.endswith("." + target)',
     'return name.split(".")[-len(target.split(".")):] == target.split(".")'),
    ("count by building the LoRA model on a copy (works on the meta device too)",
     "    targets = list(target_modules)\n    return sum(r * (m.in_features + m.out_features) for name, m in",
     "    copied = add_lora(copy.deepcopy(model), target_modules, r, alpha=r)\n"
     "    return sum(p.numel() for p in copied.parameters() if p.requires_grad)\n"
     "    return sum(r * (m.in_features + m.out_features) for name, m in"),
    ("to_peft finds the peft layers by full name",
     "                layer = inner.get_submodule(name)",
     '                layer = peft_model.get_submodule("base_model.model." + name)'),
    ("load_adapter checks the error type by its message only",
     '        mismatches = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]',
     '        mismatches = [line.strip() for line in str(err).split("\\n")\n'
     '                      if line.strip().startswith("size mismatch")]'),
]
