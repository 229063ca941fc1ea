"""What a notebook cell binds and what it takes from earlier cells, read statically.

The runner uses it to say which crashed cell left a question's objects undefined; the test suite uses it to
re-run only the cells a bug variant changes.
"""

from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass

_BUILTINS = frozenset(dir(builtins))


@dataclass(frozen=True)
class CellNames:
    binds: frozenset[str]  # names the cell binds at the top level
    reads: frozenset[str]  # names it takes from earlier cells: read before it binds them, or only in a function


def cell_names(source: str) -> CellNames:
    """Static names of a code cell; IPython magics and shell lines are ignored."""
    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return CellNames(frozenset(), frozenset())
    first: dict[str, str] = {}  # name -> "load" or "store", whichever the cell does first at the top level
    for node in tree.body:
        for kind, name in _events(node):
            first.setdefault(name, kind)
    binds = {n for n, kind in first.items() if kind == "store"} | {n for n, _ in _stores(tree)}
    reads = {n for n, kind in first.items() if kind == "load"}
    for f in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)):
        reads |= _free_in_function(f) - binds  # looked up when called: after the cell bound what it binds
    return CellNames(frozenset(binds), frozenset(reads - _BUILTINS))


_FUNCTION = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_COMPREHENSION = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)


def _events(node: ast.AST, local: frozenset[str] = frozenset()):
    """("load" | "store", name) at the top level of a cell, in the order Python evaluates them."""
    if isinstance(node, ast.Name):
        if node.id not in local:
            yield ("store" if isinstance(node.ctx, ast.Store) else "load"), node.id  # `del x` needs x
    elif isinstance(node, _FUNCTION):
        for child in [*node.decorator_list, *getattr(node, "bases", []), *getattr(node, "keywords", [])]:
            yield from _events(child, local)
        if not isinstance(node, ast.ClassDef):
            for default in [*node.args.defaults, *node.args.kw_defaults]:
                if default is not None:
                    yield from _events(default, local)
        yield "store", node.name
    elif isinstance(node, ast.Lambda):
        return  # its body runs later: see _free_in_function
    elif isinstance(node, ast.Import | ast.ImportFrom):
        for alias in node.names:
            yield "store", (alias.asname or alias.name).split(".")[0]
    elif isinstance(node, ast.Assign | ast.AnnAssign):
        if node.value is not None:
            yield from _events(node.value, local)
        for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
            yield from _events(target, local)
    elif isinstance(node, ast.AugAssign):
        if isinstance(node.target, ast.Name):
            yield "load", node.target.id
        yield from _events(node.value, local)
        yield from _events(node.target, local)
    elif isinstance(node, ast.For | ast.AsyncFor):
        yield from _events(node.iter, local)
        yield from _events(node.target, local)
        for stmt in [*node.body, *node.orelse]:
            yield from _events(stmt, local)
    elif isinstance(node, _COMPREHENSION):
        inner = local | {n.id for g in node.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)}
        yield from _events(node.generators[0].iter, local)  # the first iterable is evaluated outside
        parts = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
        for part in [*parts, *[g.iter for g in node.generators[1:]], *[i for g in node.generators for i in g.ifs]]:
            yield from _events(part, inner)
    else:
        for child in ast.iter_child_nodes(node):
            yield from _events(child, local)


def _stores(tree: ast.Module):
    """Names bound by a walrus anywhere at the top level, which _events would see only as a store in order."""
    return [("store", n.target.id) for n in ast.walk(tree) if isinstance(n, ast.NamedExpr)]


def _free_in_function(f: ast.AST) -> set[str]:
    """Names a function reads that are not its parameters or locals (globals, looked up when it is called)."""
    args = f.args
    local = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg] if a}
    names = [n for n in ast.walk(f) if isinstance(n, ast.Name)]
    local |= {n.id for n in names if not isinstance(n.ctx, ast.Load)}
    local |= {n.name for n in ast.walk(f) if isinstance(n, _FUNCTION) and n is not f}
    return {n.id for n in names if isinstance(n.ctx, ast.Load) and n.id not in local}
