"""The package's shape: every module is in the one index (``transfer_utils.LAYERS`` and the package
docstring), and every import inside the package points down its layers (so there is no cycle)."""

from __future__ import annotations

import ast
import tomllib  # the test suite runs on Python 3.11+ (the Makefile's python3); never a skip
from pathlib import Path

import pytest

import transfer_utils

PACKAGE = Path(transfer_utils.__file__).parent


def _layer_of() -> dict[str, int]:
    return {m: i for i, layer in enumerate(transfer_utils.LAYERS) for m in layer}


def upward_imports(module: str, source: str, layer_of: dict[str, int]) -> list[str]:
    """Every ``from . import x`` / ``from .x import y`` in ``source`` (at any depth: imports inside
    functions count too) that points to the same or a higher layer than ``module``'s."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level == 1:
            targets = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
        elif node.level == 0 and (node.module or "").startswith("transfer_utils"):
            parts = node.module.split(".")
            targets = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
        else:
            continue
        for target in targets:
            if target in layer_of and target != module and layer_of[target] >= layer_of[module]:
                bad.append(f"{module} (layer {layer_of[module] + 1}) imports {target} (layer {layer_of[target] + 1}), "
                           f"line {node.lineno}")
    return bad


def test_every_module_is_in_the_index_once() -> None:
    listed = [m for layer in transfer_utils.LAYERS for m in layer]
    assert len(listed) == len(set(listed)), "a module is listed twice"
    on_disk = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert set(listed) == on_disk, f"not in LAYERS: {on_disk - set(listed)}; listed but missing: {set(listed) - on_disk}"
    for module in listed:  # and the docstring (the index a reader sees) names each one
        assert f":mod:`~transfer_utils.{module}`" in transfer_utils.__doc__, module


def test_imports_only_point_down_the_layers() -> None:
    layer_of = _layer_of()
    bad = [b for p in sorted(PACKAGE.glob("*.py")) if p.stem in layer_of
           for b in upward_imports(p.stem, p.read_text(), layer_of)]
    assert not bad, "imports that point up or sideways:\n" + "\n".join(bad)


@pytest.mark.parametrize("source", [
    "from .features import extract_features\n",                 # data -> features: up
    "def f():\n    from .text import pooled_embeddings\n",      # hidden in a function: still up
    "from transfer_utils.train import fit\n",                   # absolute form
    "from . import models\n",
])
def test_an_upward_import_is_reported(source: str) -> None:
    assert upward_imports("data", source, _layer_of()), source


def test_readme_points_to_the_index_instead_of_copying_it(repo: Path) -> None:
    readme = (repo / "README.md").read_text()
    assert "transfer_utils/__init__.py" in readme
    assert "`assets`, `config`, `data`, `models`" not in readme  # the old hand-kept copy


def test_the_book_page_lists_every_module_in_its_layer(repo: Path) -> None:
    page = (repo / "book" / "transfer_utils.md").read_text()
    for i, layer in enumerate(transfer_utils.LAYERS, start=1):
        for module in layer:
            assert f"| {i} | `{module}` |" in page, f"book/transfer_utils.md: no row '| {i} | `{module}` |'"


def test_the_package_never_imports_the_book_tooling(repo: Path) -> None:
    """tools/ (book build, benchmarks, web assets) is not installed: an import of it from
    transfer_utils would fail for every learner who ran `pip install .`."""
    bad = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            bad += [f"{path.name}:{node.lineno} imports {n}" for n in names if n.split(".")[0] == "tools"]
    assert not bad, bad
    declared = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert declared == ["transfer_utils"], f"pyproject installs {declared}: the tooling must stay out"
