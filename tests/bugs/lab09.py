"""Realistic bugs in lab 09: (name, text in the solution, replacement, questions that must lose points)."""

BUGS = [
    # the seven
    ("scale from the mean instead of the absmax",
     "amax = x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)",
     "amax = x.abs().mean() if dim is None else x.abs().mean(dim=dim, keepdim=True)",
     {"quant_absmax", "quant_llm_int8"}),
    ("NF4 codebook made symmetric, without its 0",
     "negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8)[:-1].double()).float()\n"
     "    values = torch.cat([positive, torch.zeros(1), negative])",
     "negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 9)[:-1].double()).float()\n"
     "    values = torch.cat([positive, negative])",
     {"quant_nf4_codebook"}),
    ("nearest NF4 level searched without midpoints (rounds up)",
     "index = torch.bucketize(scaled, (code[1:] + code[:-1]) / 2)",
     "index = torch.searchsorted(code, scaled.contiguous())",
     {"quant_nf4"}),
    ("nibble order swapped, in packing and unpacking alike",
     "    return (codes[..., 0::2] << 4) | codes[..., 1::2]\n    ### END SOLUTION\n\n\n"
     "def unpack_int4(packed: torch.Tensor) -> torch.Tensor:\n    ### BEGIN SOLUTION\n"
     "    return torch.stack([packed >> 4, packed & 0x0F], dim=-1).flatten(-2)",
     "    return (codes[..., 1::2] << 4) | codes[..., 0::2]\n    ### END SOLUTION\n\n\n"
     "def unpack_int4(packed: torch.Tensor) -> torch.Tensor:\n    ### BEGIN SOLUTION\n"
     "    return torch.stack([packed & 0x0F, packed >> 4], dim=-1).flatten(-2)",
     {"quant_pack", "quant_int4_group", "quant_nf4"}),
    ("zero-point codes not clamped after adding the rounded zero point",
     "q = (torch.round(x / safe) + zero).clamp(0, qmax)", "q = torch.round(x / safe) + zero",
     {"quant_zeropoint", "quant_int4_group"}),
    ("NF4 blocks taken down the columns instead of along the rows",
     "blocks = w.reshape(-1, blocksize).float()", "blocks = w.t().reshape(-1, blocksize).float()",
     {"quant_nf4"}),
    ("outlier threshold applied to the weights instead of the activations",
     "outliers = (x.abs() >= threshold).any(dim=0)",
     "outliers = (absmax_dequantize(qweight, wscale).abs() >= threshold).any(dim=0)",
     {"quant_llm_int8"}),
    ("GPTQ without the error feedback (plain round-to-nearest)",
     "        W[:, j + 1 :] -= err @ U[j : j + 1, j + 1 :]\n", "",
     {"quant_gptq"}),
    # more mistakes learners make
    ("NF4: a block of zeros divided by its absmax 0 (NaN)",
     "scaled = blocks / absmax.clamp(min=1e-38)[:, None]", "scaled = blocks / absmax[:, None]",
     {"quant_nf4"}),
    ("LLM.int8() activations quantized per tensor instead of per token",
     "qx, xscale = absmax_quantize(torch.where(outliers, 0.0, x), dim=1)",
     "qx, xscale = absmax_quantize(torch.where(outliers, 0.0, x))",
     {"quant_llm_int8"}),
    ("second-level scales counted per blocksize2 weights",
     "bits += absmax2_bits / (blocksize * blocksize2)", "bits += absmax2_bits / blocksize2",
     {"quant_double_quant"}),
    ("double-quantized state: the nested state's tensors not counted",
     "tensors += [state.offset, state.state2.absmax, state.state2.code]", "tensors += [state.offset]",
     {"quant_double_quant"}),
    ("output head left in float (only the decoder's Linears quantized)",
     "        for module in model.modules():\n            if isinstance(module, torch.nn.Linear):\n"
     "                module.weight.copy_(fake_quant(module.weight))",
     "        for module in model.model.modules():\n            if isinstance(module, torch.nn.Linear):\n"
     "                module.weight.copy_(fake_quant(module.weight))",
     {"quant_model"}),
    ("sensitivity scan that never restores the weights",
     "            with torch.no_grad():\n                module.weight.copy_(original)\n", "",
     {"quant_sensitivity"}),
]

