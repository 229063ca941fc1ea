"""Tests for labkit.zoo (the cached base model) and labkit.hub (the opt-in real model).

The real recipe takes a minute or two to build, so it is built once per session (into a pytest
temp dir, or into $SPECIALIST_LABS_CACHE when CI pre-built it there). Corruption, staleness,
determinism and locking are tested on TINY, a recipe that builds in about a second.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grader.timings import calibrate
from labkit import hub, world, zoo

ROOT = Path(__file__).resolve().parents[1]
NAME = "tiny-llama"
TINY = dataclasses.replace(
    zoo.RECIPES[NAME], vocab_size=320, d_model=64, n_layers=2, n_heads=2, n_kv_heads=2, d_ff=192, context=64,
    tokenizer_chars=50_000, train_chars=100_000, heldout_chars=10_000, steps=20, batch_size=8, warmup_steps=2,
)
# Time budgets in units of grader.timings.calibrate(), measured in the same test: a busy machine slows both alike.
LOAD_UNITS = 20  # loading the cached base model (~1 unit); building it costs 150 units or more
FAST_UNITS = 10  # local work that must not wait on the network


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory) -> Path:
    """A cache holding the real base model, built at most once per session."""
    cache = os.environ.get(zoo.CACHE_ENV) or str(tmp_path_factory.mktemp("zoo-cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(zoo.CACHE_ENV, cache)
        zoo.base_model_path(NAME)
    return Path(cache)


@pytest.fixture
def real(real_cache, monkeypatch) -> Path:
    """The real model's directory, with $SPECIALIST_LABS_CACHE pointing at its cache for this test."""
    monkeypatch.setenv(zoo.CACHE_ENV, str(real_cache))
    return real_cache / "models" / NAME


