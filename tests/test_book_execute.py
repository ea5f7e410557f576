"""The chapter executor (fast lane): one failing chapter does not hide the others, and no per-cell
time limit turns a slow machine into a failure."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from tools import book


def _notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('SCALE = "full"', metadata={"tags": ["parameters"]}),
                *(nbformat.v4.new_code_cell(s) for s in sources)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.mark.parametrize("jobs", [1, 2])
def test_every_chapter_runs_and_every_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         jobs: int) -> None:
    src = tmp_path / "notebooks"
    src.mkdir()
    chapters = [_notebook(src / "01_fails.ipynb", "raise ValueError('first chapter broke')"),
                _notebook(src / "02_fine.ipynb", "print('scale', SCALE)"),
                _notebook(src / "03_fails_too.ipynb", "1 / 0")]
    monkeypatch.setattr(book, "notebooks", lambda: chapters)
    monkeypatch.setattr(book, "executed_dir", lambda scale: tmp_path / "executed" / scale)
    monkeypatch.setattr(book, "source_commit", lambda: None)  # these notebooks have no Colab set-up cell
    timings = tmp_path / "executed" / "ci" / "timings.json"
    timings.parent.mkdir(parents=True)
    timings.write_text('{"01_fails.ipynb": 3.0}')   # the time of an earlier, successful run
    with pytest.raises(book.ChaptersFailed) as caught:
        book.execute("ci", jobs=jobs)
    assert set(caught.value.failures) == {"01_fails.ipynb", "03_fails_too.ipynb"}
    assert "first chapter broke" in str(caught.value) and "ZeroDivisionError" in str(caught.value)
    # the chapter after the first failure still ran, with the injected scale
    done = nbformat.read(tmp_path / "executed" / "ci" / "02_fine.ipynb", as_version=4)
    assert "scale ci" in done.cells[-1].outputs[0].text
    # Only a one-at-a-time run records the chapter's time for the benchmark: side by side, two
    # chapters share the cores and the time is not the chapter's own. A failed chapter has no time, and
    # the earlier run's must not stand for the copy that failed.
    assert set(json.loads(timings.read_text())) == ({"02_fine.ipynb"} if jobs == 1 else set())


def test_side_by_side_chapters_share_the_cores_and_return_in_chapter_order(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "notebooks"
    src.mkdir()
    probe = "import os; print('threads', os.environ.get('OMP_NUM_THREADS'))"
    chapters = [_notebook(src / f"0{i}_x.ipynb", probe) for i in (1, 2, 3)]
    monkeypatch.setattr(book, "notebooks", lambda: chapters)
    monkeypatch.setattr(book, "executed_dir", lambda scale: tmp_path / "executed" / scale)
    monkeypatch.setattr(book, "source_commit", lambda: None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(book.os, "cpu_count", lambda: 4)
    timings = tmp_path / "executed" / "ci" / "timings.json"
    timings.parent.mkdir(parents=True)
    timings.write_text('{"01_x.ipynb": 5.0, "09_other.ipynb": 7.0}')   # an earlier one-at-a-time run
    results = book.execute("ci", jobs=2)
    assert [r.notebook for r in results] == ["01_x.ipynb", "02_x.ipynb", "03_x.ipynb"]
    # the benchmark must not pair these executed copies with a time measured on another execution
    assert json.loads(timings.read_text()) == {"09_other.ipynb": 7.0}
    for r in results:
        assert "threads 2" in nbformat.read(r.output, as_version=4).cells[-1].outputs[0].text


def test_side_by_side_runs_start_with_the_longest_chapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(book, "executed_dir", lambda scale: tmp_path / scale)
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "timings.json").write_text('{"01_a.ipynb": 5, "02_b.ipynb": 90, "03_c.ipynb": 20}')
    names = [Path(n) for n in ("01_a.ipynb", "02_b.ipynb", "03_c.ipynb", "04_new.ipynb")]
    ordered = [p.name for p in book._longest_first(names, "ci")]
    assert ordered[:3] == ["02_b.ipynb", "03_c.ipynb", "01_a.ipynb"] and ordered[3] == "04_new.ipynb"


def test_no_per_cell_time_limit_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def fake_execute(src: str, out: str, **kwargs: object) -> None:
        seen.update(kwargs)

    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    monkeypatch.setattr(book, "notebooks", lambda: [tmp_path / "01_x.ipynb"])
    monkeypatch.setattr(book, "executed_dir", lambda scale: tmp_path / "executed" / scale)
    monkeypatch.setattr(book, "source_commit", lambda: None)
    book.execute("ci")
    assert seen["execution_timeout"] is None


def test_staging_again_touches_only_what_changed(tmp_path: Path) -> None:
    """The stage keeps an unchanged file's modification time (Sphinx then reads that page no second
    time, which lets the print edition reuse the HTML build), rewrites what changed, drops what went."""
    import os

    target = tmp_path / "stage"
    book._sync({Path("a.md"): b"same", Path("sub/b.md"): b"old", Path("gone.md"): b"x"}, target)
    os.utime(target / "a.md", (1_000_000, 1_000_000))
    book._sync({Path("a.md"): b"same", Path("sub/b.md"): b"new"}, target)
    assert (target / "a.md").stat().st_mtime == 1_000_000
    assert (target / "sub" / "b.md").read_bytes() == b"new"
    assert not (target / "gone.md").exists()
    book._sync({Path("a.md"): b"same"}, target)
    assert not (target / "sub").exists()
