"""Execute the chapters once, then build the book from those executions.

``make book`` and the test suite both go through here, so every notebook runs exactly once per
build: papermill executes each chapter with the requested ``SCALE`` into
``_build/executed/<scale>/``, the book sources are staged with those executed copies in place
of the output-free originals, and Jupyter Book renders the stage with ``-W`` (every warning,
including a failed cell, is an error).

Command line::

    python -m tools.book execute --scale ci     # notebooks only
    python -m tools.book build --scale ci       # stage + jupyter-book build -W
    python -m tools.book all --scale full       # both (what `make book` runs)
    python -m tools.book build --edition student   # the same book, solutions hidden
    python -m tools.book print --scale full     # one-page HTML + PDF (`make pdf`)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat
import yaml

from transfer_utils.errors import ConfigError
from transfer_utils.fileio import atomic_path, atomic_write_json

#: The repository checkout these tools live in.
REPO = Path(__file__).resolve().parents[1]
#: What the stage holds besides the executed notebooks.
STAGED = ("_config.yml", "_toc.yml", "book", "transfer_utils", "tools")


@dataclass
class Execution:
    """One executed chapter."""

    notebook: str
    output: str
    seconds: float


def _repo() -> Path:
    if not (REPO / "_toc.yml").is_file():
        raise FileNotFoundError(f"{REPO} is not the book's repository (no _toc.yml): run the tools from a checkout of the repository")
    return REPO


def notebooks() -> list[Path]:
    """Every chapter notebook, in file-name order."""
    return sorted((_repo() / "notebooks").glob("*.ipynb"))


def executed_dir(scale: str) -> Path:
    return _repo() / "_build" / "executed" / scale


def source_commit() -> str | None:
    """The commit the book is built from (``git rev-parse HEAD``), or ``None`` outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(_repo()), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    sha = head.stdout.strip()
    return sha if head.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", sha) else None


def pin_setup_cell(nb: nbformat.NotebookNode, commit: str, name: str = "the notebook") -> None:
    """Make the Colab set-up cell (the first code cell) install ``transfer_utils`` from ``commit``.

    The committed notebooks install ``git+<repository url>``, the default branch; the executed copies,
    which the pages show and offer for download, install ``git+<repository url>@<commit>``: the code
    the page was built with. (The Colab launch button opens the committed notebook on GitHub.)
    """
    url = yaml.safe_load((_repo() / "_config.yml").read_text())["repository"]["url"].rstrip("/")
    setup = next((c for c in nb.cells if c.cell_type == "code"), None)
    unpinned = f'git+{url}"'
    if setup is None or setup.source.count(unpinned) != 1:
        raise ConfigError(f"{name}: its first code cell must be the Colab set-up cell, which installs "
                          f'"transfer-utils @ git+{url}" exactly once (copy it from another chapter), so that the '
                          "build can pin it to the commit the book is built from.")
    setup.source = setup.source.replace(unpinned, f'git+{url}@{commit}"')


class ChaptersFailed(RuntimeError):
    """One or more chapters raised while executing; every failure is listed, not only the first."""

    def __init__(self, failures: dict[str, str]) -> None:
        self.failures = failures
        lines = "\n".join(f"  - {name}: {why}" for name, why in failures.items())
        super().__init__(f"{len(failures)} chapter(s) failed to execute:\n{lines}\n"
                         "The executed copies (with the failing cell's traceback) are in _build/executed/.")


def _execute_one(src: str, out: str, scale: str, timeout: int | None, commit: str | None,
                 threads: int | None = None) -> tuple[str, float, str | None]:
    """Execute one chapter; return (name, seconds, failure or None). Runs in a worker process when
    chapters run side by side, so it takes every input as an argument."""
    import papermill as pm

    name = Path(src).name
    if threads is not None:  # the kernel inherits it: two chapters at once must not fight over the cores
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    print(f"[book] executing {name} (SCALE={scale}) ...", flush=True)
    start = time.perf_counter()
    try:
        pm.execute_notebook(src, out, parameters={"SCALE": scale}, kernel_name="python3",
                            cwd=str(Path(src).parent), progress_bar=False, execution_timeout=timeout)
        if commit is not None:  # afterwards: outside Colab the set-up cell does nothing anyway
            executed = nbformat.read(out, as_version=4)
            pin_setup_cell(executed, commit, name)
            nbformat.write(executed, out)
    except Exception as err:  # noqa: BLE001 - reported with the others by execute()
        why = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
        print(f"[book] {name} FAILED: {why}", flush=True)
        return name, time.perf_counter() - start, why
    seconds = time.perf_counter() - start
    print(f"[book] {name}: {seconds:.1f} s", flush=True)
    return name, seconds, None


