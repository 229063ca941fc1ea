"""Realistic bugs in lab 02: (name, text in the solution, replacement, questions that must lose points).

CORRECT: (name, text in the solution, replacement) - other valid answers, which must keep full marks.
Each text occurs exactly once in the solution notebook's code cells.
"""

_MERGE_BODY = ("    out, i = [], 0\n    while i < len(ids):\n"
               "        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:\n"
               "            out.append(new_id)\n            i += 2\n        else:\n            out.append(ids[i])\n"
               "            i += 1\n    return out\n")
_PRINTABLE = ('    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), '
              '*range(ord("®"), ord("ÿ") + 1)]\n')
_DECODE_BYTES = 'return bytes(byte_of[c] for c in chars).decode("utf-8", errors="replace")'

BUGS = [
    ("merge stops after the first occurrence", "            i += 2\n", "            return out + ids[i + 2:]\n",
     {"bpe_merge", "bpe_train"}),
    # The old checks used ids of one digit only: this passed bpe_merge and failed everything that calls it. Its
    # merges hold ids that do not exist yet, so `tok = BPETokenizer(merges)` raises and bpe_compression reports
    # that cell's crash.
    ("merge_pair replaces digits in the ids joined as a string", _MERGE_BODY,
     '    text = " ".join(map(str, ids)).replace(f"{pair[0]} {pair[1]}", str(new_id))\n'
     '    return [int(t) for t in text.split()]\n',
     {"bpe_merge", "bpe_train", "bpe_encode", "bpe_special_tokens", "bpe_compression"}),
    ("pairs counted once per chunk (overlaps and repeats lost)", "for pair in pairwise(ids):",
     "for pair in set(pairwise(ids)):", {"bpe_train"}),
    ("pair counts not weighted by how often the chunk occurs", "counts[pair] += count", "counts[pair] += 1",
     {"bpe_train", "bpe_compression"}),
    ("ties broken by dictionary order", "best = min(counts, key=lambda p: (-counts[p], p))",
     "best = max(counts, key=counts.get)", {"bpe_train"}),
    ("ties broken on the first id only", "best = min(counts, key=lambda p: (-counts[p], p))",
     "best = min(counts, key=lambda p: (-counts[p], p[0]))", {"bpe_train"}),
    ("encode merges the chunk's most frequent pair, not the lowest rank",
     "pair = min(pairwise(ids), key=lambda p: self.merges.get(p, math.inf))",
     "pair = Counter(pairwise(ids)).most_common(1)[0][0]", {"bpe_encode", "bpe_compression"}),
    # The old checks only encoded characters of the alphabet: these two kept full marks.
    ("encode_chunk silently drops characters outside the alphabet", "ids = [CHAR_ID[c] for c in chunk]\n",
     "ids = [CHAR_ID[c] for c in chunk if c in CHAR_ID]\n", {"bpe_encode"}),
    ("encode_chunk maps characters outside the alphabet to id 0", "ids = [CHAR_ID[c] for c in chunk]\n",
     "ids = [CHAR_ID.get(c, 0) for c in chunk]\n", {"bpe_encode"}),
    ("decode joins tokens with spaces", 'return "".join(self.vocab[i]', 'return " ".join(self.vocab[i]',
     {"bpe_roundtrip", "bpe_special_tokens"}),
    # The old checks decoded lists only: a generator, read twice, decoded to "" and kept full marks.
    ("decode checks the ids first, which uses up a generator", 'return "".join(self.vocab[i]',
     'if any(not 0 <= i < self.vocab_size for i in ids):\n            raise ValueError("unknown token id")\n'
     '        return "".join(self.vocab[i]', {"bpe_roundtrip"}),
    ("decode always drops special tokens", "if not (skip_special_tokens and i < len(SPECIALS))",
     "if i >= len(SPECIALS)", {"bpe_special_tokens"}),
    ("special tokens left to BPE", "for part in re.split(special, text):", "for part in [text]:",
     {"bpe_special_tokens"}),
    ("special tokens not escaped in the regex", "re.escape(s) for s in SPECIALS", "s for s in SPECIALS",
     {"bpe_special_tokens"}),
    # byte_level (new question)
    ("byte table keeps the space as itself (isprintable)", _PRINTABLE,
     "    printable = [b for b in range(256) if chr(b).isprintable()]\n", {"byte_level"}),
    ("byte table shifts byte b to chr(256 + b), not the n-th shifted byte to chr(256 + n)",
     "table.update({b: chr(256 + n) for n, b in enumerate(shifted)})",
     "table.update({b: chr(256 + b) for b in shifted})", {"byte_level"}),
    ("byte table's printable range stops before '~'", 'range(ord("!"), ord("~") + 1)', 'range(ord("!"), ord("~"))',
     {"byte_level"}),
    ("byte_level maps characters, not UTF-8 bytes", 'return "".join(table[b] for b in text.encode("utf-8"))',
     'return "".join(table[ord(c)] for c in text)', {"byte_level"}),
    ("byte_level_decode decodes each byte on its own", _DECODE_BYTES,
     'return "".join(bytes([byte_of[c]]).decode("utf-8", errors="replace") for c in chars)', {"byte_level"}),
    ("byte_level_decode reads the bytes as Latin-1", _DECODE_BYTES,
     'return bytes(byte_of[c] for c in chars).decode("latin-1")', {"byte_level"}),
    ("byte_level_decode fails on a partial character", _DECODE_BYTES,
     'return bytes(byte_of[c] for c in chars).decode("utf-8")', {"byte_level"}),
    ("byte_level_decode drops invalid bytes", _DECODE_BYTES,
     'return bytes(byte_of[c] for c in chars).decode("utf-8", errors="ignore")', {"byte_level"}),
]

