"""Let the one-page print edition (Sphinx's ``singlehtml`` builder, ``make pdf``) render every
node the HTML build renders.

Several extensions (sphinx-design's cards, myst-nb's hidden code cells, ...) register their node
visitors for the ``html`` builder only; ``singlehtml`` — the same HTML writer, one page — then
fails with "unknown node type". Before writing, copy every ``html`` visitor the one-page builder
lacks.
"""

from __future__ import annotations

from typing import Any


def _share_html_visitors(app: Any) -> None:
    if app.builder.name != "singlehtml":
        return
    handlers = app.registry.translation_handlers
    single = handlers.setdefault("singlehtml", {})
    for node, visitors in handlers.get("html", {}).items():
        single.setdefault(node, visitors)


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", _share_html_visitors, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
