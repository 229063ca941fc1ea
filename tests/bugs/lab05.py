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
