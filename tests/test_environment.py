"""The pinned environment: requirements.txt and environment.yml must not drift apart."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

PIN = re.compile(r"^[A-Za-z0-9_.\-\[\]]+==[A-Za-z0-9_.+\-]+$")


def _requirements(path: Path) -> list[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def test_environment_yml_matches_requirements(repo: Path) -> None:
    env = yaml.safe_load((repo / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert sorted(pip_section) == sorted(_requirements(repo / "requirements.txt"))
    assert "python=3.11" in env["dependencies"]


def test_every_requirement_is_pinned(repo: Path) -> None:
    for name in ("requirements.txt", "requirements-assets.txt"):
        reqs = _requirements(repo / name)
        assert reqs, f"{name} is empty"
        loose = [r for r in reqs if not PIN.match(r)]
        assert not loose, f"{name}: not pinned with ==: {loose}"


def test_jupyter_book_is_1x_with_sphinx_7(repo: Path) -> None:
    reqs = dict(r.split("==") for r in _requirements(repo / "requirements.txt"))
    assert reqs["jupyter-book"].startswith("1."), "the book's layout is Jupyter Book 1.x"
    assert reqs["sphinx"].startswith("7."), "jupyter-book 1.x needs sphinx 7"


def test_ci_runs_the_readme_test_command(repo: Path) -> None:
    ci = (repo / ".ci" / "run").read_text()
    readme = (repo / "README.md").read_text()
    assert "make test" in ci and "make test" in readme and "make book" in readme


def test_pages_workflow_builds_with_the_readme_command(repo: Path) -> None:
    """The deploy workflow cannot run here; check its structure and that its command exists."""
    wf = yaml.safe_load((repo / ".github" / "workflows" / "deploy.yml").read_text())
    build = wf["jobs"]["build"]
    runs = [step["run"] for step in build["steps"] if "run" in step]
    assert runs == ["make book"]
    assert "\nbook:" in (repo / "Makefile").read_text()
    upload = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"
    assert wf["jobs"]["deploy"]["needs"] == "build"
    assert wf[True]["push"]["branches"] == ["main"]  # YAML 1.1 reads the key `on` as True
