"""The Colab set-up cell, tested in a fresh virtual environment that mimics Colab.

What is mimicked: a ``/content``-like working folder; the packages Colab preinstalls (torch,
transformers, scikit-learn, …) visible to the interpreter, ``transfer_utils`` not; ``google.colab``
imported at start-up, as Colab's kernel does. The chapter's first cell must then install
``transfer_utils`` from the repository named in ``_config.yml`` (redirected by git's
``insteadOf`` to this checkout, since there is no internet here) and the chapter must run to the
end from that clean state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
import venv
from pathlib import Path

import nbformat
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHAPTER = "02_loss_and_gradients.ipynb"  # the fastest chapter; every chapter has the same set-up cell


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)


@pytest.mark.colab
def test_setup_cell_makes_a_chapter_runnable_in_a_colab_like_environment(tmp_path: Path) -> None:
    import papermill  # a missing papermill is a broken environment: fail, never skip

    if not (REPO / ".git").exists():
        pytest.fail("the Colab test installs from this checkout with git: run it in a git clone")

    # 1. A fresh venv. The "preinstalled" packages are this environment's, seen through a folder of
    #    links to everything in its site-packages except transfer_utils (package, metadata, editable
    #    hook), added to the new venv's path by a .pth line.
    env_dir = tmp_path / "colab-venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    preinstalled = tmp_path / "preinstalled"
    preinstalled.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if "transfer_utils" not in entry.name and not entry.name.endswith(".pth"):
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
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=str(fake), GIT_CONFIG_GLOBAL=str(gitconfig), PIP_DISABLE_PIP_VERSION_CHECK="1",
               PATH=f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}")

    before = _run([str(python), "-c", "import google.colab, torch; import transfer_utils"], env, content)
    assert "No module named 'transfer_utils'" in before.stderr, before.stderr[-2000:]
    # pip itself comes from the preinstalled packages, as python -m pip does in Colab.
    assert _run([str(python), "-m", "pip", "--version"], env, content).returncode == 0

    # 4. A kernel running that interpreter, and the chapter executed in /content.
    kernels = tmp_path / "jupyter" / "kernels" / "colab-mimic"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Colab mimic", "language": "python", "env": env}))
    old = dict(os.environ)
    os.environ["JUPYTER_PATH"] = str(tmp_path / "jupyter")
    try:
        out = content / CHAPTER
        papermill.execute_notebook(str(REPO / "notebooks" / CHAPTER), str(out), parameters={"SCALE": "ci"},
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
    # Running the set-up cell again is harmless (the header promises it).
    again = _run([str(python), "-c", nb.cells[1].source], env, content)
    assert again.returncode == 0, again.stderr[-2000:]


def test_the_executed_chapters_pin_the_set_up_cell_to_the_built_commit(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    """The committed chapters install the default branch; the executed copies the pages are built from
    (and offer for download) install the commit they were executed at. Fast: papermill is replaced by
    a copy of the notebook it is given."""
    import papermill

    from transfer_utils import book
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