def _longest_first(chapters: list[Path], scale: str) -> list[Path]:
    """Order chapters for side-by-side runs, longest first (so the workers finish together): by this
    checkout's last timings, else by the committed benchmark results, else as they come."""
    known: dict[str, float] = {}
    for results in sorted((_repo() / "bench" / "results").glob("*.json")):
        try:
            for name, entry in json.loads(results.read_text()).get("chapters", {}).items():
                seconds = (entry.get("seconds") or {}).get(scale)
                if seconds:
                    known[name] = max(known.get(name, 0.0), float(seconds))
        except (ValueError, AttributeError):
            continue  # an unreadable results file only costs the ordering
    timings = executed_dir(scale) / "timings.json"
    if timings.is_file():
        known.update(json.loads(timings.read_text()))
    return sorted(chapters, key=lambda nb: -known.get(nb.name, 0.0))


def execute(scale: str, names: list[str] | None = None, timeout: int | None = None,
            jobs: int = 1) -> list[Execution]:
    """Run each notebook top to bottom with papermill (``SCALE`` injected).

    Every chapter runs even when an earlier one fails; the failures are raised together at the
    end (:class:`ChaptersFailed`). There is no per-cell time limit by default (``timeout=None``):
    a slow or busy machine finishes slowly instead of failing; time budgets are the benchmark's
    business (:mod:`tools.bench`). In the executed copies the Colab set-up cell installs the
    package at :func:`source_commit` (:func:`pin_setup_cell`).

    ``jobs`` > 1 runs that many chapters side by side (longest first), each kernel with an equal share
    of the cores (``OMP_NUM_THREADS``): what the test suite does (on 2 cores the nine chapters of a fresh
    clone took 611 s this way, 801 s one at a time). Times measured that way are not a chapter's own, so
    only a one-at-a-time run (the default) writes them to ``_build/executed/<scale>/timings.json``, which
    the benchmark reads; a side-by-side run, or a failed chapter, removes the chapter from that file (a
    time recorded there was of another execution).
    """
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    # Progress bars are for people at a keyboard: in a rendered page they are only noise.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Figures must reach the notebook: a headless MPLBACKEND=Agg would make plt.show() a no-op.
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    out_dir = executed_dir(scale)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings_file = out_dir / "timings.json"
    commit = source_commit()
    if commit is None:
        print("[book] not a git checkout: the Colab set-up cells install the default branch", flush=True)
    chosen = [nb for nb in notebooks() if not names or nb.stem in names or nb.name in names]
    jobs = max(1, min(jobs, len(chosen)))
    done: list[tuple[str, float, str | None]] = []
    if jobs == 1:
        for nb in chosen:
            done.append(_execute_one(str(nb), str(out_dir / nb.name), scale, timeout, commit))
            timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
            timings.pop(nb.name, None)  # a failed run has no time; nor may an older run's stand for it
            atomic_write_json(timings_file, {**timings, **({nb.name: done[-1][1]} if done[-1][2] is None else {})})
    else:
        threads = None if "OMP_NUM_THREADS" in os.environ else max(1, (os.cpu_count() or 1) // jobs)
        print(f"[book] {len(chosen)} chapters, {jobs} at a time ({threads or os.environ['OMP_NUM_THREADS']} "
              "thread(s) each); their times are not written to timings.json", flush=True)
        queue = _longest_first(chosen, scale)
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_execute_one, str(nb), str(out_dir / nb.name), scale, timeout, commit, threads)
                       for nb in queue]
            for nb, future in zip(queue, futures):
                try:
                    done.append(future.result())
                except Exception as err:  # noqa: BLE001 - a worker that died (killed, out of memory) is a failure too
                    done.append((nb.name, 0.0, f"{type(err).__name__}: the worker process running it died ({err})"))
        if timings_file.is_file():  # an older one-at-a-time time is not the time of these executed copies
            timings = json.loads(timings_file.read_text())
            atomic_write_json(timings_file, {k: v for k, v in timings.items() if k not in {nb.name for nb in chosen}})
    failures = {name: why for name, _, why in done if why is not None}
    if failures:
        raise ChaptersFailed(dict(sorted(failures.items())))
    order = {nb.name: i for i, nb in enumerate(chosen)}
    return [Execution(name, str(out_dir / name), seconds) for name, seconds, _ in sorted(done, key=lambda d: order[d[0]])]


EDITIONS = ("full", "student")


