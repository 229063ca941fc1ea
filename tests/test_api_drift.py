"""API drift: the library calls in the solutions, checks and labkit match the installed libraries (grader/api_drift.py).

The first test checks the real repository and writes what it checked to .cache/test-output/api-drift.txt (the path
and the counts are printed; `pytest -s` shows them). The others prove the check can fail: a missing function, a bad
keyword, a removed keyword, each reported with the call, the keyword, where it is and the installed version.
"""

from __future__ import annotations

import json

import pytest
from conftest import ROOT

from grader import api_drift
from grader.api_drift import ApiUse, DriftProblem, check_uses, collect_uses

TABLE = ROOT / ".cache" / "test-output" / "api-drift.txt"


def _write(tmp_path, source: str, name: str = "synthetic.py"):
    path = tmp_path / name
    path.write_text(source)
    return collect_uses([path], tmp_path)


def _notebook(tmp_path, *cells: str, name: str = "99_synthetic.ipynb"):
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
          "cells": [{"cell_type": "markdown", "metadata": {}, "source": "# title"}]
          + [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": c}
             for c in cells]}
    path = tmp_path / name
    path.write_text(json.dumps(nb))
    return collect_uses([path], tmp_path)


def _one(problems: list[DriftProblem], keyword: str | None = None) -> DriftProblem:
    found = [p for p in problems if p.keyword == keyword]
    assert len(found) == 1, f"expected one problem for keyword {keyword!r}, got {[str(p) for p in problems]}"
    return found[0]


# --- the real repository ------------------------------------------------------------------------------------------


def test_repository_calls_match_installed_libraries():
    paths = api_drift.default_paths(ROOT)
    assert any(p.suffix == ".ipynb" for p in paths) and any(p.parts[-2] == "labs" for p in paths)
    uses = collect_uses(paths, ROOT)
    verdicts = api_drift.assess(uses)
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    TABLE.write_text(api_drift.format_table(verdicts) + "\n")
    names = {u.name for u in uses}
    calls = [u for u in uses if u.kind == "call"]
    keywords = sum(len(u.keywords) for u in calls)
    print(f"\nAPI drift: checked {len(uses)} uses ({len(calls)} calls with {keywords} keywords) of {len(names)} names "
          f"in {len({u.file for u in uses})} files; table in {TABLE}")

    # non-trivial: what the course really uses is there, aliases resolved
    for expected in ("transformers.AutoModelForCausalLM.from_pretrained", "transformers.LlamaConfig",
                     "torch.nn.functional.scaled_dot_product_attention", "torch.nn.functional.cross_entropy",
                     "tokenizers.trainers.BpeTrainer", "transformers.TrainingArguments"):
        assert expected in names, f"{expected} not collected; the collector lost track of the code"
    assert len(calls) > 200 and keywords > 100
    assert any(u.file.startswith("solutions/") for u in calls) and any(u.file.startswith("grader/labs/") for u in calls)

    problems = [v.problem for v in verdicts if v.problem is not None]
    assert not problems, (f"{len(problems)} library call(s) do not match the installed libraries "
                          f"(full table: {TABLE}):\n" + "\n".join(f"  {p}" for p in problems))


# --- it can fail ----------------------------------------------------------------------------------------------------


def test_missing_function_is_a_problem(tmp_path):
    uses = _write(tmp_path, "import torch.nn.functional as F\nF.no_such_function(1, dim=0)\n")
    problem = _one(check_uses(uses))
    assert problem.reason == "missing" and problem.use.name == "torch.nn.functional.no_such_function"
    text = str(problem)
    assert "synthetic.py:2" in text and "torch.nn.functional.no_such_function" in text
    assert f"torch {api_drift.installed_version('torch')}" in text


def test_missing_import_is_a_problem(tmp_path):
    uses = _write(tmp_path, "from transformers import NoSuchModelForCausalLM\n")
    problem = _one(check_uses(uses))
    assert problem.use.kind == "import" and problem.reason == "missing"
    assert "transformers.NoSuchModelForCausalLM" in str(problem) and "synthetic.py:1" in str(problem)


def test_bad_keyword_is_a_problem(tmp_path):
    uses = _write(tmp_path, "from torch import nn\nlayer = nn.Linear(4, 4, biass=False)\n")
    problem = _one(check_uses(uses), "biass")
    assert problem.reason == "unknown keyword" and problem.use.name == "torch.nn.Linear"
    text = str(problem)
    assert "torch.nn.Linear(biass=...)" in text and "synthetic.py:2" in text and "did you mean bias" in text
    assert f"torch {api_drift.installed_version('torch')}" in text


