"""Realistic bugs in lab 03: (name, text in the solution, replacement, questions that must lose points[, options])."""

_ATTENTION = {"sdpa", "cached_causal_mask", "multi_head_attention", "gqa", "decoder_block", "llama_parity"}

BUGS = [
    ("attention without the causal mask", "        scores = scores.masked_fill(~allowed, float(\"-inf\"))\n", "",
     _ATTENTION | {"trained_transformer"}),
    ("softmax over the queries instead of the keys", "weights = torch.softmax(scores, dim=-1)",
     "weights = torch.softmax(scores, dim=-2)", _ATTENTION | {"trained_transformer"}),
    ("scores not scaled by 1/sqrt(head_dim)", "scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))",
     "scores = q @ k.transpose(-2, -1)", _ATTENTION),
    # Caught only by the hidden check with scores in the hundreds (the others stay far below exp's overflow at 88).
    ("softmax by hand without subtracting the maximum", "weights = torch.softmax(scores, dim=-1)",
     "weights = scores.exp() / scores.exp().sum(dim=-1, keepdim=True)", {"sdpa"}),
    ("softmax by hand, shifted by the maximum of the whole tensor", "weights = torch.softmax(scores, dim=-1)",
     "weights = (scores - scores.max()).exp()\n    weights = weights / weights.sum(dim=-1, keepdim=True)", {"sdpa"}),
    # Fewer queries than keys (cached decoding): the square case cannot tell these from the solution.
    ("causal mask aligned top-left, as is_causal=True does", ".tril(diagonal=t_k - t_q)", ".tril()",
     {"cached_causal_mask"}),
    ("causal mask sized by the queries only",
     "torch.ones(t_q, t_k, dtype=torch.bool, device=q.device).tril(diagonal=t_k - t_q)",
     "torch.ones(t_q, t_q, dtype=torch.bool, device=q.device).tril()", {"cached_causal_mask"}),
    ("causal mask shifted the wrong way", ".tril(diagonal=t_k - t_q)", ".tril(diagonal=t_q - t_k)",
     {"cached_causal_mask"}),
    ("RMSNorm eps outside the square root",
     "return self.weight * (x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps))",
     "return self.weight * (x / (x.pow(2).mean(dim=-1, keepdim=True).sqrt() + self.eps))", {"rms_norm"}),
    ("RMSNorm mean over the whole tensor",
     "return self.weight * (x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps))",
     "return self.weight * (x * torch.rsqrt(x.pow(2).mean() + self.eps))",
     {"rms_norm", "decoder_block", "llama_parity", "trained_transformer"}),
    ("rotate_half with the sign on the wrong half", "return torch.cat((-x2, x1), dim=-1)",
     "return torch.cat((x2, -x1), dim=-1)", {"rope", "multi_head_attention", "gqa", "decoder_block", "llama_parity"},
     {"retrain": True}),  # the model calls rotate_half when evaluated: trained with the bug, it learns around it
    ("RoPE angles interleaved instead of concatenated", "angles = torch.cat((angles, angles), dim=-1)",
     "angles = angles.repeat_interleave(2, dim=-1)", {"rope", "llama_parity"}, {"retrain": True}),
    ("SwiGLU gate and up projections swapped",
     "return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))",
     "return self.down_proj(self.gate_proj(x) * F.silu(self.up_proj(x)))", {"swiglu", "decoder_block", "llama_parity"}),
    ("heads split with a plain view", "proj(x).view(b, t, heads, self.head_dim).transpose(1, 2)",
     "proj(x).view(b, heads, t, self.head_dim)",
     {"multi_head_attention", "gqa", "decoder_block", "llama_parity", "trained_transformer"}),
    # Grouped-query attention: the training config has n_kv_heads = n_heads, so these leave the trained model alone.
    ("key/value heads tiled with repeat instead of repeat_interleave",
     "k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)",
     "k, v = k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1)", {"gqa"}),
    ("keys and values split into n_heads heads",
     "k, v = split(self.k_proj, self.n_kv_heads), split(self.v_proj, self.n_kv_heads)",
     "k, v = split(self.k_proj, self.n_heads), split(self.v_proj, self.n_heads)", {"gqa"}),
    ("key/value heads never repeated",
     "        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)\n", "", {"gqa"}),
    ("post-norm block", "h = x + self.self_attn(self.input_layernorm(x), cos, sin)[0]",
     "h = self.input_layernorm(x + self.self_attn(x, cos, sin)[0])", {"decoder_block", "llama_parity"}),
    ("no final norm", "return self.lm_head(self.norm(x))", "return self.lm_head(x)", {"llama_parity"}),
    # Parameter and FLOP counts.
    ("lm_head counted although tied", "lm_head = 0 if config.tie_word_embeddings else d * vocab", "lm_head = d * vocab",
     {"param_count"}),
    ("k_proj and v_proj counted as hidden x hidden",
     "2 * d * config.num_attention_heads * head_dim + 2 * d * config.num_key_value_heads * head_dim", "4 * d * d",
     {"param_count"}),
    ("RMSNorm gains not counted", "return vocab * d + config.num_hidden_layers * per_layer + d + lm_head",
     "return vocab * d + config.num_hidden_layers * (per_layer - 2 * d) + lm_head", {"param_count"}),
    ("attention products missing from the FLOPs",
     "config.num_hidden_layers * (q_o + k_v + mlp + scores_and_values)", "config.num_hidden_layers * (q_o + k_v + mlp)",
     {"forward_flops"}),
    ("attention FLOPs counted for the causal half only",
     "scores_and_values = 2 * (2 * config.num_attention_heads * T * T * head_dim)",
     "scores_and_values = 2 * (2 * config.num_attention_heads * (T * (T + 1) // 2) * head_dim)", {"forward_flops"}),
    ("attention products counted per key/value head",
     "scores_and_values = 2 * (2 * config.num_attention_heads * T * T * head_dim)",
     "scores_and_values = 2 * (2 * config.num_key_value_heads * T * T * head_dim)", {"forward_flops"}),
    ("lm_head FLOPs skipped when tied", "+ 2 * T * d * config.vocab_size\n",
     "+ (0 if config.tie_word_embeddings else 2 * T * d * config.vocab_size)\n", {"forward_flops"}),
]