@pytest.fixture(scope="module")
def real_model(real_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(zoo.CACHE_ENV, str(real_cache))
        return zoo.load_base_model(NAME, device="cpu")


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """The name of the TINY recipe, registered for this test, with an empty cache of its own.

    One thread: a model this small gains nothing from more, and on a busy CI machine two threads
    waiting on each other make a one-second build take thirty.
    """
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setitem(zoo.RECIPES, "test-tiny", TINY)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield "test-tiny"
    torch.set_num_threads(threads)


def tiny_dir() -> Path:
    return zoo.cache_dir() / "models" / "test-tiny"


# ----------------------------------------------------------------------------- the real model


def test_metadata_records_recipe_data_hashes_and_versions(real):
    meta = zoo.model_info(NAME)
    recipe = zoo.RECIPES[NAME]
    assert meta["name"] == NAME and meta["zoo_version"] == zoo.ZOO_VERSION
    assert meta["recipe"] == dataclasses.asdict(recipe)
    assert meta["data_version"] == world.DATA_VERSION and meta["seed"] == recipe.seed
    assert 0.9e6 < meta["n_params"] < 5e6
    assert meta["tokenizer_vocab"] <= recipe.vocab_size
    assert {"python", "torch", "transformers", "tokenizers"} <= set(meta["versions"])
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(meta["files"])
    for fname, digest in meta["files"].items():
        assert zoo._sha256(real / fname) == digest
    held = meta["heldout"]
    assert held["seed"] == recipe.heldout_seed != recipe.seed
    assert held["tokens"] > 10_000
    assert zoo.cache_problem(NAME) is None


def test_heldout_loss_is_far_below_unigram_and_honest(real, real_model):
    """The stored loss is re-measured on the loaded model, and beats a context-free model by a wide margin."""
    held = zoo.model_info(NAME)["heldout"]
    recipe = zoo.RECIPES[NAME]
    text = "".join(world.documents(recipe.heldout_chars, recipe.heldout_seed))
    unigram = world.unigram_entropy(text)  # ~3.18 nats/char
    floor = world.entropy_floor(seed=recipe.heldout_seed, n_chars=recipe.heldout_chars)  # ~0.27 nats/char
    assert held["unigram_nats_per_char"] == pytest.approx(unigram)
    assert held["entropy_floor_nats_per_char"] == pytest.approx(floor)
    assert held["loss_nats_per_char"] < 0.2 * unigram  # the build reaches ~0.35
    assert held["loss_nats_per_char"] > 0.95 * floor  # nothing can beat the true entropy
    model, tokenizer = real_model
    again = zoo.heldout_loss(model, tokenizer, recipe)
    assert again["loss_nats_per_token"] == pytest.approx(held["loss_nats_per_token"], rel=1e-4)


def test_model_knows_the_world_and_stops_at_eos(real_model):
    model, tokenizer = real_model
    right = 0
    for country in world.WORLD.countries:
        ids = tokenizer(f"the capital of {country} is", return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
        continuation = tokenizer.decode(out[0, ids.input_ids.shape[1]:])
        right += continuation.startswith(f" {world.WORLD.cities[country][0]}.")
    assert right >= 0.75 * len(world.WORLD.countries)
    assert out[0, -1] == tokenizer.eos_token_id and continuation.endswith(".\n<eos>")


def test_cached_model_loads_fast(real):
    """A cached load is far cheaper than a build: budgeted in calibration units, so a busy machine cannot fail it."""
    start = time.perf_counter()
    model, tokenizer = zoo.load_base_model(NAME, device="cpu")
    elapsed = time.perf_counter() - start
    units = elapsed / calibrate()
    assert units < LOAD_UNITS, f"a cached load took {elapsed:.1f} s, {units:.0f} calibration units"
    assert not model.training and next(model.parameters()).dtype == torch.float32


def test_every_linear_width_is_a_multiple_of_64(real_model):
    """bitsandbytes' 4-bit CPU kernels need out_features % 64 == 0 for every Linear, the LM head included."""
    model, tokenizer = real_model
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 7 * model.config.num_hidden_layers + 1  # q k v o, gate up down; lm_head
    for name, lin in linears:
        assert lin.out_features % 64 == 0 and lin.in_features % 64 == 0, name
    assert model.config.vocab_size % 64 == 0 and len(tokenizer) <= model.config.vocab_size


def test_from_pretrained_round_trip_gives_identical_logits(real, real_model, tmp_path):
    model, tokenizer = real_model
    ids = tokenizer(world.corpus(400, seed=9), return_tensors="pt").input_ids
    with torch.no_grad():
        reference = model(ids).logits
        direct = AutoModelForCausalLM.from_pretrained(real, local_files_only=True).eval()  # the cache dir itself
        assert torch.equal(direct(ids).logits, reference)
        model.save_pretrained(tmp_path / "copy")
        tokenizer.save_pretrained(tmp_path / "copy")
        copy = AutoModelForCausalLM.from_pretrained(tmp_path / "copy").eval()
        assert torch.equal(copy(ids).logits, reference)
    assert AutoTokenizer.from_pretrained(tmp_path / "copy")(world.corpus(400, seed=9)).input_ids == ids[0].tolist()


def test_tokenizer_round_trips_and_splits_digits(real):
    tokenizer = AutoTokenizer.from_pretrained(real)
    text = world.corpus(20_000, seed=123) + world.format_example(world.task_examples("train", 1)[0])
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert len(text) / len(ids) > 2  # BPE merges: clearly fewer tokens than characters
    pieces = [tokenizer.decode([i]) for i in ids[1:]]
    assert all(len(p) == 1 for p in pieces if any(ch.isdigit() for ch in p))  # "2021" -> 2, 0, 2, 1
    odd = "Hello, Wörld! 🙂\ttabs"  # byte-level: any text survives, even outside CHARSET
    assert tokenizer.decode(tokenizer(odd).input_ids, skip_special_tokens=True) == odd
    assert {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id} == {0, 1, 2}


# ----------------------------------------------------------------------------- cache integrity (TINY)


def test_truncated_weights_are_detected_and_rebuilt(tiny, capsys):
    path = zoo.base_model_path(tiny)
    weights = path / "model.safetensors"
    digest = zoo._sha256(weights)
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert "corrupted" in zoo.cache_problem(tiny) and "model.safetensors" in zoo.cache_problem(tiny)
    capsys.readouterr()
    assert zoo.base_model_path(tiny) == path
    assert "corrupted (model.safetensors does not match its recorded sha256); rebuilding" in capsys.readouterr().out
    assert zoo.cache_problem(tiny) is None and zoo._sha256(weights) == digest
    zoo.load_base_model(tiny, device="cpu")


def test_missing_files_and_metadata_are_detected(tiny):
    path = zoo.base_model_path(tiny)
    (path / "tokenizer.json").unlink()
    assert zoo.cache_problem(tiny) == "corrupted (tokenizer.json is missing)"
    (path / zoo.META_FILE).write_text("{not json")
    assert zoo.cache_problem(tiny).startswith("corrupted (labkit.json")
    zoo.base_model_path(tiny)
    assert zoo.cache_problem(tiny) is None


def test_data_version_change_makes_the_cache_stale(tiny, monkeypatch, capsys):
    zoo.base_model_path(tiny)
    monkeypatch.setattr(world, "DATA_VERSION", "999")
    assert "stale" in zoo.cache_problem(tiny) and "DATA_VERSION" in zoo.cache_problem(tiny)
    zoo.base_model_path(tiny)
    assert "rebuilding" in capsys.readouterr().out
    assert zoo.model_info(tiny)["data_version"] == "999" and zoo.cache_problem(tiny) is None


def test_recipe_change_makes_the_cache_stale(tiny, monkeypatch):
    zoo.base_model_path(tiny)
    monkeypatch.setitem(zoo.RECIPES, tiny, dataclasses.replace(TINY, lr=1e-3, steps=21))
    assert zoo.cache_problem(tiny) == "stale (recipe changed: steps, lr)"
    assert zoo.model_info(tiny)["recipe"]["lr"] == 1e-3


def test_zoo_version_bump_makes_the_cache_stale(tiny, monkeypatch):
    zoo.base_model_path(tiny)
    monkeypatch.setattr(zoo, "ZOO_VERSION", zoo.ZOO_VERSION + 1)
    assert zoo.cache_problem(tiny).startswith("stale (built by zoo version")


def test_two_builds_give_identical_weights(tiny):
    path = zoo.base_model_path(tiny)
    first = zoo.model_info(tiny)["files"]
    before = AutoModelForCausalLM.from_pretrained(path).state_dict()
    zoo.base_model_path(tiny, rebuild=True)
    assert zoo.model_info(tiny)["files"] == first  # weights, tokenizer and config, byte for byte
    after = AutoModelForCausalLM.from_pretrained(path).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_concurrent_first_use_builds_once(tiny):
    """Two processes racing on an empty cache: one builds, the other waits and reuses; no debris left."""
    code = (
        "import dataclasses, sys; from labkit import zoo; "
        f"zoo.RECIPES['test-tiny'] = dataclasses.replace(zoo.RECIPES['{NAME}'], **{dataclasses.asdict(TINY)!r}); "
        "print('READY', zoo.base_model_path('test-tiny'))"
    )
    env = {**os.environ, zoo.CACHE_ENV: str(zoo.cache_dir()), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum(out.count("Built 'test-tiny'") for out in outs) == 1, outs
    assert all(f"READY {tiny_dir()}" in out for out in outs)
    assert zoo.cache_problem(tiny) is None
    leftovers = [p.name for p in tiny_dir().parent.iterdir() if p.name not in ("test-tiny", ".test-tiny.lock")]
    assert leftovers == []  # no half-built or replaced directories


def test_bad_recipes_and_names_are_refused():
    with pytest.raises(ValueError, match="multiples of 64"):
        dataclasses.replace(TINY, d_ff=100)
    with pytest.raises(ValueError, match="multiples of 64"):
        dataclasses.replace(TINY, vocab_size=300)
    with pytest.raises(KeyError, match="no base model named"):
        zoo.base_model_path("gpt-17")


def test_cli_info_and_build(tiny, capsys):
    assert zoo.main(["info", "--name", tiny]) == 0
    assert f"{tiny}: missing" in capsys.readouterr().out
    assert zoo.main(["build", "--name", tiny]) == 0
    assert f"{tiny}: ready at {tiny_dir()}" in capsys.readouterr().out
    assert zoo.main(["info", "--name", tiny]) == 0
    assert "nats/char" in capsys.readouterr().out


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(zoo.CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert zoo.cache_dir() == Path.home() / ".cache" / "specialist-labs"
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path))
    assert zoo.cache_dir() == tmp_path


# ----------------------------------------------------------------------------- hub opt-in

NOT_CACHED = "specialist-labs/surely-not-in-any-cache"


def test_hub_without_opt_in_or_for_early_labs_uses_the_zoo_model(real, monkeypatch):
    monkeypatch.delenv(hub.ENV_VAR, raising=False)
    model, _ = hub.load_model_for_lab("07", device="cpu")
    assert model.config.hidden_size == zoo.RECIPES[NAME].d_model
    monkeypatch.setenv(hub.ENV_VAR, NOT_CACHED)
    model, _ = hub.load_model_for_lab("03_lora", device="cpu")  # before 05: never the hub model
    assert model.config.hidden_size == zoo.RECIPES[NAME].d_model


def test_hub_loads_a_local_directory_without_network(real, monkeypatch):
    monkeypatch.setenv(hub.ENV_VAR, str(real))
    model, tokenizer = hub.load_model_for_lab(5, device="cpu")
    assert tokenizer.pad_token is not None and model.config.vocab_size == zoo.RECIPES[NAME].vocab_size


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "unreachable"])
def test_hub_fails_fast_and_clearly_when_offline(monkeypatch, how):
    monkeypatch.setenv(hub.ENV_VAR, NOT_CACHED)
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(hub, "hub_is_reachable", lambda timeout_s=3.0: False)
    start = time.perf_counter()
    with pytest.raises(hub.HubModelUnavailable, match=f"{NOT_CACHED} is not cached and this machine is offline; "
                                                      f"unset {hub.ENV_VAR}"):
        hub.load_model_for_lab("05")
    elapsed = time.perf_counter() - start
    # Only local work, no network wait (an offline from_pretrained retries for ~25 s): budgeted in calibration units.
    assert elapsed < FAST_UNITS * calibrate(), f"took {elapsed:.1f} s"


