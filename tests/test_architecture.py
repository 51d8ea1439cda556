"""The layering of docs/architecture.md, checked on the source: every import statement, lazy ones
inside functions included, is read with ``ast``.

- the core never imports a capability or the CLI;
- a capability never imports another capability (what two share belongs in the core);
- no module imports another module's private (``_name``) names;
- no import circle between modules (a package's ``__init__`` re-exporting its own submodules is
  not an edge of the circle it would otherwise close);
- answers are decided in one place, :mod:`nsfwlab.verdict` (with the definitions of ``Thresholds``
  and ``Label`` in :mod:`nsfwlab.config`): no other module compares a value directly with a
  threshold (``safe_below`` / ``nsfw_above``, or a local name bound from one), builds a ``Label``
  from a value, or looks an input up in the hash bank (``.lookup`` / ``.match`` in a module that
  imports :mod:`nsfwlab.bank`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "nsfwlab"

#: Top-level parts of the package that are capabilities (packages); everything else but the CLI
#: is the core. The hash bank is core: score, scan and serve all match against it
#: (docs/architecture.md).
CAPABILITIES = {"scan", "serve", "evaluate", "train", "explain", "lab"}
EDGE = {"cli", "__main__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, imported names) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path.name == "__init__.py", node)
            out.append((target, [alias.name for alias in node.names]))
    return [(t, names) for t, names in out if t == PACKAGE or t.startswith(PACKAGE + ".")]


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


MODULES = _modules()
IMPORTS = {m: _imports(m, p) for m, p in MODULES.items()}


def _target_module(target: str, name: str) -> str:
    """``from pkg import sub`` imports a module when ``pkg.sub`` is one."""
    return f"{target}.{name}" if f"{target}.{name}" in MODULES else target


def test_the_package_is_found() -> None:
    assert f"{PACKAGE}.detector" in MODULES and f"{PACKAGE}.cli" in MODULES


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _part(m) not in CAPABILITIES | EDGE))
def test_the_core_imports_no_capability(module: str) -> None:
    bad = [t2 for t, names in IMPORTS[module] for t2 in ([_target_module(t, n) for n in names] or [t])
           if _part(t2) in CAPABILITIES | EDGE]
    assert not bad, f"core module {module} imports {sorted(set(bad))}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _part(m) in CAPABILITIES))
def test_capabilities_import_no_other_capability(module: str) -> None:
    own = _part(module)
    bad = [t2 for t, names in IMPORTS[module] for t2 in ([_target_module(t, n) for n in names] or [t])
           if _part(t2) in CAPABILITIES | EDGE and _part(t2) != own]
    assert not bad, f"{module} (capability {own!r}) imports {sorted(set(bad))}"


def test_no_module_imports_another_modules_private_names() -> None:
    bad = []
    for module, imports in IMPORTS.items():
        package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
        for target, names in imports:
            for name in names:
                if not name.startswith("_") or name.startswith("__"):
                    continue
                # A private submodule of one's own package is that package's business.
                if target == package and f"{target}.{name}" in MODULES:
                    continue
                bad.append(f"{module}: from {target} import {name}")
    assert not bad, "\n".join(bad)


def test_no_import_circles() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, imports in IMPORTS.items():
        for target, names in imports:
            for t in [_target_module(target, n) for n in names] or [target]:
                if t not in MODULES or t == module:
                    continue
                if MODULES[module].name == "__init__.py" and t.startswith(module + "."):
                    continue  # a package re-exporting its own submodules
                if module.startswith(t + ".") and MODULES[t].name == "__init__.py":
                    continue  # importing a name from one's own package is importing from its members
                graph[module].add(t)
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import circles:\n" + "\n".join(cycles)


# -- one verdict ----------------------------------------------------------------------------------
#: Where answers are decided (and the definitions they use).
VERDICT_HOMES = {f"{PACKAGE}.verdict", f"{PACKAGE}.config"}
THRESHOLD_FIELDS = {"safe_below", "nsfw_above"}


def _reads_threshold(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr in THRESHOLD_FIELDS for n in ast.walk(node))


def _bound_from_thresholds(scope: ast.AST) -> set[str]:
    """Names assigned (also by tuple unpacking) from an expression that reads a threshold, in ``scope``."""
    names: set[str] = set()
    for node in ast.walk(scope):
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.NamedExpr)) and node.value is not None \
                and _reads_threshold(node.value):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def _threshold_comparisons(tree: ast.Module) -> list[int]:
    """Lines comparing an operand with a threshold attribute or a name bound from one."""
    lines = []
    scopes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))]
    for scope in scopes:
        tainted = _bound_from_thresholds(scope)
        for node in ast.walk(scope):
            if not isinstance(node, ast.Compare):
                continue
            for operand in (node.left, *node.comparators):
                if (isinstance(operand, ast.Attribute) and operand.attr in THRESHOLD_FIELDS) or \
                        (isinstance(operand, ast.Name) and operand.id in tainted):
                    lines.append(node.lineno)
    return sorted(set(lines))


def _label_constructions(tree: ast.Module) -> list[int]:
    """Lines calling ``Label(value)`` (``Label.NSFW``, a member by name, is not a construction)."""
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and n.args and (
        (isinstance(n.func, ast.Name) and n.func.id == "Label")
        or (isinstance(n.func, ast.Attribute) and n.func.attr == "Label"))]


def _bank_lookups(module: str, tree: ast.Module) -> list[int]:
    """Lines calling ``.lookup(...)`` / ``.match(...)`` in a module that imports the hash bank."""
    uses_bank = any(t == f"{PACKAGE}.bank" or t.startswith(f"{PACKAGE}.bank.") for t, _ in IMPORTS[module])
    if not uses_bank or module.startswith(f"{PACKAGE}.bank"):
        return []
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr in ("lookup", "match")]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m not in VERDICT_HOMES))
def test_only_the_verdict_decides_labels_bands_and_matches(module: str) -> None:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found = {"compares a value with a threshold": _threshold_comparisons(tree),
             "builds a Label from a value": _label_constructions(tree),
             "looks an input up in the hash bank": _bank_lookups(module, tree)}
    bad = {what: lines for what, lines in found.items() if lines}
    assert not bad, f"{module} decides an answer itself (use nsfwlab.verdict): {bad}"


def test_the_verdict_checks_catch_what_they_are_for() -> None:
    """Each check finds its pattern in a small sample (so a passing test means something)."""
    sample = ast.parse(
        "def f(score, th, bank):\n"
        "    lo, hi = th.safe_below, th.nsfw_above\n"
        "    if score > th.nsfw_above: pass\n"
        "    if score < lo: pass\n"
        "    label = Label(bank.match(score).decision.value)\n"
        "    ok = score - lo <= hi - score\n")
    assert _threshold_comparisons(sample) == [3, 4]
    assert _label_constructions(sample) == [5]
    IMPORTS["sample"] = [(f"{PACKAGE}.bank", ["Bank"])]
    try:
        assert _bank_lookups("sample", sample) == [5]
    finally:
        del IMPORTS["sample"]