CORRECT = [
    ("causal mask as the last T_q rows of the full mask",
     "torch.ones(t_q, t_k, dtype=torch.bool, device=q.device).tril(diagonal=t_k - t_q)",
     "torch.ones(t_k, t_k, dtype=torch.bool, device=q.device).tril()[t_k - t_q:]"),
    ("causal mask from absolute positions",
     "torch.ones(t_q, t_k, dtype=torch.bool, device=q.device).tril(diagonal=t_k - t_q)",
     "torch.arange(t_k, device=q.device) <= torch.arange(t_k - t_q, t_k, device=q.device)[:, None]"),
    ("additive -inf mask built with triu",
     "        scores = scores.masked_fill(~allowed, float(\"-inf\"))\n",
     "        scores = scores + torch.full((t_q, t_k), float(\"-inf\"), device=q.device).triu(t_k - t_q + 1)\n"),
    ("softmax by hand, shifted by each row's maximum", "weights = torch.softmax(scores, dim=-1)",
     "weights = (scores - scores.amax(dim=-1, keepdim=True)).exp()\n"
     "    weights = weights / weights.sum(dim=-1, keepdim=True)"),
    ("queries scaled before the product", "scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))",
     "scores = (q / math.sqrt(q.size(-1))) @ k.transpose(-2, -1)"),
    ("key/value heads repeated with expand and reshape, as transformers' repeat_kv",
     "k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)",
     "k, v = (z[:, :, None].expand(b, self.n_kv_heads, group, t, self.head_dim).reshape(b, self.n_heads, t, -1)\n"
     "                for z in (k, v))"),
    ("key/value heads picked by index", "k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)",
     "kv_of_head = torch.arange(self.n_heads, device=x.device) // group\n"
     "        k, v = k[:, kv_of_head], v[:, kv_of_head]"),
    ("parameter count from a list of matrix shapes",
     "    return vocab * d + config.num_hidden_layers * per_layer + d + lm_head\n",
     "    shapes = [(vocab, d), (d,)] + [(vocab, d)] * (not config.tie_word_embeddings)\n"
     "    kv = config.num_key_value_heads * head_dim\n"
     "    layer = [(d, d), (kv, d), (kv, d), (d, d), (config.intermediate_size, d), (config.intermediate_size, d),\n"
     "             (d, config.intermediate_size), (d,), (d,)]\n"
     "    shapes += layer * config.num_hidden_layers\n"
     "    return sum(math.prod(s) for s in shapes)\n"),
    ("FLOPs as 2 per weight per token plus the attention term, in floats",
     "    return config.num_hidden_layers * (q_o + k_v + mlp + scores_and_values) + 2 * T * d * config.vocab_size\n",
     "    matmul_weights = count_parameters(config) - config.vocab_size * d * (not config.tie_word_embeddings) \\\n"
     "        - (2 * config.num_hidden_layers + 1) * d\n"
     "    return 2.0 * T * matmul_weights + 4.0 * config.num_hidden_layers * T * T * d\n"),
    ("grouped-query attention by broadcasting each key/value head over its group of queries",
     "        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)\n"
     "        out, weights = attention(q, k, v, causal=True)\n",
     "        q = q.reshape(b, self.n_kv_heads, group, t, self.head_dim)  # query heads under their key/value head\n"
     "        out, weights = attention(q, k[:, :, None], v[:, :, None], causal=True)\n"
     "        out, weights = out.flatten(1, 2), weights.flatten(1, 2)\n"),
]
