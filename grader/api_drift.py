"""API drift: do the library calls in the solutions, checks and labkit still match the installed libraries?

`collect_uses` reads the code (never runs it): the code cells of notebooks and plain .py files, parsed with `ast`.
It resolves `import x as y` and `from x import y` (and simple rebinding, `F2 = torch.nn.functional`), so a call
like `F.scaled_dot_product_attention(q, k, v, is_causal=True)` is recorded as a use of
`torch.nn.functional.scaled_dot_product_attention` with the keyword `is_causal`, and where it is. Method calls are
recorded when the receiver's class is known statically: a parameter or variable annotated with a library class
(`model: PreTrainedModel` -> `transformers.PreTrainedModel.generate`), or a name bound once to a constructor call
(`trainer = Trainer(...)` -> `transformers.Trainer.train`). Other method calls are skipped. Imports of library names
and attribute references (`torch.float32`) are recorded as uses too, so a removed name is caught even if not called.

`check_uses` imports each name in this environment and checks it exists and, for calls, that every keyword is
accepted by `inspect.signature` (for classes, `__init__`; for C builtins without a readable signature, the type stubs
the library ships, e.g. torch/_C/*.pyi). A keyword swallowed by `**kwargs` cannot be checked that way: it is
recorded as "unverifiable (takes **kwargs)", unless an explicit rule (`RULES`) knows it was removed or deprecated,
like `from_pretrained(load_in_4bit=...)`, removed in transformers 5.0.

This module uses the standard library only, so it runs in a bare venv with just the libraries under test:

    python -m grader.api_drift               # table and problems for the installed libraries; exit 1 on problems
    python scripts/api_drift.py --latest     # the same against the newest releases, in a throwaway venv
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import re
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The libraries whose API the course depends on; uses of anything else (numpy, matplotlib, the stdlib) are ignored.
TRACKED = ("transformers", "peft", "bitsandbytes", "tokenizers", "torch", "trl", "accelerate", "huggingface_hub",
           "safetensors")
DEFAULT_GLOBS = ("solutions/*.ipynb", "grader/**/*.py", "labkit/**/*.py")
DISTRIBUTIONS = {"huggingface_hub": "huggingface-hub"}  # import name -> distribution name, where they differ


# --- data ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiUse:
    """One use of a library name in the code: a call (with the keyword names it passes), an import or a reference."""

    name: str  # fully qualified, aliases resolved: "transformers.AutoModelForCausalLM.from_pretrained"
    keywords: tuple[str, ...] = ()
    file: str = ""  # relative to the repository root where possible
    line: int = 0  # in the file, or in the cell for a notebook
    cell: int | None = None  # notebooks: the cell's number, counting every cell from 1 as Jupyter shows them
    kind: str = "call"  # "call", "import" or "reference"
    receiver: str | None = None  # method calls on an instance: the class inferred for it ("transformers.Trainer")
    via: str = ""  # how the receiver's class was inferred: "model: PreTrainedModel", "trainer = Trainer(...)"

    @property
    def library(self) -> str:
        return self.name.split(".")[0]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.cell is None else f"{self.file} cell {self.cell} line {self.line}"


@dataclass(frozen=True)
class DriftProblem:
    """A use that does not match the installed library: a name that is gone, or a keyword it no longer takes."""

    use: ApiUse
    keyword: str | None  # None when the name itself is the problem
    reason: str  # "missing", "not installed", "unknown keyword", "removed keyword", "deprecated keyword"
    library: str
    version: str | None  # installed version of the library, None if not installed
    detail: str = ""

    def __str__(self) -> str:
        call = f"{self.use.name}({self.keyword}=...)" if self.keyword else self.use.name
        if self.use.via:
            call += f" [{self.use.via}]"
        installed = f"{self.library} {self.version}" if self.version else f"{self.library} (not installed)"
        text = f"{self.use.where}: {call}: {self.reason} (installed {installed})"
        return f"{text}; {self.detail}" if self.detail else text


@dataclass(frozen=True)
class Verdict:
    """One line of the table: a use's name (keyword None) or one of its keywords, and what the check found."""

    use: ApiUse
    keyword: str | None
    status: str  # "ok", "unverifiable", "problem"
    note: str = ""
    problem: DriftProblem | None = None