def test_bad_keyword_of_a_builtin_is_checked_against_the_stubs(tmp_path):
    """scaled_dot_product_attention is a C builtin: inspect cannot read it, torch's .pyi stubs can."""
    uses = _write(tmp_path, "import torch.nn.functional as F\n"
                            "def f(q, k, v):\n"
                            "    return F.scaled_dot_product_attention(q, k, v, causal=True, is_causal=True)\n")
    problems = check_uses(uses)
    problem = _one(problems, "causal")
    assert "torch.nn.functional.scaled_dot_product_attention(causal=...)" in str(problem)
    assert "synthetic.py:3" in str(problem) and "is_causal" in problem.detail
    assert not [p for p in problems if p.keyword == "is_causal"]


@pytest.mark.parametrize("keyword, version", [("load_in_4bit", "5.0"), ("load_in_8bit", "5.0")])
def test_removed_keyword_is_a_problem_although_from_pretrained_takes_kwargs(tmp_path, keyword, version):
    uses = _write(tmp_path, "from transformers import AutoModelForCausalLM\n"
                            f"model = AutoModelForCausalLM.from_pretrained('some/model', {keyword}=True)\n")
    problem = _one(check_uses(uses), keyword)
    assert problem.reason == "removed keyword" and problem.library == "transformers"
    text = str(problem)
    assert f"transformers.AutoModelForCausalLM.from_pretrained({keyword}=...)" in text
    assert f"removed in transformers {version}" in text and "BitsAndBytesConfig" in text
    assert f"installed transformers {api_drift.installed_version('transformers')}" in text
    assert "synthetic.py:2" in text


def test_renamed_keywords_name_their_replacement(tmp_path):
    uses = _write(tmp_path, "import torch\nimport transformers as tf\n"
                            "m = tf.LlamaForCausalLM.from_pretrained('p', torch_dtype=torch.float32, dtype='auto')\n"
                            "t = tf.Trainer(model=m, tokenizer=None, processing_class=None)\n")
    problems = check_uses(uses)
    dtype = _one(problems, "torch_dtype")
    assert dtype.reason == "deprecated keyword" and "use dtype=" in dtype.detail and "4.56" in dtype.detail
    tokenizer = _one(problems, "tokenizer")
    assert tokenizer.reason == "removed keyword" and "processing_class" in tokenizer.detail
    assert "removed in transformers 5.0" in tokenizer.detail and tokenizer.use.name == "transformers.Trainer"
    assert len(problems) == 2


def test_a_subclass_without_init_is_checked_as_its_base(tmp_path):
    uses = _write(tmp_path, "from transformers import Trainer\n"
                            "class MyTrainer(Trainer):\n"
                            "    def compute_loss(self, model, inputs, return_outputs=False, **kw):\n"
                            "        return 0.0\n"
                            "MyTrainer(model=None, tokenizer=None)\n")
    problem = _one(check_uses(uses), "tokenizer")
    assert problem.use.name == "transformers.Trainer" and "class MyTrainer" in str(problem)


def test_kwargs_are_unverifiable_not_ok(tmp_path):
    uses = _write(tmp_path, "from transformers import AutoModelForCausalLM\n"
                            "AutoModelForCausalLM.from_pretrained('p', dtype='auto', made_up_keyword=1)\n")
    verdicts = {v.keyword: v for v in api_drift.assess(uses) if v.use.kind == "call"}
    assert verdicts["dtype"].status == "unverifiable" and "takes **kwargs" in verdicts["dtype"].note
    assert verdicts["made_up_keyword"].status == "unverifiable"
    assert not check_uses(uses)


def test_unreadable_builtin_signature_is_unverifiable_not_a_failure(tmp_path):
    use = ApiUse("torch._C._get_tracing_state", ("made_up",), "synthetic.py", 1)  # a builtin with neither
    verdicts = api_drift.assess([use])
    assert [v.status for v in verdicts] == ["unverifiable", "unverifiable"]
    assert not check_uses([use])


# --- collecting: aliases, notebooks, receivers --------------------------------------------------------------------


def test_aliases_are_resolved(tmp_path):
    uses = _write(tmp_path, "import torch as T\n"
                            "import torch.nn.functional as F\n"
                            "from torch import nn as tnn\n"
                            "from transformers import AutoModelForCausalLM as M\n"
                            "import transformers.trainer\n"
                            "G = F\n"
                            "T.zeros(2, dtype=T.float32)\n"
                            "F.scaled_dot_product_attention(1, 2, 3, is_causal=True)\n"
                            "G.softmax(1, dim=-1)\n"
                            "tnn.Linear(2, 2, bias=False)\n"
                            "M.from_pretrained('p', dtype='auto')\n"
                            "transformers.trainer.Trainer(args=None)\n")
    calls = {(u.name, u.keywords, u.line) for u in uses if u.kind == "call"}
    assert calls == {
        ("torch.zeros", ("dtype",), 7),
        ("torch.nn.functional.scaled_dot_product_attention", ("is_causal",), 8),
        ("torch.nn.functional.softmax", ("dim",), 9),
        ("torch.nn.Linear", ("bias",), 10),
        ("transformers.AutoModelForCausalLM.from_pretrained", ("dtype",), 11),
        ("transformers.trainer.Trainer", ("args",), 12),
    }
    assert ("torch.float32", "reference") in {(u.name, u.kind) for u in uses}
    assert {u.name for u in uses if u.kind == "import"} >= {"torch", "torch.nn.functional", "torch.nn",
                                                             "transformers.AutoModelForCausalLM"}
    assert not check_uses(uses)


