"""The package layout (docs/architecture.md): layers, no import circle, small files, docs references that resolve.

Every ``import`` of a ``textseg`` module anywhere in a file (also inside functions, i.e. lazy imports) is an edge of
the import graph. The graph must have no circle, and an edge may only go from a layer to one it is allowed to use:
``ops`` and ``models`` sit on ``errors``; ``data`` on ``ops``; ``engine`` (run plumbing) on ``data`` and ``ops``;
``methods`` on ``models``, ``ops`` and ``engine``; ``inference`` (using a trained model) on ``methods`` and everything
below it; ``cli`` on everything. Nothing imports ``cli``, and nothing in
``textseg`` imports ``benchmarks`` or ``experiments``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "textseg"

#: Layer -> the layers it may import (besides itself). ``textseg`` is the package's own ``__init__``.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "cuda_env": set(),
    "ops": {"errors"},
    "models": {"errors", "ops"},
    "data": {"errors", "ops"},
    "engine": {"errors", "ops", "data", "textseg"},
    "methods": {"errors", "cuda_env", "ops", "models", "engine"},
    "inference": {"errors", "ops", "models", "data", "engine", "methods", "textseg"},
    "cli": {"errors", "cuda_env", "ops", "models", "data", "engine", "methods", "inference", "textseg"},
    "textseg": {"cuda_env"},
    "__main__": {"cli"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "textseg"


def imports_of(path: Path) -> set[str]:
    """Every ``textseg`` module a file imports (``from textseg.x import y`` counts ``textseg.x.y`` if it is one)."""
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in ("textseg", "benchmarks", "experiments"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            root = node.module.split(".")[0]
            if root not in ("textseg", "benchmarks", "experiments"):
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) - {module_name(p)} for p in sorted(PACKAGE.rglob("*.py"))}


def test_layers_only_import_downwards() -> None:
    wrong = []
    for module, targets in import_graph().items():
        for target in targets:
            if not target.startswith("textseg"):
                wrong.append(f"{module} imports {target}")
            elif layer(target) != layer(module) and layer(target) not in ALLOWED[layer(module)]:
                wrong.append(f"{module} ({layer(module)}) imports {target} ({layer(target)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circle() -> None:
    graph = import_graph()
    # an edge to a package means its __init__; drop the implicit parent-package edges of submodules
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)


def test_a_layer_test_catches_an_upward_import(tmp_path: Path) -> None:
    """The checker is not vacuous: an ``ops`` module importing ``textseg.methods`` is an edge it sees."""
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    from textseg.methods.base import TextSegModule\n    return TextSegModule\n")
    assert "textseg.methods.base" in imports_of(fake)
    assert "methods" not in ALLOWED["ops"]


def test_top_level_is_only_entry_points() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "cuda_env.py", "errors.py"]


def test_no_file_over_500_lines() -> None:
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert not long


#: ``docs/NAME.md §N.M`` (or ``Sec. N.M``) as the docstrings cite them.
_REF = re.compile(r"docs/([\w/]+\.md)``?\s*(?:§|Sec\. )?(\d+(?:\.\d+)?)?")


def test_docs_references_resolve() -> None:
    """Every ``docs/X.md`` cited in the package exists, and a cited section number is a heading of that file."""
    missing = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "methods.md" not in text.replace("docs/methods.md", ""), f"{path}: cite docs/methods.md"
        assert "data.md" not in text.replace("docs/data.md", ""), f"{path}: cite docs/data.md"
        for name, section in _REF.findall(text):
            doc = REPO / "docs" / name
            if not doc.is_file():
                missing.append(f"{path.name}: docs/{name}")
            elif section and not re.search(rf"^#+ {re.escape(section)}\.? ", doc.read_text(), flags=re.M):
                missing.append(f"{path.name}: docs/{name} §{section}")
    assert not missing, "\n".join(sorted(set(missing)))


def test_package_never_reads_outside_the_repository() -> None:
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "../shared" not in text and "shared/reference" not in text, path
