"""The benchmarks appendix: results collected from executed chapters, tables rendered from them."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from tools import bench
from transfer_utils.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _executed(tmp_path: Path, scale: str, value: float, seconds: float) -> Path:
    folder = tmp_path / "executed" / scale
    folder.mkdir(parents=True)
    glue = new_output("display_data", data={"application/papermill.record/text/plain": repr(value)},
                      metadata={"scrapbook": {"name": "ours_acc", "mime_prefix": "application/papermill.record/"}})
    stream = new_output("stream", name="stdout", text="backbone: tf_efficientnet_lite0  (timm ...)\n")
    cell = new_code_cell("x = 1")
    cell.outputs = [stream, glue]
    injected = new_code_cell(f'SCALE = "{scale}"', metadata={"tags": ["injected-parameters"]})
    nbformat.write(new_notebook(cells=[nbformat.v4.new_markdown_cell("# header"), injected, cell]),
                   folder / "05_resnet_case_study.ipynb")
    (folder / "timings.json").write_text(json.dumps({"05_resnet_case_study.ipynb": seconds}))
    return folder


def test_collect_and_render(tmp_path: Path) -> None:
    _executed(tmp_path, "ci", 0.75, 36.04)
    _executed(tmp_path, "full", 0.948, 507.4)
    path = bench.collect("test-box", executed=tmp_path / "executed", out_dir=tmp_path / "results")
    res = json.loads(path.read_text())
    chapter = res["chapters"]["05_resnet_case_study.ipynb"]
    assert chapter["seconds"] == {"ci": 36.0, "full": 507.4}
    assert chapter["backbone"] == {"ci": "tf_efficientnet_lite0", "full": "tf_efficientnet_lite0"}
    assert chapter["values"]["full"] == {"ours_acc": 0.948}
    assert res["machine"]["cpu_count"] >= 1 and res["machine"]["torch"]
    page = tmp_path / "page.md"
    page.write_text(f"# B\n\nintro\n\n{bench.START}\nstale\n{bench.END}\n\nafter\n")
    bench.render(tmp_path / "results", page)
    text = page.read_text()
    assert "stale" not in text and "intro" in text and "after" in text
    assert "| 05_resnet_case_study | tf_efficientnet_lite0 | 36.0 | 507.4 |" in text
    assert "| 05_resnet_case_study | ants/bees, chapter 4's recipe | 75.0% | 94.8% |" in text
    assert "— |" in text  # headlines the fake notebook did not glue are shown as missing, not invented


def test_precision_results_survive_collect_and_are_rendered(tmp_path: Path) -> None:
    """`precision` and `collect` write the same file in either order; the table shows the speed-up."""
    results = tmp_path / "results"
    results.mkdir()
    rows = [{"task": "step", "model": "m", "amp": False, "seconds": 0.2, "accuracy": None},
            {"task": "step", "model": "m", "amp": True, "seconds": 0.05, "accuracy": None},
            {"task": "fine-tune", "model": "m", "amp": False, "seconds": 4.0, "accuracy": 0.8},
            {"task": "fine-tune", "model": "m", "amp": True, "seconds": 8.0, "accuracy": 0.81}]
    (results / "gpu.json").write_text(json.dumps({"label": "gpu", "chapters": {}, "precision": rows}))
    _executed(tmp_path, "full", 0.9, 100.0)
    bench.collect("gpu", executed=tmp_path / "executed", out_dir=results)
    res = json.loads((results / "gpu.json").read_text())
    assert res["precision"] == rows and "05_resnet_case_study.ipynb" in res["chapters"]
    text = bench.render_tables([res])
    assert "| step | m | bf16 autocast | 0.05 | — | 4.00x |" in text
    assert "| fine-tune | m | bf16 autocast | 8 | 81.0% | 0.50x |" in text  # a slow-down is shown as one


def test_precision_needs_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on CI's machine, also where a GPU exists
    with pytest.raises(ConfigError, match="CUDA GPU"):
        bench.mixed_precision("x", out_dir=tmp_path)
    assert not list(tmp_path.iterdir()), "nothing may be written when nothing was measured"


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no executed chapters"):
        bench.collect("x", executed=tmp_path / "nothing", out_dir=tmp_path)
    with pytest.raises(ConfigError, match="label"):
        bench.collect("../escape", executed=tmp_path, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="no results"):
        bench.render(tmp_path / "empty", tmp_path / "page.md")


def test_the_appendix_page_shows_the_committed_results(tmp_path: Path) -> None:
    """book/benchmarks.md must be exactly what `bench render` makes of bench/results/."""
    page = tmp_path / "benchmarks.md"
    page.write_text((REPO / "book" / "benchmarks.md").read_text())
    bench.render(REPO / "bench" / "results", page)
    assert page.read_text() == (REPO / "book" / "benchmarks.md").read_text(), "run `python -m tools.bench render`"
    assert "| 04_fine_tuning |" in page.read_text()


def test_every_chapter_has_headlines() -> None:
    chapters = sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb"))
    assert sorted(bench.HEADLINES) == chapters


@pytest.mark.notebooks
def test_headlines_exist_in_the_chapters(executed_notebooks: dict[str, Path]) -> None:
    from transfer_utils.report import read_glued

    for name, headlines in bench.HEADLINES.items():
        glued = read_glued(nbformat.read(executed_notebooks[name], as_version=4))
        missing = set(headlines) - set(glued)
        assert not missing, f"{name} no longer glues {missing}: update tools.bench.HEADLINES"


def test_chapter_headers_and_the_instructors_guide_show_the_committed_times(tmp_path: Path) -> None:
    """Each chapter's header time and the guide's time column are what `bench render` makes of
    bench/results/ — one source, so the two can no longer disagree."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for path in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"):
        (notebooks / path.name).write_bytes(path.read_bytes())
    guide = tmp_path / "instructors.md"
    guide.write_text((REPO / "book" / "instructors.md").read_text())
    changed = bench.render_times(REPO / "bench" / "results", notebooks, guide)
    assert changed == [], f"run `python -m tools.bench render` (it would rewrite {[p.name for p in changed]})"