@dataclass(frozen=True)
class Rule:
    """A keyword that a call took once and should not be given now, whatever its signature says (most of these
    calls take **kwargs, so a signature cannot tell)."""

    library: str
    call: str  # regular expression matched against the use's full name
    keyword: str
    replacement: str
    removed_in: str | None = None
    deprecated_in: str | None = None
    source: str = ""

    def matches(self, use: ApiUse, keyword: str) -> bool:
        return keyword == self.keyword and re.fullmatch(self.call, use.name) is not None

    def describe(self) -> str:
        if self.removed_in:
            when = f"removed in {self.library} {self.removed_in}"
            if self.deprecated_in:
                when += f" (deprecated since {self.deprecated_in})"
        elif self.deprecated_in:
            when = f"deprecated since {self.library} {self.deprecated_in}"
        else:
            when = f"deprecated in {self.library}"
        source = f" [{self.source}]" if self.source else ""
        return f"{when}; {self.replacement}{source}"


_FROM_PRETRAINED = r"transformers\.(\w+\.)*\w+\.from_pretrained"
_TRAINER = r"transformers\.(\w+\.)*\w*Trainer"
RULES: tuple[Rule, ...] = (
    Rule("transformers", _FROM_PRETRAINED, "load_in_4bit",
         "pass quantization_config=BitsAndBytesConfig(load_in_4bit=True, ...) instead", removed_in="5.0",
         source="huggingface/transformers#41287"),
    Rule("transformers", _FROM_PRETRAINED, "load_in_8bit",
         "pass quantization_config=BitsAndBytesConfig(load_in_8bit=True) instead", removed_in="5.0",
         source="huggingface/transformers#41287"),
    Rule("transformers", _FROM_PRETRAINED + r"|transformers\.pipeline", "torch_dtype", "use dtype= instead",
         deprecated_in="4.56", source="huggingface/transformers#39782"),
    Rule("transformers", _FROM_PRETRAINED, "use_auth_token", "use token= instead", removed_in="5.0",
         source="its deprecation warning: 'will be removed in v5 of Transformers'"),
    Rule("transformers", _TRAINER, "tokenizer", "use processing_class= instead", removed_in="5.0",
         deprecated_in="4.46", source="huggingface/transformers#41128, #32385"),
    Rule("transformers", r"transformers\.(\w+\.)*TrainingArguments", "evaluation_strategy",
         "use eval_strategy= instead", deprecated_in="4.41"),
    Rule("trl", r"trl\.(\w+\.)*SFTConfig", "max_seq_length", "use max_length= instead", removed_in="0.20",
         deprecated_in="0.16", source="huggingface/trl#3912"),
)


# --- collecting uses ----------------------------------------------------------------------------------------------


def default_paths(root: str | Path = ROOT) -> list[Path]:
    """The files the course's drift check reads: every solution notebook, the grader and labkit, as they are now."""
    root = Path(root)
    return sorted({p for pattern in DEFAULT_GLOBS for p in root.glob(pattern) if p.is_file()})


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix in (".py", ".ipynb") and q.is_file())
        else:
            out.append(p)
    return out


def _display(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


_CELL_MAGICS_WITH_PYTHON = {"time", "timeit", "capture", "prun"}


def _strip_magics(source: str) -> str | None:
    """The cell as plain Python, with IPython magics and shell escapes blanked (line numbers kept), or None when
    the cell is not Python at all (%%bash, %%writefile...)."""
    lines = source.splitlines()
    if lines and lines[0].lstrip().startswith("%%"):
        magic = lines[0].lstrip()[2:].split(maxsplit=1)
        if not magic or magic[0] not in _CELL_MAGICS_WITH_PYTHON:
            return None
        lines[0] = ""
    out = []
    for line in lines:
        stripped = line.lstrip()
        if stripped.startswith(("%", "!")):
            out.append(line[: len(line) - len(stripped)] + "pass")
        else:
            out.append(line)
    return "\n".join(out)


def _chunks(path: Path) -> Iterator[tuple[str, int | None]]:
    """(source, cell number or None) for each piece of Python in the file."""
    if path.suffix == ".ipynb":
        nb = json.loads(path.read_text(encoding="utf-8"))
        for number, cell in enumerate(nb.get("cells", []), start=1):
            if cell.get("cell_type") != "code":
                continue
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) else source
            python = _strip_magics(source)
            if python is not None:
                yield python, number
    else:
        yield path.read_text(encoding="utf-8"), None


# What a name stands for, as far as static reading can tell.
@dataclass(frozen=True)
class _Ref:  # a library object: module, class or function ("torch.nn.functional")
    qual: str


@dataclass(frozen=True)
class _Inst:  # an instance of a library class
    qual: str
    via: str


@dataclass(frozen=True)
class _Method:  # an attribute looked up on an instance: only meaningful when called
    receiver: str
    attr: str
    via: str


@dataclass(frozen=True)
class _Sub:  # a class defined here, derived from a library class and without its own __init__
    base: str
    via: str