def test_hub_really_offline_fails_within_the_timeout(monkeypatch):
    """No mocks: the real probe on this machine. Skipped where the hub can be reached."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    if hub.hub_is_reachable(timeout_s=3):
        pytest.skip("the Hugging Face hub is reachable from here")
    monkeypatch.setenv(hub.ENV_VAR, NOT_CACHED)
    start = time.perf_counter()
    with pytest.raises(hub.HubModelUnavailable, match="not cached and this machine is offline"):
        hub.load_model_for_lab("06", timeout_s=3)
    elapsed = time.perf_counter() - start
    assert elapsed < 3 + FAST_UNITS * calibrate(), f"took {elapsed:.1f} s"  # the probe's timeout, then local work


def test_hub_probe_gives_up_on_a_hanging_connection(monkeypatch):
    """The connection hangs until the test ends; the probe gives up after its timeout all the same."""
    hang = threading.Event()
    monkeypatch.setattr(hub.urllib.request, "urlopen", lambda *args, **kwargs: hang.wait(600))
    try:
        start = time.perf_counter()
        assert hub.hub_is_reachable(timeout_s=0.5) is False
        elapsed = time.perf_counter() - start
        assert 0.45 < elapsed < 0.5 + FAST_UNITS * calibrate(), f"took {elapsed:.1f} s"
    finally:
        hang.set()


def test_hub_rejects_a_lab_id_without_a_number(monkeypatch):
    monkeypatch.setenv(hub.ENV_VAR, NOT_CACHED)
    with pytest.raises(ValueError, match="lab id"):
        hub.load_model_for_lab("lora")


def test_lab02_trains_the_base_models_tokenizer_with_its_recipe():
    """Lab 02 shows byte-level tokens by training the base model's tokenizer again: same function, same numbers."""
    import nbformat

    r = zoo.RECIPES[NAME]
    nb = nbformat.read(next((ROOT / "solutions").glob("02_*.ipynb")), as_version=4)
    specials = json.dumps(list(zoo.SPECIAL_TOKENS))
    call = f"byte_level_bpe(world.documents({r.tokenizer_chars:_}, seed={r.seed}), {r.vocab_size}, {specials})"
    assert any(call in c.source for c in nb.cells if c.cell_type == "code"), call


