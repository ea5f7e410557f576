"""Mermaid diagrams (concept maps) rendered in the reader's browser from a copy of mermaid.js that
the book ships itself — no CDN, so they also render offline and from ``file://``.

A ```` ```{mermaid} ```` block becomes ``<pre class="mermaid">`` with the diagram's source (readable
as text where JavaScript is off); pages that have one load ``_static/mermaid.min.js`` (the
non-module bundle, registered with its checksum in ``tools.web_assets.WEB_ASSETS``, the book's
tooling, which the stage holds beside ``book/``).
"""

from __future__ import annotations

import html
import shutil
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive

JS_NAME = "mermaid.min.js"


class MermaidDirective(Directive):
    has_content = True

    def run(self) -> list[nodes.Node]:
        source = "\n".join(self.content).strip()
        if not source:
            raise self.error("a mermaid block needs a diagram")
        return [nodes.raw("", f'<pre class="mermaid">\n{html.escape(source)}\n</pre>\n', format="html",
                          classes=["mermaid-diagram"])]


def _has_diagram(doctree: Any) -> bool:
    return doctree is not None and any("mermaid-diagram" in n.get("classes", []) for n in doctree.findall(nodes.raw))


def _page_scripts(app: Any, pagename: str, templatename: str, context: dict[str, Any], doctree: Any) -> None:
    if _has_diagram(doctree):
        app.add_js_file(JS_NAME)
        app.add_js_file(None, body="mermaid.initialize({startOnLoad: true, securityLevel: 'strict'});")


def _ship_js(app: Any, exception: Exception | None) -> None:
    if exception is None and app.builder.format == "html":
        root = str(Path(__file__).resolve().parents[2])  # the repository, or the stage that copies tools/
        if root not in sys.path:
            sys.path.insert(0, root)
        from tools.web_assets import fetch_web_asset

        static = Path(app.outdir) / "_static"
        static.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fetch_web_asset("mermaid"), static / JS_NAME)


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("mermaid", MermaidDirective)
    app.connect("html-page-context", _page_scripts)
    app.connect("build-finished", _ship_js)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