_Meaning = _Ref | _Inst | _Method | _Sub | None


def _tracked(qual: str) -> bool:
    return qual.split(".")[0] in TRACKED


def _is_class_name(qual: str) -> bool:
    last = qual.rsplit(".", 1)[-1]
    return last[:1].isupper() and not last.isupper()  # Trainer, nn.Linear; not constants like F.ALL or TOKEN


class _Scope:
    """The names bound in one scope (module, function or class body) and what each stands for, resolved lazily."""

    def __init__(self, parent: _Scope | None, kind: str) -> None:
        self.parent = parent
        self.kind = kind
        self.raw: dict[str, list[tuple[str, object]]] = {}  # name -> bindings: (how, payload)
        self.resolved: dict[str, _Meaning] = {}
        self._busy: set[str] = set()

    def bind(self, name: str, how: str, payload: object = None) -> None:
        self.raw.setdefault(name, []).append((how, payload))

    def lookup(self, name: str) -> _Meaning:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.raw:
                return scope._resolve(name)
            scope = scope.parent
            while scope is not None and scope.kind == "class":  # methods do not see the class body's names
                scope = scope.parent
        return None

    def _resolve(self, name: str) -> _Meaning:
        if name in self.resolved:
            return self.resolved[name]
        if name in self._busy:  # x = x.method(): circular, give up
            return None
        self._busy.add(name)
        try:
            meanings = {self._meaning(name, how, payload) for how, payload in self.raw[name]}
            meaning = meanings.pop() if len(meanings) == 1 else None  # bound to different things: unknown
        finally:
            self._busy.discard(name)
        self.resolved[name] = meaning
        return meaning

    def _meaning(self, name: str, how: str, payload) -> _Meaning:
        if how == "import":
            return _Ref(payload)
        if how == "value":
            return _value_meaning(payload, self, name)
        if how == "annotation":
            return _annotation_meaning(payload, self, name)
        if how == "subclass":
            return payload
        return None  # "unknown": a def, a loop variable, a tuple target, a relative import...


def _expr_meaning(node: ast.expr, scope: _Scope) -> _Meaning:
    """What an expression made of names and attributes stands for."""
    if isinstance(node, ast.Name):
        return scope.lookup(node.id)
    if isinstance(node, ast.Attribute):
        base = _expr_meaning(node.value, scope)
        if isinstance(base, _Ref):
            return _Ref(f"{base.qual}.{node.attr}")
        if isinstance(base, _Inst):
            return _Method(base.qual, node.attr, base.via)
    return None


def _value_meaning(value: ast.expr, scope: _Scope, name: str) -> _Meaning:
    """What `name = value` makes `name`: the same library object, or an instance of a library class."""
    if isinstance(value, ast.Call):
        callee = _expr_meaning(value.func, scope)
        if isinstance(callee, _Ref) and _tracked(callee.qual):
            short = callee.qual.split(".", 1)[-1]
            if _is_class_name(callee.qual):
                return _Inst(callee.qual, f"{name} = {short}(...)")
            owner, _, method = callee.qual.rpartition(".")
            if method in ("from_pretrained", "from_config") and _is_class_name(owner) \
                    and not owner.rsplit(".", 1)[-1].startswith("Auto"):  # Auto* return some other class
                return _Inst(owner, f"{name} = {short}(...)")
        return None
    meaning = _expr_meaning(value, scope)
    return meaning if isinstance(meaning, _Ref | _Inst) else None


def _annotation_meaning(annotation: ast.expr, scope: _Scope, name: str) -> _Meaning:
    """`name: X` or `name: X | None` or `Optional[X]` with X a library class: an instance of X."""
    node = annotation
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            node = ast.parse(node.value, mode="eval").body
        except SyntaxError:
            return None
    members: list[ast.expr] = []

    def flatten(n: ast.expr) -> None:
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr):
            flatten(n.left)
            flatten(n.right)
        else:
            members.append(n)

    flatten(node)
    members = [m for m in members if not (isinstance(m, ast.Constant) and m.value is None)]
    if len(members) == 1 and isinstance(members[0], ast.Subscript):
        outer = _expr_meaning(members[0].value, scope)
        plain = members[0].value
        if (isinstance(plain, ast.Name) and plain.id == "Optional") or (
                isinstance(outer, _Ref) and outer.qual == "typing.Optional"):
            members = [members[0].slice]
    if len(members) != 1:
        return None
    meaning = _expr_meaning(members[0], scope)
    if isinstance(meaning, _Ref) and _tracked(meaning.qual) and _is_class_name(meaning.qual):
        text = ast.unparse(annotation) if not isinstance(annotation, ast.Constant) else annotation.value
        return _Inst(meaning.qual, f"{name}: {text}")
    return None