def _write_if_changed(path: Path, data: bytes) -> None:
    """Write ``data`` unless ``path`` already holds it: an unchanged file keeps its modification time,
    which is how Sphinx tells which pages it must read again."""
    if not (path.is_file() and path.read_bytes() == data):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _sync(wanted: dict[Path, bytes], target: Path) -> None:
    """Make ``target`` hold exactly ``wanted`` (relative path -> bytes), touching only what differs."""
    for rel, data in wanted.items():
        _write_if_changed(target / rel, data)
    for path in sorted(target.rglob("*"), reverse=True):  # files before the folders that hold them
        rel = path.relative_to(target)
        if path.is_file() and rel not in wanted:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def stage(scale: str, edition: str = "full") -> Path:
    """Bring ``_build/stage/<scale>[-student]`` up to date with the book sources and the executed notebooks.

    Files whose content did not change keep their modification time, so a second Sphinx build of the
    same stage (the print edition after the HTML) reads no page again. The ``student`` edition hides
    every ``{solution}`` (sphinx-exercise's ``hide_solutions``).
    """
    if edition not in EDITIONS:
        raise ValueError(f"edition must be one of {EDITIONS}, got {edition!r}")
    repo = _repo()
    src_executed = executed_dir(scale)
    missing = [nb.name for nb in notebooks() if not (src_executed / nb.name).is_file()]
    if missing:
        raise FileNotFoundError(f"not executed yet at SCALE={scale}: {missing}; run `execute` first")
    target = repo / "_build" / "stage" / (scale if edition == "full" else f"{scale}-{edition}")
    wanted: dict[Path, bytes] = {}
    for name in STAGED:
        src = repo / name
        files = [f for f in src.rglob("*") if f.is_file() and "__pycache__" not in f.parts] if src.is_dir() else [src]
        wanted.update({f.relative_to(repo): f.read_bytes() for f in files})
    for nb in notebooks():
        executed = nbformat.read(src_executed / nb.name, as_version=4)
        for cell in executed.cells:  # papermill's injected SCALE: folded away, still inspectable
            tags = cell.metadata.get("tags", [])
            if "injected-parameters" in tags and "hide-cell" not in tags:
                cell.metadata["tags"] = [*tags, "hide-cell"]
        wanted[Path("notebooks") / nb.name] = nbformat.writes(executed).encode()
    config = yaml.safe_load((repo / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"  # already executed, exactly once
    if edition == "student":
        config["title"] = f"{config['title']} (student edition)"
        config["sphinx"]["config"]["hide_solutions"] = True
    wanted[Path("_config.yml")] = yaml.safe_dump(config, sort_keys=False).encode()
    target.mkdir(parents=True, exist_ok=True)
    _sync(wanted, target)
    return target


def output_dir(edition: str = "full") -> Path:
    """Where ``build`` writes the HTML: ``_build/html`` (full) or ``_build/student/_build/html``."""
    root = _repo() if edition == "full" else _repo() / "_build" / edition
    return root / "_build" / "html"


def build(scale: str, strict: bool = True, edition: str = "full") -> Path:
    """Stage and run ``jupyter-book build`` (``-W -n --keep-going`` when strict); return index.html."""
    target = stage(scale, edition)
    index = output_dir(edition) / "index.html"
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(target),
           "--path-output", str(index.parents[2]), "--all"]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    print("[book]", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    if not index.is_file():
        raise FileNotFoundError(f"the build finished without {index}")
    return index


def chromium() -> str:
    """The headless browser used for the HTML checks and the PDF (``make chromium`` installs it)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError("Chromium is needed for the HTML checks and the PDF: `make chromium` (apt-get install chromium)")


def build_print(scale: str) -> Path:
    """The whole book on one HTML page (Sphinx's ``singlehtml`` builder, ``_build/singlehtml``), printed
    to ``_build/print/transfer-learning-with-pytorch.pdf`` by headless Chromium, offline; return the PDF.

    It shares the HTML build's parsed pages (``_build/.doctrees``): after ``build`` at the same scale,
    Sphinx reads no page again and only writes the one-page edition."""
    target = stage(scale)
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(target), "--builder", "singlehtml",
           "--path-output", str(_repo())]
    print("[book]", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    root = yaml.safe_load((target / "_toc.yml").read_text())["root"]
    page = print_page(root)  # the whole book (index.html only redirects here)
    if not page.is_file():
        raise FileNotFoundError(f"the single-page build finished without {page}")
    pdf = _repo() / "_build" / "print" / "transfer-learning-with-pytorch.pdf"
    pdf.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(pdf) as part, tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                        "--virtual-time-budget=30000", "--no-pdf-header-footer", f"--print-to-pdf={part}",
                        page.as_uri()], check=True, capture_output=True, timeout=600)
        if not part.is_file() or part.read_bytes()[:5] != b"%PDF-":
            raise RuntimeError(f"Chromium did not write a PDF for {page}")
    return pdf


def print_page(root: str = "book/index") -> Path:
    """The one-page edition's HTML file (what :func:`build_print` prints)."""
    return _repo() / "_build" / "singlehtml" / f"{root}.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.book")
    parser.add_argument("command", choices=["execute", "build", "all", "print"],
                        help="print: the whole book on one page (singlehtml) and as a PDF")
    parser.add_argument("--scale", choices=["full", "ci"], default="full")
    parser.add_argument("--only", nargs="*", help="notebook names to execute (default: all)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="chapters executed side by side (each with its share of the cores); their times are "
                             "not written to timings.json")
    parser.add_argument("--edition", choices=EDITIONS, default="full",
                        help="'student' hides the solutions of the exercises")
    args = parser.parse_args(argv)
    if args.command in ("execute", "all"):
        for r in execute(args.scale, args.only, jobs=args.jobs):
            print(json.dumps(asdict(r)))
    if args.command in ("build", "all"):
        print(f"[book] built {build(args.scale, edition=args.edition)}")
    if args.command == "print":
        print(f"[book] printed {build_print(args.scale)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
