"""Realistic bugs in lab 10: (name, text in the solution, replacement, questions that must lose points).

All in pure functions: none reloads the wide model (its cell is expensive and reads only bnb_config, whose
question needs nothing it builds).
"""

BUGS = [
    ("NF4 asked for without naming the quant type (bitsandbytes' default is fp4)",
     "return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,",
     "return BitsAndBytesConfig(load_in_4bit=True,",
     {"qinf_config"}),
    ("double quantization never switched on",
     "bnb_4bit_use_double_quant=extra == \"dq\", bnb_4bit_compute_dtype=compute_dtype)",
     "bnb_4bit_compute_dtype=compute_dtype)",
     {"qinf_config"}),
    ("4-bit codes counted one byte each (packing forgotten)",
     "            return math.ceil(n / 2) + blocks + 4 * math.ceil(blocks / 256)\n"
     "        return math.ceil(n / 2) + 4 * blocks",
     "            return n + blocks + 4 * math.ceil(blocks / 256)\n"
     "        return n + 4 * blocks",
     {"qinf_bytes", "qinf_footprint"}),
    ("double quantization's float32 scales counted per 256 weights instead of per 256 blocks",
     "return math.ceil(n / 2) + blocks + 4 * math.ceil(blocks / 256)",
     "return math.ceil(n / 2) + blocks + 4 * math.ceil(n / 256)",
     {"qinf_bytes", "qinf_footprint"}),
    ("LLM.int8()'s row scales left out",
     "return n + 4 * out_features", "return n",
     {"qinf_bytes", "qinf_footprint"}),
    ("a partial last block not counted (floor instead of ceil)",
     "blocks = math.ceil(n / blocksize)", "blocks = n // blocksize",
     {"qinf_bytes", "qinf_footprint"}),
    ("layer shape read from the weight (a 4-bit layer's weight is the packed codes)",
     "return sum(weight_bytes(m.out_features, m.in_features, fmt, blocksize)",
     "return sum(weight_bytes(*m.weight.shape, fmt, blocksize)",
     {"qinf_footprint"}),
    ("every 2-D parameter counted as a Linear weight (the embeddings too)",
     "    return sum(weight_bytes(m.out_features, m.in_features, fmt, blocksize)\n"
     "               for m in model.modules() if isinstance(m, torch.nn.Linear))",
     "    return sum(weight_bytes(*p.shape, fmt, blocksize) for p in model.parameters() if p.dim() == 2)",
     {"qinf_footprint"}),
    ("FLOPs without the factor 2 (multiply-adds counted once)",
     "flops = 2 * tokens * in_features * out_features", "flops = tokens * in_features * out_features",
     {"qinf_intensity"}),
    ("activation traffic left out of the bytes moved",
     "moved = in_features * out_features * bytes_per_weight + tokens * (in_features + out_features) * "
     "bytes_per_activation",
     "moved = in_features * out_features * bytes_per_weight",
     {"qinf_intensity"}),
    ("roofline adds compute and memory time instead of taking the larger",
     "return max(flops / peak_flops, nbytes / bandwidth)", "return flops / peak_flops + nbytes / bandwidth",
     {"qinf_roofline"}),
    ("roofline takes the smaller of the two times",
     "return max(flops / peak_flops, nbytes / bandwidth)", "return min(flops / peak_flops, nbytes / bandwidth)",
     {"qinf_roofline"}),
    ("relative increase as a difference of bits per character, not a fraction",
     "return {name: value / base - 1.0 for name, value in values.items()}",
     "return {name: value - base for name, value in values.items()}",
     {"qinf_quality"}),
]

# Other valid answers: they must keep full marks.
CORRECT = [
    ("config with the compute dtype given as a string",
     "bnb_4bit_use_double_quant=extra == \"dq\", bnb_4bit_compute_dtype=compute_dtype)",
     "bnb_4bit_use_double_quant=extra == \"dq\", bnb_4bit_compute_dtype=str(compute_dtype).split(\".\")[-1])"),
    ("bytes by integer ceiling division",
     "        blocks = math.ceil(n / blocksize)\n"
     "        if fmt.endswith(\"+dq\"):\n"
     "            return math.ceil(n / 2) + blocks + 4 * math.ceil(blocks / 256)\n"
     "        return math.ceil(n / 2) + 4 * blocks",
     "        blocks = -(-n // blocksize)\n"
     "        codes = (n + 1) // 2\n"
     "        return codes + (blocks + 4 * -(-blocks // 256) if \"+dq\" in fmt else 4 * blocks)"),
    ("Linear layers found by named_modules",
     "for m in model.modules() if isinstance(m, torch.nn.Linear))",
     "for _, m in model.named_modules() if isinstance(m, torch.nn.Linear))"),
    ("intensity from FLOPs and bytes per token, scaled",
     "    flops = 2 * tokens * in_features * out_features\n",
     "    flops = tokens * (2 * in_features * out_features)\n"),
    ("relative increase as (value - base) / base",
     "return {name: value / base - 1.0 for name, value in values.items()}",
     "return {name: (value - base) / base for name, value in values.items()}"),
]