def _target_names(target: ast.expr) -> Iterator[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, ast.Tuple | ast.List):
        for elt in target.elts:
            yield from _target_names(elt)
    elif isinstance(target, ast.Starred):
        yield from _target_names(target.value)


def _import_bindings(node: ast.Import | ast.ImportFrom) -> Iterator[tuple[str, str | None]]:
    """(local name, qualified name or None when unknown) for each name an import binds."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.asname:
                yield alias.asname, alias.name
            else:
                top = alias.name.split(".")[0]
                yield top, top
    else:
        for alias in node.names:
            if alias.name == "*":
                continue
            local = alias.asname or alias.name
            yield local, (f"{node.module}.{alias.name}" if node.level == 0 and node.module else None)


def _bind_body(scope: _Scope, body: list[ast.stmt]) -> None:
    """Record the names the statements bind in `scope` (not descending into nested functions and classes)."""
    for stmt in body:
        _bind_stmt(scope, stmt)


def _bind_stmt(scope: _Scope, stmt: ast.stmt) -> None:
    if isinstance(stmt, ast.Import | ast.ImportFrom):
        for local, qual in _import_bindings(stmt):
            scope.bind(local, "import" if qual else "unknown", qual)
    elif isinstance(stmt, ast.Assign):
        for target in stmt.targets:
            if isinstance(target, ast.Name):
                scope.bind(target.id, "value", stmt.value)
            else:
                for name in _target_names(target):
                    scope.bind(name, "unknown")
    elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
        scope.bind(stmt.target.id, "annotation", stmt.annotation)
    elif isinstance(stmt, ast.AugAssign | ast.AnnAssign):
        for name in _target_names(stmt.target):
            scope.bind(name, "unknown")
    elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
        scope.bind(stmt.name, "unknown")
    elif isinstance(stmt, ast.ClassDef):
        scope.bind(stmt.name, "unknown")  # refined to "subclass" by the visitor, which knows the bases' meanings
    elif isinstance(stmt, ast.For | ast.AsyncFor):
        for name in _target_names(stmt.target):
            scope.bind(name, "unknown")
    elif isinstance(stmt, ast.With | ast.AsyncWith):
        for item in stmt.items:
            if item.optional_vars is not None:
                for name in _target_names(item.optional_vars):
                    scope.bind(name, "unknown")
    elif isinstance(stmt, ast.Try | getattr(ast, "TryStar", ast.Try)):
        for handler in stmt.handlers:
            if handler.name:
                scope.bind(handler.name, "unknown")
    elif isinstance(stmt, ast.Delete):
        for target in stmt.targets:
            for name in _target_names(target):
                scope.bind(name, "unknown")
    elif isinstance(stmt, ast.Match):
        for node in ast.walk(stmt):
            if isinstance(node, ast.MatchAs | ast.MatchStar) and node.name:
                scope.bind(node.name, "unknown")
    # names bound inside expressions (walrus) and nested blocks
    for node in _walk_scope(stmt):
        if isinstance(node, ast.NamedExpr) and isinstance(node.target, ast.Name):
            scope.bind(node.target.id, "value", node.value)
    for child in ("body", "orelse", "finalbody"):
        if not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            _bind_body(scope, getattr(stmt, child, []) or [])
    if isinstance(stmt, ast.Try | getattr(ast, "TryStar", ast.Try)):
        for handler in stmt.handlers:
            _bind_body(scope, handler.body)
    if isinstance(stmt, ast.Match):
        for case in stmt.cases:
            _bind_body(scope, case.body)


def _walk_scope(stmt: ast.stmt) -> Iterator[ast.AST]:
    """The expression nodes directly in `stmt` (not in its nested statements, functions, lambdas, comprehensions)."""
    stack: list[ast.AST] = [
        child for name, value in ast.iter_fields(stmt) if name not in ("body", "orelse", "finalbody", "handlers",
                                                                         "cases", "decorator_list")
        for child in (value if isinstance(value, list) else [value]) if isinstance(child, ast.expr)]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.Lambda | ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
            continue
        stack.extend(ast.iter_child_nodes(node))


class _Collector(ast.NodeVisitor):
    def __init__(self, file: str, module_scope: _Scope) -> None:
        self.file = file
        self.scope = module_scope
        self.cell: int | None = None
        self.uses: list[ApiUse] = []

    def _add(self, node: ast.AST, name: str, kind: str, keywords: tuple[str, ...] = (),
             receiver: str | None = None, via: str = "") -> None:
        if _tracked(receiver or name):
            self.uses.append(ApiUse(name, keywords, self.file, getattr(node, "lineno", 0), self.cell, kind,
                                    receiver, via))

    # imports
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name, "import")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            for alias in node.names:
                self._add(node, node.module if alias.name == "*" else f"{node.module}.{alias.name}", "import")

    # scopes
    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        for decorator in getattr(node, "decorator_list", []):
            self.visit(decorator)
        args = node.args
        for default in [*args.defaults, *[d for d in args.kw_defaults if d is not None]]:
            self.visit(default)
        every = [*args.posonlyargs, *args.args, *args.kwonlyargs, *filter(None, [args.vararg, args.kwarg])]
        if not isinstance(node, ast.Lambda):
            for arg in every:
                if arg.annotation is not None:
                    self.visit(arg.annotation)
            if node.returns is not None:
                self.visit(node.returns)
        inner = _Scope(self.scope, "function")
        for arg in every:
            starred = arg is args.vararg or arg is args.kwarg
            if arg.annotation is not None and not starred:
                inner.bind(arg.arg, "annotation", arg.annotation)
            else:
                inner.bind(arg.arg, "unknown")
        body = node.body if isinstance(node.body, list) else [node.body]
        if isinstance(node, ast.Lambda):
            body_nodes: list[ast.AST] = [node.body]
        else:
            _bind_body(inner, body)
            body_nodes = list(body)
        outer, self.scope = self.scope, inner
        try:
            for child in body_nodes:
                self.visit(child)
        finally:
            self.scope = outer

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function
    visit_Lambda = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in [*node.decorator_list, *node.bases, *[k.value for k in node.keywords]]:
            self.visit(expr)
        has_init = any(isinstance(s, ast.FunctionDef) and s.name == "__init__" for s in node.body)
        bases = [_expr_meaning(b, self.scope) for b in node.bases]
        library_bases = [b for b in bases if isinstance(b, _Ref) and _tracked(b.qual)]
        if not has_init and len(library_bases) == 1 and len(bases) == 1:
            self.scope.raw[node.name] = [("subclass", _Sub(library_bases[0].qual, f"class {node.name}"))]
            self.scope.resolved.pop(node.name, None)
        inner = _Scope(self.scope, "class")
        _bind_body(inner, node.body)
        outer, self.scope = self.scope, inner
        try:
            for stmt in node.body:
                self.visit(stmt)
        finally:
            self.scope = outer

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp) -> None:
        inner = _Scope(self.scope, "function")
        for gen in node.generators:
            for name in _target_names(gen.target):
                inner.bind(name, "unknown")
        self.visit(node.generators[0].iter)  # evaluated in the enclosing scope
        outer, self.scope = self.scope, inner
        try:
            for i, gen in enumerate(node.generators):
                if i:
                    self.visit(gen.iter)
                for cond in gen.ifs:
                    self.visit(cond)
            for part in ("elt", "key", "value"):
                if hasattr(node, part):
                    self.visit(getattr(node, part))
        finally:
            self.scope = outer

    visit_ListComp = _comprehension
    visit_SetComp = _comprehension
    visit_DictComp = _comprehension
    visit_GeneratorExp = _comprehension

    # uses
    def visit_Call(self, node: ast.Call) -> None:
        keywords = tuple(k.arg for k in node.keywords if k.arg is not None)
        meaning = _expr_meaning(node.func, self.scope)
        if isinstance(meaning, _Ref):
            self._add(node, meaning.qual, "call", keywords)
        elif isinstance(meaning, _Method):
            self._add(node, f"{meaning.receiver}.{meaning.attr}", "call", keywords, meaning.receiver, meaning.via)
        elif isinstance(meaning, _Inst):
            self._add(node, f"{meaning.qual}.__call__", "call", keywords, meaning.qual, meaning.via)
        elif isinstance(meaning, _Sub):
            self._add(node, meaning.base, "call", keywords, None, meaning.via)
        if not _is_name_chain(node.func):
            self.visit(node.func)
        elif isinstance(node.func, ast.Attribute):
            self._visit_chain_base(node.func)
        for arg in [*node.args, *[k.value for k in node.keywords]]:
            self.visit(arg)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        meaning = _expr_meaning(node, self.scope)
        if isinstance(meaning, _Ref):
            self._add(node, meaning.qual, "reference")
        self._visit_chain_base(node)

    def _visit_chain_base(self, node: ast.Attribute) -> None:
        """Visit what an attribute chain hangs on (a call, a subscript...) without recording its inner links."""
        base: ast.expr = node
        while isinstance(base, ast.Attribute):
            base = base.value
        if not isinstance(base, ast.Name):
            self.visit(base)


def _is_name_chain(node: ast.expr) -> bool:
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name)


def collect_uses(paths: Iterable[str | Path], root: str | Path | None = None) -> list[ApiUse]:
    """Every use of a tracked library's names in the given files (.py, .ipynb; folders are searched), in file order.

    A notebook is read as one module: names imported or bound in one cell are known in the cells after it.
    Raises SyntaxError, naming the file and cell, for code that does not parse.
    """
    root_path = Path(root) if root is not None else ROOT
    uses: list[ApiUse] = []
    for path in _expand(paths):
        display = _display(path, root_path)
        parsed: list[tuple[ast.Module, int | None]] = []
        for source, cell in _chunks(path):
            try:
                parsed.append((ast.parse(source, filename=display), cell))
            except SyntaxError as err:
                where = display if cell is None else f"{display} cell {cell}"
                raise SyntaxError(f"{where} line {err.lineno}: {err.msg}") from err
        module_scope = _Scope(None, "module")
        for tree, _ in parsed:
            _bind_body(module_scope, tree.body)
        collector = _Collector(display, module_scope)
        for tree, cell in parsed:
            collector.cell = cell
            for stmt in tree.body:
                collector.visit(stmt)
        uses += collector.uses
    return uses


# --- checking uses ------------------------------------------------------------------------------------------------


@cache
def installed_version(library: str) -> str | None:
    try:
        return importlib.metadata.version(DISTRIBUTIONS.get(library, library))
    except importlib.metadata.PackageNotFoundError:
        try:
            return getattr(importlib.import_module(library), "__version__", None)
        except Exception:
            return None


class _Missing(Exception):
    pass


@cache
def _import(qual: str) -> object:
    return importlib.import_module(qual)


def resolve(qual: str) -> object:
    """The object `qual` names in this environment (modules imported as needed); raises _Missing saying why not."""
    parts = qual.split(".")
    try:
        obj = _import(parts[0])
    except Exception as err:
        raise _Missing(f"cannot import {parts[0]}: {type(err).__name__}: {err}") from err
    path = parts[0]
    for part in parts[1:]:
        found = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                obj = getattr(obj, part)
                found = True
            except Exception as err:
                error = err
            if not found and inspect.ismodule(obj):
                try:
                    obj = _import(f"{path}.{part}")
                    found = True
                except ModuleNotFoundError:
                    pass
                except Exception as err:
                    error = err
        if not found:
            raise _Missing(f"{path} has no attribute {part!r}"
                           + ("" if isinstance(error, AttributeError) else f" ({type(error).__name__}: {error})"))
        path = f"{path}.{part}"
    return obj


# Signatures of C builtins, from the .pyi stubs their package ships (torch/_C/*.pyi, tokenizers/**/*.pyi).
@cache
def _stub_index(package: str) -> dict[tuple[str | None, str], list[inspect.Signature]]:
    index: dict[tuple[str | None, str], list[inspect.Signature]] = {}
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return index
    for folder in spec.submodule_search_locations:
        for stub in sorted(Path(folder).rglob("*.pyi")):
            try:
                tree = ast.parse(stub.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, OSError):
                continue
            for node in tree.body:
                if isinstance(node, ast.FunctionDef):
                    index.setdefault((None, node.name), []).append(_stub_signature(node.args))
                elif isinstance(node, ast.ClassDef):
                    for item in node.body:
                        if isinstance(item, ast.FunctionDef):
                            index.setdefault((node.name, item.name), []).append(_stub_signature(item.args))
    return index


def _stub_signature(args: ast.arguments) -> inspect.Signature:
    P = inspect.Parameter
    params = []
    positional = [*args.posonlyargs, *args.args]
    for i, arg in enumerate(positional):
        old_style_positional = arg.arg.startswith("__") and not arg.arg.endswith("__")
        kind = P.POSITIONAL_ONLY if i < len(args.posonlyargs) or old_style_positional else P.POSITIONAL_OR_KEYWORD
        params.append(P(arg.arg, kind))
    if args.vararg:
        params.append(P(args.vararg.arg, P.VAR_POSITIONAL))
    params += [P(arg.arg, P.KEYWORD_ONLY) for arg in args.kwonlyargs]
    if args.kwarg:
        params.append(P(args.kwarg.arg, P.VAR_KEYWORD))
    try:
        return inspect.Signature(params)
    except ValueError:  # odd ordering in a stub: keep the names, lose the kinds' order check
        return inspect.Signature([P(p.name, P.KEYWORD_ONLY) if p.kind == P.POSITIONAL_OR_KEYWORD else p
                                  for p in params], __validate_parameters__=False)


def _stub_signatures(obj: object) -> list[inspect.Signature]:
    package = (getattr(obj, "__module__", None) or "").split(".")[0]
    owner: str | None = None
    name = getattr(obj, "__name__", "")
    objclass = getattr(obj, "__objclass__", None)
    if isinstance(obj, type):
        owner, names = obj.__name__, ("__init__", "__new__")
    else:
        names = (name,)
        if objclass is not None:  # a method of a C type: torch.Tensor.view is TensorBase.view
            owner, package = objclass.__name__, (objclass.__module__ or "").split(".")[0]
        else:
            qualname = getattr(obj, "__qualname__", "") or ""
            if "." in qualname and not qualname.startswith("_VariableFunctions"):
                owner = qualname.rsplit(".", 1)[0].rsplit(".", 1)[-1]
            if not package and isinstance(getattr(obj, "__self__", None), type):
                package = (obj.__self__.__module__ or "").split(".")[0]
    if package not in TRACKED:
        return []
    index = _stub_index(package)
    return [sig for n in names for sig in index.get((owner, n), [])]


def signatures(obj: object) -> tuple[list[tuple[inspect.Signature, str]], str]:
    """The signatures a call of `obj` is checked against (several for overloaded builtins), each with where it came
    from, and a note; ([], why) when none can be read.

    A class is checked against its `__init__`. Hugging Face's strict dataclasses (configs in transformers 5) wrap
    the generated `__init__` in one that takes **kwargs and hands the undeclared ones to `__post_init__`: there the
    declared fields and `__post_init__`'s signature count.
    """
    if isinstance(obj, type):
        init = obj.__init__
        if inspect.isfunction(init) or inspect.ismethod(init):  # written in Python (maybe inherited)
            try:
                found = [(inspect.signature(init), "__init__")]
            except (TypeError, ValueError):
                found = []
            if found and hasattr(init, "__wrapped__") and hasattr(obj, "__post_init__"):
                try:
                    outer = inspect.signature(init, follow_wrapped=False)
                    if _takes_any(outer):
                        found.append((inspect.signature(obj.__post_init__), "__post_init__"))
                except (TypeError, ValueError):
                    pass
            if found:
                return found, "__init__"
        try:
            return [(inspect.signature(obj), "class signature")], "class signature"
        except (TypeError, ValueError):
            pass
        stubs = [(sig, "type stubs") for sig in _stub_signatures(obj)]
        return (stubs, "type stubs") if stubs else ([], "no readable signature")
    if not callable(obj):
        return [], "not callable"
    try:
        return [(inspect.signature(obj), "signature")], "signature"
    except (TypeError, ValueError):
        pass
    stubs = [(sig, "type stubs") for sig in _stub_signatures(obj)]
    return (stubs, "type stubs") if stubs else ([], "no readable signature (builtin)")


def _takes(sig: inspect.Signature, keyword: str) -> bool:
    param = sig.parameters.get(keyword)
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


def _takes_any(sig: inspect.Signature) -> bool:
    return any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())


def _has_custom_getattr(cls: type) -> bool:
    return any("__getattr__" in vars(k) for k in cls.__mro__ if k is not object)


def _assess(use: ApiUse) -> list[Verdict]:
    version = installed_version(use.library)

    def problem(keyword: str | None, reason: str, detail: str) -> Verdict:
        found = DriftProblem(use, keyword, reason, use.library, version, detail)
        return Verdict(use, keyword, "problem", f"{reason}: {detail}" if detail else reason, found)

    if version is None and importlib.util.find_spec(use.library) is None:
        return [problem(None, "not installed", f"{use.library} cannot be imported here")]
    receiver_note = ""
    try:
        if use.receiver:
            cls = resolve(use.receiver)
            if not isinstance(cls, type):
                return [Verdict(use, None, "unverifiable", f"{use.receiver} is not a class ({use.via})")]
            attr = use.name[len(use.receiver) + 1:]
            try:
                obj = inspect.getattr_static(cls, attr)
                obj = getattr(cls, attr)
            except AttributeError:
                if _has_custom_getattr(cls):
                    return [Verdict(use, None, "unverifiable",
                                    f"not a class attribute; {cls.__name__} has __getattr__ ({use.via})")]
                raise _Missing(f"{use.receiver} has no attribute {attr!r} ({use.via})") from None
            receiver_note = f" ({use.via})"
        else:
            obj = resolve(use.name)
    except _Missing as err:
        return [problem(None, "missing", str(err))]
    if use.kind != "call":
        return [Verdict(use, None, "ok", "exists")]
    sigs, source = signatures(obj)
    verdicts = [Verdict(use, None, "ok" if sigs else "unverifiable",
                        (f"exists; keywords checked against {source}" if sigs else f"exists; {source}")
                        + receiver_note)]
    for keyword in use.keywords:
        rule = next((r for r in RULES if r.matches(use, keyword)), None)
        if rule is not None:
            reason = "removed keyword" if rule.removed_in else "deprecated keyword"
            verdicts.append(problem(keyword, reason, rule.describe()))
        elif not sigs:
            verdicts.append(Verdict(use, keyword, "unverifiable", source))
        elif any(_takes(sig, keyword) for sig, _ in sigs):
            verdicts.append(Verdict(use, keyword, "ok"))
        elif open_ := [label for sig, label in sigs if _takes_any(sig)]:
            where = "" if open_[0] in ("signature", "__init__", "class signature") else f" ({open_[0]})"
            undeclared = f"; not declared by its {sigs[0][1]}" if len(sigs) > 1 and not _takes_any(sigs[0][0]) else ""
            verdicts.append(Verdict(use, keyword, "unverifiable", f"takes **kwargs{where}{undeclared}"))
        else:
            names = sorted({p for sig, _ in sigs for p in sig.parameters if p not in ("self", "cls")})
            close = difflib.get_close_matches(keyword, names, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"it takes {', '.join(names) or 'no keywords'}"
            verdicts.append(problem(keyword, "unknown keyword", f"not a parameter per its {source}; {hint}"))
    return verdicts


def assess(uses: Iterable[ApiUse]) -> list[Verdict]:
    """A verdict on each use's name and on each of its keywords, in order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [v for use in uses for v in _assess(use)]