def test_a_new_measurement_rewrites_the_header_and_the_guide(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    cpu = {"label": "laptop", "machine": {"cpu": "x", "cpu_count": 4, "gpu": None},
           "chapters": {"05_resnet_case_study.ipynb": {"seconds": {"ci": 40.0, "full": 275.0}}}}
    (results / "laptop.json").write_text(json.dumps(cpu))
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    header = f"# Chapter\n\n**Time**: {bench.TIME_START}old{bench.TIME_END} The results cell prints your own times."
    nbformat.write(new_notebook(cells=[nbformat.v4.new_markdown_cell(header)]), notebooks / "05_resnet_case_study.ipynb")
    guide = tmp_path / "instructors.md"
    guide.write_text("| chapter | objectives | prerequisites | run time | study |\n|---|---|---|---|---|\n"
                     "| {doc}`../notebooks/05_resnet_case_study` | build | chapter 4 | about 1 min | 1.5 h |\n")
    bench.render_times(results, notebooks, guide)
    cell = nbformat.read(notebooks / "05_resnet_case_study.ipynb", as_version=4).cells[0].source
    assert "about 4½ min at full scale and under a minute at CI scale on 4 CPU cores" in cell
    assert cell.endswith("The results cell prints your own times.")
    assert "| chapter 4 | about 4½ min | 1.5 h |" in guide.read_text()
    nbformat.write(new_notebook(cells=[nbformat.v4.new_markdown_cell("# no markers")]),
                   notebooks / "05_resnet_case_study.ipynb")
    with pytest.raises(ConfigError, match="markers"):
        bench.render_times(results, notebooks, guide)


def test_collect_keeps_what_was_not_executed_again_and_says_which_version_each_scale_measured(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-running one scale of one chapter must not erase the other measurements, and the header
    must not call an old measurement one of today's chapter."""
    results = tmp_path / "results"
    results.mkdir()
    old = {"label": "box", "machine": {"cpu": "x", "cpu_count": 2, "gpu": None}, "precision": [{"task": "t"}],
           "chapters": {"01_when_transfer_helps.ipynb": {"seconds": {"ci": 20.0, "full": 30.0}, "backbone": {},
                                                         "values": {"ci": {}, "full": {}}},
                        "05_resnet_case_study.ipynb": {"seconds": {"ci": 30.0, "full": 500.0}, "backbone": {},
                                                       "values": {"ci": {"ours_acc": 0.7}, "full": {"ours_acc": 0.9}},
                                                       "source_sha256": "old"}}}
    (results / "box.json").write_text(json.dumps(old))
    _executed(tmp_path, "full", 0.948, 507.4)           # only chapter 5, only at full scale
    notebook = tmp_path / "05_resnet_case_study.ipynb"
    nbformat.write(new_notebook(cells=[nbformat.v4.new_markdown_cell("# header"), new_code_cell("x = 1")]), notebook)
    monkeypatch.setattr(bench, "_repo", lambda: tmp_path / "repo")
    (tmp_path / "repo" / "notebooks").mkdir(parents=True)
    (tmp_path / "repo" / "notebooks" / notebook.name).write_bytes(notebook.read_bytes())
    res = json.loads(bench.collect("box", executed=tmp_path / "executed", out_dir=results).read_text())
    five, one = res["chapters"]["05_resnet_case_study.ipynb"], res["chapters"]["01_when_transfer_helps.ipynb"]
    assert five["seconds"] == {"ci": 30.0, "full": 507.4} and five["values"]["ci"] == {"ours_acc": 0.7}
    assert five["source_sha256"] == {"ci": "old", "full": bench.chapter_digest(notebook)}
    assert one["seconds"] == {"ci": 20.0, "full": 30.0} and res["precision"] == [{"task": "t"}]
    assert "partly measured on an earlier version" in bench.time_phrase([res], notebook.name, notebook)
    assert "when last benchmarked" in bench.time_phrase([res], "01_when_transfer_helps.ipynb", notebook)
    five["source_sha256"]["ci"] = five["source_sha256"]["full"]
    assert "(measured on this version" in bench.time_phrase([res], notebook.name, notebook)


def test_collect_skips_copies_that_were_not_timed_one_at_a_time(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A copy from a side-by-side run (``--jobs 2``, as the tests execute) sits beside the timed ones but
    is not in timings.json: its time was shared, so it must not replace the chapter's measurement (it
    used to write ``None`` seconds and that run's values over the entry)."""
    results = tmp_path / "results"
    results.mkdir()
    kept = {"seconds": {"ci": 30.0}, "backbone": {"ci": "resnet18"}, "values": {"ci": {"ours_acc": 0.7}},
            "source_sha256": {"ci": "measured"}}
    (results / "box.json").write_text(json.dumps({"label": "box", "machine": {}, "chapters": {
        "05_resnet_case_study.ipynb": kept}}))
    folder = _executed(tmp_path, "ci", 0.5, 99.0)
    (folder / "timings.json").write_text(json.dumps({"01_when_transfer_helps.ipynb": 20.5}))   # chapter 5 not listed
    nbformat.write(new_notebook(cells=[new_code_cell("y = 1")]), folder / "01_when_transfer_helps.ipynb")
    res = json.loads(bench.collect("box", executed=tmp_path / "executed", out_dir=results).read_text())
    assert res["chapters"]["05_resnet_case_study.ipynb"] == kept
    assert res["chapters"]["01_when_transfer_helps.ipynb"]["seconds"] == {"ci": 20.5}
    assert "ci/05_resnet_case_study.ipynb: not timed one at a time" in capsys.readouterr().out


def test_collect_records_the_version_that_ran_not_todays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chapter edited after it was executed: the measurement belongs to the executed version, and
    the header must say it is of an earlier one."""
    _executed(tmp_path, "full", 0.948, 507.4)                       # ran with "x = 1"
    today = tmp_path / "repo" / "notebooks" / "05_resnet_case_study.ipynb"
    today.parent.mkdir(parents=True)
    nbformat.write(new_notebook(cells=[nbformat.v4.new_markdown_cell("# header"), new_code_cell("x = 2")]), today)
    monkeypatch.setattr(bench, "_repo", lambda: tmp_path / "repo")
    res = json.loads(bench.collect("box", executed=tmp_path / "executed", out_dir=tmp_path / "results").read_text())
    recorded = res["chapters"][today.name]["source_sha256"]["full"]
    assert recorded == bench.chapter_digest(tmp_path / "executed" / "full" / today.name) != bench.chapter_digest(today)
    assert "measured on an earlier version" in bench.time_phrase([res], today.name, today)


def test_the_digest_follows_the_code_not_the_prose(tmp_path: Path) -> None:
    cells = lambda text, code: [nbformat.v4.new_markdown_cell(text), new_code_cell(code)]  # noqa: E731
    for name, nb in (("a", cells("# one wording", "x = 1")), ("b", cells("# another wording", "x = 1")),
                     ("c", cells("# one wording", "x = 2"))):
        nbformat.write(new_notebook(cells=nb), tmp_path / f"{name}.ipynb")
    a, b, c = (bench.chapter_digest(tmp_path / f"{n}.ipynb") for n in "abc")
    assert a == b != c


def test_the_digest_ignores_what_the_executor_adds(tmp_path: Path) -> None:
    """An executed copy (injected parameters, the Colab install pinned to a commit) has the digest of
    the chapter it was executed from."""
    setup = 'pip install "transfer-utils @ git+https://github.com/o/r"'
    chapter = new_notebook(cells=[nbformat.v4.new_markdown_cell("# header"), new_code_cell(setup), new_code_cell("x = 1")])
    executed = new_notebook(cells=[nbformat.v4.new_markdown_cell("# header, time rewritten"),
                                   new_code_cell(setup.replace('/r"', '/r@f7ee802017ba0530e8f504fa4a0af59c4582dd2d"')),
                                   new_code_cell('SCALE = "full"', metadata={"tags": ["injected-parameters"]}),
                                   new_code_cell("x = 1")])
    for name, nb in (("chapter", chapter), ("executed", executed)):
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
    assert bench.chapter_digest(tmp_path / "chapter.ipynb") == bench.chapter_digest(tmp_path / "executed.ipynb")


def test_the_header_and_the_guide_use_the_measurement_of_todays_chapter(tmp_path: Path) -> None:
    """Two CPU results files: the header and the guide both take the one that measured this version of
    the chapter, even when another file comes first by label, and say how many threads it ran with."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    header = f"# Chapter\n\n**Time**: {bench.TIME_START}old{bench.TIME_END}"
    nbformat.write(new_notebook(cells=[nbformat.v4.new_markdown_cell(header), new_code_cell("x = 1")]),
                   notebooks / "05_resnet_case_study.ipynb")
    today = bench.chapter_digest(notebooks / "05_resnet_case_study.ipynb")
    results = tmp_path / "results"
    results.mkdir()
    for label, digest, full, threads in (("a-old", "older", 300.0, 2), ("b-new", today, 900.0, 1)):
        (results / f"{label}.json").write_text(json.dumps({
            "label": label, "machine": {"cpu": "x", "cpu_count": 2, "torch_threads": threads, "gpu": None},
            "chapters": {"05_resnet_case_study.ipynb": {"seconds": {"ci": 60.0, "full": full},
                                                        "source_sha256": {"ci": digest, "full": digest}}}}))
    guide = tmp_path / "instructors.md"
    guide.write_text("| chapter | objectives | prerequisites | run time | study |\n|---|---|---|---|---|\n"
                     "| {doc}`../notebooks/05_resnet_case_study` | build | chapter 4 | about 1 min | 1.5 h |\n")
    bench.render_times(results, notebooks, guide)
    cell = nbformat.read(notebooks / "05_resnet_case_study.ipynb", as_version=4).cells[0].source
    assert "about 15 min at full scale" in cell and "1 torch thread (measured on this version" in cell, cell
    assert "b-new.json" in cell and "| chapter 4 | about 15 min | 1.5 h |" in guide.read_text()
