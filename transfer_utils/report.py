r"""Record a chapter's measured numbers so that prose, tests and readers see the same values.

:func:`glue` stores a value in the cell's output exactly as ``myst_nb.glue`` does, so the
rendered book can quote it inline (``{glue:text}`\`hymenoptera_acc:.1%\``) and the notebook
tests can read it back from the executed notebook — without requiring myst-nb in Colab.

Example::

    glue("hymenoptera_acc", 0.954)          # shows 0.954 under the cell
    glue("speedup", 12.3, display=False)    # stored, not shown
"""

from __future__ import annotations

from typing import Any

#: The MIME prefix myst-nb uses for glued values that are not displayed.
GLUE_PREFIX = "application/papermill.record/"


def glue(name: str, value: Any, display: bool = True) -> None:
    """Attach ``value`` to the current cell's output under ``name`` (myst-nb's glue format)."""
    from IPython.core.formatters import format_display_data
    from IPython.display import display as ipy_display

    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        # A NumPy or torch scalar: glue the plain Python number, whose text myst-nb can format
        # (`{glue:text}`name:.1%``); numpy 2 would otherwise store "np.float64(0.5)".
        value = value.item()
    mimebundle, metadata = format_display_data(value)
    prefix = "" if display else GLUE_PREFIX
    metadata["scrapbook"] = {"name": name, "mime_prefix": prefix}
    ipy_display({prefix + k: v for k, v in mimebundle.items()}, raw=True, metadata=metadata)


def read_glued(notebook: Any) -> dict[str, str]:
    """All glued values of an executed notebook (an ``nbformat`` node), as their ``text/plain``."""
    values: dict[str, str] = {}
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            meta = output.get("metadata", {}).get("scrapbook")
            if meta:
                values[meta["name"]] = output["data"][meta["mime_prefix"] + "text/plain"]
    return values