def check_uses(uses: Iterable[ApiUse]) -> list[DriftProblem]:
    """The uses that do not match the installed libraries (empty when all is well)."""
    return [v.problem for v in assess(uses) if v.problem is not None]


# --- reporting ----------------------------------------------------------------------------------------------------


def versions_line(libraries: Iterable[str] = TRACKED) -> str:
    return ", ".join(f"{lib} {installed_version(lib) or '(not installed)'}" for lib in libraries)


def format_table(verdicts: list[Verdict]) -> str:
    """One block per checked name: whether it exists, then each keyword, with the places it is used."""
    groups: dict[tuple[str, str], dict[str | None, list[Verdict]]] = {}
    for v in verdicts:
        groups.setdefault((v.use.name, v.use.kind), {}).setdefault(v.keyword, []).append(v)
    uses = {id(v.use): v.use for v in verdicts}.values()
    files = {u.file for u in uses}
    lines = [f"API drift check: {len(uses)} uses of {len(groups)} names in {len(files)} files",
             f"installed: {versions_line()}", "",
             f"{'name':<62} {'keyword':<26} {'status':<13} {'where (uses)':<40} note"]
    rank = {"problem": 0, "unverifiable": 1, "ok": 2}
    for (name, kind), by_keyword in sorted(groups.items()):
        label = name if kind == "call" else f"{name} [{kind}]"
        for keyword in sorted(by_keyword, key=lambda k: (k is not None, k or "")):
            vs = by_keyword[keyword]
            worst = min(vs, key=lambda v: rank[v.status])
            where = worst.use.where + (f" (+{len(vs) - 1})" if len(vs) > 1 else "")
            lines.append(f"{label:<62} {keyword or '-':<26} {worst.status:<13} {where:<40} {worst.note}".rstrip())
            label = ""
    counts = {s: sum(v.status == s for v in verdicts) for s in rank}
    lines += ["", f"{counts['ok']} ok, {counts['unverifiable']} unverifiable, {counts['problem']} problems "
                  f"(one line per use of a name or keyword)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader.api_drift", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help=f"files or folders (default: {', '.join(DEFAULT_GLOBS)})")
    parser.add_argument("--root", default=str(ROOT), help="the repository root (default: this checkout)")
    parser.add_argument("--problems-only", action="store_true", help="print the problems, not the whole table")
    args = parser.parse_args(argv)
    paths = args.paths or default_paths(args.root)
    uses = collect_uses(paths, args.root)
    verdicts = assess(uses)
    problems = [v.problem for v in verdicts if v.problem is not None]
    if not args.problems_only:
        print(format_table(verdicts))
        print()
    print(f"{len(problems)} problem(s) in {len(uses)} uses; installed: {versions_line()}")
    for p in problems:
        print(f"  {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