CORRECT = [
    ("merge_pair comparing slices", "if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:",
     "if tuple(ids[i:i + 2]) == tuple(pair):"),
    ("encode_chunk merges one occurrence at a time", "            ids = merge_pair(ids, pair, self.merges[pair])\n",
     "            k = list(pairwise(ids)).index(pair)\n"
     "            ids = ids[:k] + [self.merges[pair]] + ids[k + 2:]\n"),
    ("encode_chunk raises its own error for a character outside the alphabet", "ids = [CHAR_ID[c] for c in chunk]\n",
     "unknown = [c for c in chunk if c not in CHAR_ID]\n        if unknown:\n"
     "            raise ValueError(f\"not in the alphabet: {unknown}\")\n        ids = [CHAR_ID[c] for c in chunk]\n"),
    ("decode removes the special tokens' strings after joining",
     'return "".join(self.vocab[i] for i in ids if not (skip_special_tokens and i < len(SPECIALS)))',
     'text = "".join(self.vocab[i] for i in ids)\n'
     '        return re.sub("|".join(map(re.escape, SPECIALS)), "", text) if skip_special_tokens else text'),
    ("byte table from str.isprintable() and str.isspace()", _PRINTABLE,
     "    printable = [b for b in range(256) if chr(b).isprintable() and not chr(b).isspace()]\n"),
    ("byte table as GPT-2's encoder.py builds it",
     "    shifted = [b for b in range(256) if b not in printable]\n    table = {b: chr(b) for b in printable}\n"
     "    table.update({b: chr(256 + n) for n, b in enumerate(shifted)})\n    return table\n",
     "    bs, cs, n = printable[:], printable[:], 0\n    for b in range(256):\n        if b not in bs:\n"
     "            bs.append(b)\n            cs.append(256 + n)\n            n += 1\n"
     "    return dict(zip(bs, map(chr, cs)))\n"),
    ("byte_level through Latin-1 and str.translate", 'return "".join(table[b] for b in text.encode("utf-8"))',
     'return text.encode("utf-8").decode("latin-1").translate(table)'),
    ("byte_level_decode with a bytearray and codecs", _DECODE_BYTES,
     'import codecs\n    return codecs.decode(bytearray(byte_of[c] for c in chars), "utf-8", "replace")'),
]
