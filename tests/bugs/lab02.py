"""Realistic bugs in lab 02: (name, text in the solution, replacement, questions that must lose points)."""

BUGS = [
    ("merge stops after the first occurrence", "            i += 2\n", "            return out + ids[i + 2:]\n",
     {"bpe_merge", "bpe_train"}),
    ("pairs counted once per chunk (overlaps and repeats lost)", "for pair in pairwise(ids):",
     "for pair in set(pairwise(ids)):", {"bpe_train"}),
    ("ties broken by dictionary order", "best = min(counts, key=lambda p: (-counts[p], p))",
     "best = max(counts, key=counts.get)", {"bpe_train"}),
    ("encode merges the chunk's most frequent pair, not the lowest rank",
     "pair = min(pairwise(ids), key=lambda p: self.merges.get(p, math.inf))",
     "pair = Counter(pairwise(ids)).most_common(1)[0][0]", {"bpe_encode", "bpe_compression"}),
    ("decode joins tokens with spaces", 'return "".join(self.vocab[i]', 'return " ".join(self.vocab[i]',
     {"bpe_roundtrip", "bpe_special_tokens"}),
    ("decode always drops special tokens", "if not (skip_special_tokens and i < len(SPECIALS))",
     "if i >= len(SPECIALS)", {"bpe_special_tokens"}),
    ("special tokens left to BPE", "for part in re.split(special, text):", "for part in [text]:",
     {"bpe_special_tokens"}),
    ("special tokens not escaped in the regex", "re.escape(s) for s in SPECIALS", "s for s in SPECIALS",
     {"bpe_special_tokens"}),
]
