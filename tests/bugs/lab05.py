"""Realistic bugs in lab 05: (name, text in the solution, replacement, questions that must lose points)."""

BUGS = [
    ("tokenizer not saved", "    tokenizer.save_pretrained(path)\n", "", {"hf_roundtrip"}),
    ("weights pickled with torch.save instead of safetensors", "    model.save_pretrained(path)\n",
     "    os.makedirs(path, exist_ok=True)\n"
     '    torch.save(model.state_dict(), os.path.join(path, "pytorch_model.bin"))\n'
     "    model.config.save_pretrained(path)\n", {"hf_roundtrip"}),
    ("greedy decoding that samples", '"greedy": GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False',
     '"greedy": GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True', {"hf_generate_config"}),
    ("beam search with a single beam", "do_sample=False, num_beams=4)", "do_sample=False, num_beams=1)",
     {"hf_generate_config"}),
    ("batch padded on the right for generation", 'padding=True, padding_side="left", return_tensors="pt")',
     'padding=True, return_tensors="pt")', {"hf_generate"}),
    ("prompt decoded with the continuation", 'new_tokens = out[:, batch["input_ids"].shape[1]:]',
     "new_tokens = out", {"hf_generate"}),
    ("pipeline returns the prompt too", "do_sample=False, return_full_text=False)", "do_sample=False)",
     {"hf_pipeline"}),
    ("perplexity as exp of the total loss", "return torch.exp(total_nats / n_predicted).item()",
     "return torch.exp(total_nats).item()", {"hf_perplexity"}),
    ("labels not shifted", "F.cross_entropy(logits[:, :-1].flatten(0, 1), targets[:, 1:].flatten(),",
     "F.cross_entropy(logits.flatten(0, 1), targets.flatten(),", {"hf_perplexity"}),
    ("padding counted as text", 'targets = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)',
     'targets = batch["input_ids"]', {"hf_perplexity"}),
    ("evaluated in training mode (dropout on)", "    model.eval()\n    ids = tokenizer(text, verbose=False)",
     "    ids = tokenizer(text, verbose=False)", {"hf_perplexity"}),
    ("Trainer dataset without labels (loss is None)", ', "labels": list(b)}', "}",
     {"hf_trainer", "hf_continued_pretraining"}),
    ("labels shifted by hand, so twice in all", '"labels": list(b)}', '"labels": b[1:] + [-100]}',
     {"hf_trainer", "hf_continued_pretraining"}),
]

# the checks before issue 12 let these through (the per-batch mean and the lost train mode they did catch)
BUGS += [
    ("model loaded without its language-model head (AutoModel)",
     "    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)",
     "    from transformers import AutoModel\n"
     "    model = AutoModel.from_pretrained(path, dtype=torch.float32, local_files_only=True)", {"hf_roundtrip"}),
    ("save_model switches the model to eval mode", "    model.save_pretrained(path)\n",
     "    model.eval()\n    model.save_pretrained(path)\n", {"hf_roundtrip"}),
    ("greedy config that leaves do_sample and num_beams unset",
     '"greedy": GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)',
     '"greedy": GenerationConfig(max_new_tokens=max_new_tokens)', {"hf_generate_config"}),
    ("continuations squeezed (a single new token per prompt loses its dimension)",
     "return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)",
     "return tokenizer.batch_decode(new_tokens.squeeze(), skip_special_tokens=True)", {"hf_generate"}),
    ("perplexity from a mean loss times a token count (NaN for a batch that predicts nothing)",
     'reduction="sum")', 'reduction="mean") * int((targets[:, 1:] != -100).sum())', {"hf_perplexity"}),
    ("log of a softmax instead of a log-softmax",
     "nats = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets[:, 1:].flatten(), ignore_index=-100,\n"
     '                               reduction="sum")',
     "logp = torch.log(torch.softmax(logits[:, :-1], dim=-1))\n"
     '        nats = F.nll_loss(logp.flatten(0, 1), targets[:, 1:].flatten(), ignore_index=-100, reduction="sum")',
     {"hf_perplexity"}),
    ("loss computed in the model's dtype (bfloat16 for a bfloat16 model)", "logits = model(**batch).logits.float()",
     "logits = model(**batch).logits", {"hf_perplexity"}),
    ("perplexity as a mean of per-batch means",
     "total_nats += nats.double().cpu()\n        n_predicted += int((targets[:, 1:] != -100).sum())",
     "total_nats += nats.double().cpu() / int((targets[:, 1:] != -100).sum())\n        n_predicted += 1",
     {"hf_perplexity"}),
    ("perplexity does not restore training mode", "    model.train(was_training)\n    return torch.exp",
     "    return torch.exp", {"hf_perplexity"}),
    ("a generator of texts given to the tokenizer as if it were a list",
     "    for text in texts:  # one pass: texts may be a generator\n"
     '        stream += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]',
     '    for ids in tokenizer(texts)["input_ids"]:\n        stream += ids + [tokenizer.eos_token_id]',
     {"hf_trainer"}),
]

# Other valid answers: they must keep full marks.
CORRECT = [
    ("perplexity without the attention mask (right padding: no real token sees a pad)",
     "logits = model(**batch).logits.float()", 'logits = model(input_ids=batch["input_ids"]).logits.float()'),
    ("perplexity from log_softmax and gather",
     "nats = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets[:, 1:].flatten(), ignore_index=-100,\n"
     '                               reduction="sum")',
     "logp = F.log_softmax(logits[:, :-1], dim=-1)\n"
     "        keep = targets[:, 1:] != -100\n"
     "        nats = -logp.gather(-1, targets[:, 1:].clamp(min=0)[..., None])[..., 0][keep].sum()"),
    ("pipeline called once per prompt",
     'outputs = pipe(prompts, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False)\n'
     '    return [out[0]["generated_text"] for out in outputs]',
     'return [pipe(p, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False)[0]["generated_text"]\n'
     "            for p in prompts]"),
    ("make_lm_dataset that makes a list of the texts first",
     "    for text in texts:  # one pass: texts may be a generator\n"
     '        stream += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]',
     '    for ids in tokenizer(list(texts))["input_ids"]:\n        stream += ids + [tokenizer.eos_token_id]'),
]
