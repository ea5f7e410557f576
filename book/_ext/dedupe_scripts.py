"""Drop duplicate <script> entries from every page.

With jupyter-book 1.0.4 / sphinx-thebe 0.3.1, sphinx-thebe's inline configuration script
(``const THEBE_JS_URL = ...``) is registered twice, and the second copy throws
"Identifier 'THEBE_JS_URL' has already been declared" in the browser. The headless-Chromium test
(tests/test_book.py) catches JavaScript errors like this one.
"""

from __future__ import annotations

from typing import Any


def _dedupe(app: Any, pagename: str, templatename: str, context: dict[str, Any], doctree: Any) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple[str, str]] = set()
    unique = []
    for js in scripts:
        # the same script is registered once with filename None and once with "": compare content
        key = (str(getattr(js, "filename", js) or ""), str(getattr(js, "attributes", {}).get("body", "")))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    context["script_files"] = unique


def setup(app: Any) -> dict[str, Any]:
    app.connect("html-page-context", _dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
