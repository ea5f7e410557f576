"""Every third-party import of the learner's code is a declared dependency.

``pip install .`` (or Colab's set-up cell) installs ``transfer_utils`` with exactly the
dependencies ``pyproject.toml`` declares. An import of anything else in the package or in a
chapter's code works here, where the pinned environment (and the book's tooling) happens to
provide it, and fails for a learner. A static check: each imported top-level name is mapped to
the distribution that provides it (``importlib.metadata.packages_distributions``).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import sys
import tomllib  # the test suite runs on Python 3.11+ (the Makefile's python3); never a skip
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Imported, but provided by whatever runs the notebooks (Jupyter, Colab), not by this package:
#: the kernel brings IPython (``report.glue`` displays through it); ``google.colab`` exists only
#: in Colab, where the chapters' set-up cell checks for it.
PROVIDED_BY_THE_KERNEL = {"IPython", "google"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"]) + [d for extra in project.get("optional-dependencies", {}).values()
                                             for d in extra]
    return {_canonical(re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0]) for spec in specs}


def top_level_imports(source: str) -> set[str]:
    """Top-level names of every absolute import in ``source`` (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    lines = [line for c in cells if c["cell_type"] == "code"
             for line in "".join(c["source"]).splitlines()
             if not line.lstrip().startswith(("%", "!"))]  # IPython magics and shell lines
    return "\n".join(lines)


def sources() -> dict[str, str]:
    out = {f"transfer_utils/{p.name}": p.read_text() for p in sorted((REPO / "transfer_utils").glob("*.py"))}
    out.update({f"notebooks/{p.name}": _notebook_code(p) for p in sorted((REPO / "notebooks").glob("*.ipynb"))})
    return out


def undeclared(imports: dict[str, set[str]], allowed: set[str]) -> list[str]:
    local = {"transfer_utils", "tools", "__future__"} | PROVIDED_BY_THE_KERNEL
    providers = importlib.metadata.packages_distributions()
    problems = []
    for where, names in imports.items():
        for name in sorted(names - local - set(sys.stdlib_module_names)):
            dists = {_canonical(d) for d in providers.get(name, [])}
            if not dists and _canonical(name) in allowed:
                continue  # declared (an optional extra, e.g. a GPU-only library) but not installed here
            if not dists:
                problems.append(f"{where}: imports {name}, which no installed distribution provides")
            elif not dists & allowed:
                problems.append(f"{where}: imports {name} (from {', '.join(sorted(dists))}), "
                                "not declared in pyproject.toml's dependencies")
    return problems


def test_every_third_party_import_is_declared() -> None:
    problems = undeclared({w: top_level_imports(s) for w, s in sources().items()}, declared())
    assert not problems, "declare these in pyproject.toml (and pin them in requirements.txt):\n" + "\n".join(problems)


def test_an_undeclared_import_is_reported() -> None:
    imports = {"transfer_utils/x.py": top_level_imports("import numpy\ndef f():\n    import yaml\n")}
    assert undeclared(imports, {"numpy"}) == [
        "transfer_utils/x.py: imports yaml (from pyyaml), not declared in pyproject.toml's dependencies"]
    assert undeclared(imports, {"numpy", "pyyaml"}) == []