# Other valid answers: they must keep full marks.
CORRECT = [
    ("absmax codes by multiplying with 127 / absmax",
     "q = torch.round(x / torch.where(scale > 0, scale, 1.0)).clamp(-127, 127)",
     "q = torch.round(x * torch.where(amax > 0, 127 / amax, 0.0)).clamp(-127, 127)"),
    ("zero point and codes rounded half up",
     "zero = torch.round(-lo / safe).clamp(0, qmax)\n    q = (torch.round(x / safe) + zero).clamp(0, qmax)",
     "zero = torch.floor(-lo / safe + 0.5).clamp(0, qmax)\n"
     "    q = (torch.floor(x / safe + 0.5) + zero).clamp(0, qmax)"),
    ("packing by reshaping into pairs",
     "    codes = codes.to(torch.uint8)\n    return (codes[..., 0::2] << 4) | codes[..., 1::2]",
     "    pairs = codes.to(torch.uint8).reshape(*codes.shape[:-1], -1, 2)\n"
     "    return pairs[..., 0] * 16 + pairs[..., 1]"),
    ("nearest NF4 level by argmin of the distances",
     "index = torch.bucketize(scaled, (code[1:] + code[:-1]) / 2)",
     "index = (scaled[..., None] - code).abs().argmin(dim=-1)"),
    ("LLM.int8() row scales without the outlier values only, as bitsandbytes",
     "qx, xscale = absmax_quantize(torch.where(outliers, 0.0, x), dim=1)",
     "qx, xscale = absmax_quantize(torch.where(x.abs() >= threshold, 0.0, x), dim=1)\n    qx[:, outliers] = 0"),
    ("GPTQ with the inverse Hessian updated after each column (OBQ)",
     "    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)\n"
     "    W_hat = torch.zeros_like(W)\n"
     "    for j in range(W.shape[1]):\n"
     "        w = W[:, j : j + 1]\n"
     "        q = (torch.round(w / safe) + zero_f).clamp(0, qmax)\n"
     "        W_hat[:, j : j + 1] = (q - zero_f) * scale\n"
     "        err = (w - W_hat[:, j : j + 1]) / U[j, j]\n"
     "        W[:, j + 1 :] -= err @ U[j : j + 1, j + 1 :]\n",
     "    Hinv = torch.linalg.inv(H)\n"
     "    W_hat = torch.zeros_like(W)\n"
     "    for j in range(W.shape[1]):\n"
     "        w = W[:, j : j + 1]\n"
     "        q = (torch.round(w / safe) + zero_f).clamp(0, qmax)\n"
     "        W_hat[:, j : j + 1] = (q - zero_f) * scale\n"
     "        err = (w - W_hat[:, j : j + 1]) / Hinv[j, j]\n"
     "        W[:, j + 1 :] -= err @ Hinv[j : j + 1, j + 1 :]\n"
     "        Hinv = Hinv - Hinv[:, j : j + 1] @ Hinv[j : j + 1, :] / Hinv[j, j]\n"),
    ("GPTQ in lazy blocks of 32 columns, as the paper's code",
     "    for j in range(W.shape[1]):\n"
     "        w = W[:, j : j + 1]\n"
     "        q = (torch.round(w / safe) + zero_f).clamp(0, qmax)\n"
     "        W_hat[:, j : j + 1] = (q - zero_f) * scale\n"
     "        err = (w - W_hat[:, j : j + 1]) / U[j, j]\n"
     "        W[:, j + 1 :] -= err @ U[j : j + 1, j + 1 :]\n",
     "    n = W.shape[1]\n"
     "    for i1 in range(0, n, 32):\n"
     "        i2 = min(i1 + 32, n)\n"
     "        errs = torch.zeros(W.shape[0], i2 - i1, device=W.device)\n"
     "        for j in range(i1, i2):\n"
     "            w = W[:, j : j + 1]\n"
     "            q = (torch.round(w / safe) + zero_f).clamp(0, qmax)\n"
     "            W_hat[:, j : j + 1] = (q - zero_f) * scale\n"
     "            err = (w - W_hat[:, j : j + 1]) / U[j, j]\n"
     "            W[:, j + 1 : i2] -= err @ U[j : j + 1, j + 1 : i2]\n"
     "            errs[:, j - i1 : j - i1 + 1] = err\n"
     "        W[:, i2:] -= errs @ U[i1:i2, i2:]\n"),
    ("Linear weights replaced by new Parameters",
     "                module.weight.copy_(fake_quant(module.weight))\n    return model",
     "                module.weight = torch.nn.Parameter(fake_quant(module.weight.detach()),\n"
     "                                                   requires_grad=module.weight.requires_grad)\n    return model"),
]
