"""The book builds with -W from the executed chapters, and every page works in a real browser:
it loads, shows no error output, typesets its math with the offline MathJax, and its images exist."""

from __future__ import annotations

import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.book


def _toc_pages() -> list[str]:
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    pages = [toc["root"]]
    for part in toc.get("parts", []):
        for chapter in part["chapters"]:
            pages += [chapter["file"]] + [section["file"] for section in chapter.get("sections", [])]
    return pages


def _chromium() -> str:
    from tools import book

    try:
        return book.chromium()
    except FileNotFoundError as err:
        pytest.fail(str(err))


CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars"]


def _dump_dom(html: Path, tmp: Path) -> tuple[str, str]:
    proc = subprocess.run(
        [_chromium(), *CHROME_FLAGS, f"--user-data-dir={tmp}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=15000", "--dump-dom", html.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.scripts: list[str] = []

    def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
        a = dict(attrs)
        if tag == "img" and a.get("src"):
            self.images.append(a["src"])
        if tag == "script" and a.get("src"):
            self.scripts.append(a["src"])


def test_every_toc_page_is_built(built_site: Path) -> None:
    for page in _toc_pages():
        assert (built_site / f"{page}.html").is_file(), f"{page} missing from the build"
    assert (built_site / "index.html").is_file()


@pytest.mark.parametrize("page", _toc_pages())
def test_page_in_chromium(built_site: Path, page: str, tmp_path: Path) -> None:
    html = built_site / f"{page}.html"
    source = html.read_text()
    dom, log = _dump_dom(html, tmp_path)
    assert "<main" in dom and "Transfer Learning with PyTorch" in dom, "the page did not load"
    # No cell of an executed chapter may show an error or a traceback.
    assert "Traceback (most recent call last)" not in dom
    assert not re.search(r'class="[^"]*\boutput\b[^"]*\b(traceback|error)\b', source)
    assert "Uncaught" not in log, f"JavaScript error on {page}: {log[-1500:]}"
    # Math must be typeset by MathJax loaded from the book itself, not a CDN.
    parser = _Assets()
    parser.feed(source)
    mathjax = [s for s in parser.scripts if "mathjax" in s.lower() or "tex-" in s.lower()]
    assert not any(s.startswith(("http:", "https:", "//")) for s in mathjax), f"MathJax from a CDN: {mathjax}"
    if 'class="math' in source:
        assert mathjax, f"{page}: math but no MathJax"
        assert "<mjx-container" in dom, f"{page}: math present but not typeset"
        assert not re.search(r"\$\$|\\\[", re.sub(r"<(script|pre)[^>]*>.*?</\1>", "", dom, flags=re.S)), \
            f"{page}: raw TeX left on the page"
    # Every image the page references exists in the build.
    for src in parser.images:
        if not src.startswith(("http:", "https:", "data:")):
            assert (html.parent / src.split("#")[0]).is_file(), f"{page}: missing image {src}"


def test_chapter_shows_its_figures_and_exercises(built_site: Path) -> None:
    source = (built_site / "notebooks" / "03_feature_extraction.html").read_text()
    parser = _Assets()
    parser.feed(source)
    assert sum(1 for s in parser.images if s.endswith(".png")) >= 6, "expected the chapter's plots"
    assert source.count('class="exercise admonition"') >= 3, "expected at least three rendered exercises"
    assert "dropdown" in source  # solutions are hidden until opened
    assert "colab.research.google.com" in source  # the launch button


def test_screenshots_for_a_person(built_site: Path, tmp_path: Path) -> None:
    """Three representative pages rendered to PNG under _build/screenshots/ (for a person to look at)."""
    out = built_site.parent / "screenshots"
    out.mkdir(exist_ok=True)
    for page in ("book/index", "notebooks/03_feature_extraction", "book/setup"):
        png = out / (page.replace("/", "_") + ".png")
        png.unlink(missing_ok=True)
        subprocess.run([_chromium(), *CHROME_FLAGS, f"--user-data-dir={tmp_path}", "--window-size=1280,2000",
                        "--virtual-time-budget=10000", f"--screenshot={png}", (built_site / f"{page}.html").as_uri()],
                       capture_output=True, timeout=120, check=True)
        assert png.is_file() and png.stat().st_size > 20_000, f"{png} looks empty"


@pytest.fixture(scope="session")
def student_site(executed_notebooks: dict[str, Path]) -> Path:
    from tools import book

    return book.build("ci", strict=True, edition="student").parent


def test_student_edition_hides_every_solution(built_site: Path, student_site: Path) -> None:
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        page = f"notebooks/{nb.stem}.html"
        full, student = (built_site / page).read_text(), (student_site / page).read_text()
        exercises = full.count('class="exercise admonition"')
        assert exercises >= 3 and student.count('class="exercise admonition"') == exercises
        assert full.count('class="solution dropdown admonition"') == exercises
        assert 'class="solution' not in student, f"{page}: a solution leaks into the student edition"
    assert "student edition" in (student_site / "book" / "index.html").read_text()


def test_print_edition_is_one_page_and_a_pdf(executed_notebooks: dict[str, Path]) -> None:
    """`make pdf`: every chapter on one HTML page (singlehtml), printed to a PDF offline."""
    import nbformat

    from tools import book

    pdf = book.build_print("ci")
    data = pdf.read_bytes()
    assert data[:5] == b"%PDF-" and len(data) > 500_000
    pages = len(re.findall(rb"/Type\s*/Page\b(?!s)", data))
    assert pages > 40, f"only {pages} pages printed"
    html = book.print_page().read_text()
    for nb_path in sorted((REPO / "notebooks").glob("*.ipynb")):
        first = nbformat.read(nb_path, as_version=4).cells[0].source
        title = next(line[2:].strip() for line in first.splitlines() if line.startswith("# "))
        assert title.split(":")[0] in html, f"{nb_path.name}: '{title}' is missing from the print edition"


def test_concept_maps_render_offline(built_site: Path, tmp_path: Path) -> None:
    """Mermaid diagrams are drawn in the browser by the book's own copy of mermaid.js (no CDN)."""
    for page in ("book/theory", "book/index"):
        html = built_site / f"{page}.html"
        source = html.read_text()
        assert '<pre class="mermaid">' in source and 'src="../_static/mermaid.min.js"' in source
        dom, log = _dump_dom(html, tmp_path)
        assert "Uncaught" not in log, log[-1500:]
        drawn = re.findall(r'<pre class="mermaid"[^>]*data-processed="true"[^>]*>\s*<svg', dom)
        assert drawn, f"{page}: the diagram was not drawn"
    assert (built_site / "_static" / "mermaid.min.js").stat().st_size > 1_000_000