def test_local_names_shadow_imports(tmp_path):
    uses = _write(tmp_path, "import torch.nn.functional as F\n"
                            "def f(F, x):\n"
                            "    return F.softmax(x, dimm=-1)\n"  # F is a parameter here, not the module
                            "def g(x):\n"
                            "    F = object()\n"
                            "    return F.softmax(x, dimm=-1)\n")
    assert [u for u in uses if u.kind == "call"] == []


def test_method_calls_on_known_classes(tmp_path):
    uses = _write(tmp_path, "from transformers import PreTrainedTokenizerBase, Trainer, TrainingArguments\n"
                            "def encode(tok: PreTrainedTokenizerBase, text):\n"
                            "    tok.pad({'input_ids': [[1]]}, padding_side='left')\n"
                            "    return tok(text, return_tensors='pt')\n"
                            "trainer = Trainer(args=TrainingArguments(output_dir='x'))\n"
                            "trainer.train(resume_from_checkpoint=None)\n"
                            "other.train(whatever=1)\n")
    by_name = {u.name: u for u in uses if u.kind == "call"}
    assert by_name["transformers.PreTrainedTokenizerBase.pad"].keywords == ("padding_side",)
    assert by_name["transformers.PreTrainedTokenizerBase.pad"].via == "tok: PreTrainedTokenizerBase"
    assert by_name["transformers.PreTrainedTokenizerBase.__call__"].keywords == ("return_tensors",)
    assert by_name["transformers.Trainer.train"].via == "trainer = Trainer(...)"
    assert not any("whatever" in u.keywords for u in uses)  # `other` is unknown: skipped
    assert not check_uses(uses)


def test_notebook_cells_share_imports_and_report_the_cell(tmp_path):
    uses = _notebook(tmp_path,
                     "%matplotlib inline\nimport torch.nn.functional as F\n!echo hi",
                     "%%time\nx = F.softmax(1, dimm=-1)")
    (call,) = [u for u in uses if u.kind == "call"]
    assert (call.name, call.cell, call.line) == ("torch.nn.functional.softmax", 3, 2)
    problem = _one(check_uses(uses), "dimm")
    assert "99_synthetic.ipynb cell 3 line 2" in str(problem)


def test_unparsable_code_names_the_cell(tmp_path):
    with pytest.raises(SyntaxError, match=r"99_synthetic\.ipynb cell 2"):
        _notebook(tmp_path, "def broken(:\n    pass")


def test_default_paths_pick_up_new_labs(tmp_path):
    for rel in ("solutions/42_new.ipynb", "grader/labs/lab42.py", "labkit/new.py", "labs/42_new.ipynb"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}" if rel.endswith(".ipynb") else "")
    found = {p.relative_to(tmp_path).as_posix() for p in api_drift.default_paths(tmp_path)}
    assert found == {"solutions/42_new.ipynb", "grader/labs/lab42.py", "labkit/new.py"}


# --- the command line -----------------------------------------------------------------------------------------------


def test_command_line_prints_the_table_and_fails_on_problems(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\ntorch.zeros(2, dtyp=torch.float32)\n")
    assert api_drift.main(["--root", str(tmp_path), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "torch.zeros" in out and "dtyp" in out and "1 problem(s) in" in out and "bad.py:2" in out
    good = tmp_path / "good.py"
    good.write_text("import torch\ntorch.zeros(2, dtype=torch.float32)\n")
    assert api_drift.main(["--root", str(tmp_path), str(good)]) == 0


def test_latest_installs_the_newest_releases_with_the_cpu_index():
    import importlib.util

    spec = importlib.util.spec_from_file_location("api_drift_script", ROOT / "scripts" / "api_drift.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cmd = script.pip_command(ROOT / "venv" / "bin" / "python", cpu_torch=True)
    assert cmd[1:5] == ["-m", "pip", "install", "--upgrade"]
    assert {"transformers", "peft", "bitsandbytes", "tokenizers", "torch", "trl"} <= set(cmd)
    assert cmd[cmd.index("--extra-index-url") + 1] == script.CPU_INDEX
    assert "--extra-index-url" not in script.pip_command(ROOT / "python", cpu_torch=False)