# ----------------------------------------------------------------------------- specialists (TINY base, 3 steps)


@pytest.fixture
def tiny_specialist(tiny, monkeypatch):
    """The TINY base model's `dates` specialist, its recipe cut to 3 steps on 32 examples: built in about a second."""
    monkeypatch.setattr(zoo, "SPECIALIST_RECIPE", dataclasses.replace(zoo.SPECIALIST_RECIPE, train_examples=32,
                                                                      steps=3, batch_size=4))
    return tiny


def test_specialist_is_built_once_and_loads_like_the_base_model(tiny_specialist, capsys):
    path = zoo.specialist_path("dates", tiny_specialist)
    assert path == zoo.cache_dir() / "models" / f"{tiny_specialist}-dates"
    assert zoo.specialist_problem("dates", tiny_specialist) is None
    assert "Built the 'dates' specialist" in capsys.readouterr().out
    meta = json.loads((path / zoo.META_FILE).read_text())
    assert meta["recipe"] == dataclasses.asdict(zoo.SPECIALIST_RECIPE) and meta["task"] == "dates"
    assert zoo.specialist_info("dates", tiny_specialist) == meta
    assert len(meta["train_losses"]) == zoo.SPECIALIST_RECIPE.steps  # one loss per step, for plots
    base_path = zoo.base_model_path(tiny_specialist)
    model, base = AutoModelForCausalLM.from_pretrained(path), AutoModelForCausalLM.from_pretrained(base_path)
    assert model.config.hidden_size == TINY.d_model
    assert not torch.equal(model.lm_head.weight, base.lm_head.weight)  # a full fine-tune: every weight moved
    chat = [{"role": "user", "content": "x"}]
    assert (AutoTokenizer.from_pretrained(path).apply_chat_template(chat)
            == AutoTokenizer.from_pretrained(base_path).apply_chat_template(chat))
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert zoo.specialist_path("dates", tiny_specialist) == path  # the second call reuses it
    assert "Built" not in capsys.readouterr().out and (path / "model.safetensors").stat().st_mtime_ns == mtime
    leftovers = {p.name for p in path.parent.iterdir()} - {
        tiny_specialist, f"{tiny_specialist}-dates", f".{tiny_specialist}.lock", f".{tiny_specialist}-dates.lock"}
    assert leftovers == set()  # no half-built directories


