"""The layers of `core/` (see docs/architecture.md): each layer imports only the layers before it, and no
module imports another module's private names. Every import counts, also those inside functions."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAYERS = ["base", "core.model", "core.training", "core.method", "core.evaluation", "core.manager", "stepadapt_cli"]


def layer_of(module: str) -> int:
    for i, prefix in reversed(list(enumerate(LAYERS))):
        if module == prefix or module.startswith(prefix + "."):
            return i
    assert module == "core" or module.count(".") == 1 and module.startswith("core."), module
    return 0  # core, core.errors, core.names, core.config, core.runs, core.store


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path = REPO) -> dict[str, Path]:
    return {module_name(p, root): p for pkg in ("core", "stepadapt_cli") for p in (root / pkg).rglob("*.py")}


def imports_of(path: Path, name: str, known: set[str]) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import of a project module in ``path``."""
    out = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] in ("core", "stepadapt_cli")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] not in ("core", "stepadapt_cli"):
                continue
            names = [a.name for a in node.names]
            subs = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in known]
            out += [(s, [], node.lineno) for s in subs]
            rest = [n for n in names if f"{mod}.{n}" not in known]
            if rest or not subs:
                out.append((mod, rest, node.lineno))
    return out


def graph(root: Path = REPO) -> dict[str, list[tuple[str, list[str], int]]]:
    mods = project_modules(root)
    return {name: imports_of(path, name, set(mods)) for name, path in mods.items()}


def violations(g: dict) -> list[str]:
    bad = []
    for mod, imps in g.items():
        for target, names, line in imps:
            if target.startswith("core") and layer_of(target) > layer_of(mod):
                bad.append(f"{mod}:{line} imports {target}, a later layer")
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private:
                bad.append(f"{mod}:{line} imports private {', '.join(private)} from {target}")
    return bad


def cycles(g: dict) -> list[list[str]]:
    edges = {
        m: sorted({t for t, _, _ in imps if t in g and t != m and not m.startswith(t + ".")}) for m, imps in g.items()
    }
    found, state, stack = [], {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in edges[m]:
            if state.get(t) == 1:
                found.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    return found


def test_no_module_imports_a_later_layer_or_a_private_name():
    assert violations(graph()) == []


def test_there_is_no_import_cycle():
    assert cycles(graph()) == []


def test_an_upward_import_is_caught(tmp_path):
    """The check itself: a model module that imports the pruner (a later layer) and a private name fails."""
    import shutil

    shutil.copytree(REPO / "core", tmp_path / "core")
    shutil.copytree(REPO / "stepadapt_cli", tmp_path / "stepadapt_cli")
    unet = tmp_path / "core" / "model" / "unet.py"
    unet.write_text(unet.read_text() + "\nfrom core.method.prune import apply_plan\nfrom core.store import _x\n")
    found = violations(graph(tmp_path))
    assert any("core.model.unet" in v and "core.method.prune, a later layer" in v for v in found)
    assert any("private _x" in v for v in found)


@pytest.mark.parametrize("layer", LAYERS[1:6])
def test_every_layer_exists_with_a_docstring(layer):
    init = REPO / Path(*layer.split(".")) / "__init__.py"
    assert ast.get_docstring(ast.parse(init.read_text()))