def test_stale_or_corrupted_specialist_is_rebuilt(tiny_specialist, monkeypatch, capsys):
    path = zoo.specialist_path("dates", tiny_specialist)
    with monkeypatch.context() as mp:
        mp.setattr(zoo, "ZOO_VERSION", zoo.ZOO_VERSION + 1)
        assert zoo.specialist_problem("dates", tiny_specialist).startswith("stale (built by zoo version")
    meta = json.loads((path / zoo.META_FILE).read_text())
    (path / zoo.META_FILE).write_text(json.dumps({k: v for k, v in meta.items() if k != "train_losses"}))
    assert zoo.specialist_problem("dates", tiny_specialist) == "stale (no training curve recorded)"
    (path / zoo.META_FILE).write_text(json.dumps(meta))  # a record from before the curve was kept, put back
    monkeypatch.setattr(zoo, "SPECIALIST_RECIPE", dataclasses.replace(zoo.SPECIALIST_RECIPE, steps=4))
    assert zoo.specialist_problem("dates", tiny_specialist) == "stale (recipe changed: steps)"
    capsys.readouterr()
    zoo.specialist_path("dates", tiny_specialist)
    assert "is stale (recipe changed: steps); rebuilding" in capsys.readouterr().out
    assert json.loads((path / zoo.META_FILE).read_text())["recipe"]["steps"] == 4
    (path / "model.safetensors").write_bytes(b"half")  # a half-written or damaged weight file
    assert zoo.specialist_problem("dates", tiny_specialist).startswith("corrupted (model.safetensors")
    zoo.specialist_path("dates", tiny_specialist)
    assert zoo.specialist_problem("dates", tiny_specialist) is None


def test_specialist_goes_stale_when_its_base_model_changes(tiny_specialist, monkeypatch):
    zoo.specialist_path("dates", tiny_specialist)
    monkeypatch.setitem(zoo.RECIPES, tiny_specialist, dataclasses.replace(TINY, seed=1))
    zoo.base_model_path(tiny_specialist)  # rebuilt with other weights
    assert zoo.specialist_problem("dates", tiny_specialist) == (f"stale (base model {tiny_specialist!r} changed "
                                                                "since the fine-tune)")
    with pytest.raises(KeyError, match="no task named"):
        zoo.specialist_path("poetry", tiny_specialist)
