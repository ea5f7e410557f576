"""Keep it true: a model-specific fact in a chapter's prose comes from the run (glue) or names
the model it is about.

The offline build runs EfficientNet-Lite0 and all-MiniLM-L6-v2 where a Colab learner runs
ResNet-18 and BERT, so a parameter count, an accuracy or a layer name typed into the prose is
true of at most one of them. This check reads every chapter's Markdown and every page of
``book/`` (code blocks, maths, glued values and quoted claims removed; the prose inside exercise,
solution and admonition directives kept; ``book/benchmarks.md`` left out, its tables are written
from the results files) and fails on a sentence that contains

* a parameter count (``11.2 M``, ``8.7 k``, ``3 million``),
* an accuracy with a decimal (``86.9 %``), or a whole-number one said to be reached
  (``reaches 95 %``, ``95 % accuracy``),
* a layer name of one backbone (```layer4```, ```fc```, ```blocks.6```, ```conv_head```, …),

unless the sentence names a model or the data set the number is about (or cites the paper the
number comes from, ``{cite}``), or is about chance level.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PAGES = sorted(p for p in (REPO / "book").rglob("*.md") if p.name != "benchmarks.md")

NAMES_A_MODEL = re.compile(
    r"ResNet|EfficientNet|Lite0|BERT|MiniLM|MobileNet|VGG|RoBERTa|ViT|CLIP|GPT|Llama|UniLM|Inception|AlexNet|"
    r"ConvNeXt|ImageNet|\{cite(?::\w+)?\}|chance", re.IGNORECASE)
PARAMETER_COUNT = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?(?:M|k|million)(?![\w-])")
DECIMAL_ACCURACY = re.compile(r"(?<![\w.])\d{1,3}\.\d\s?%")
REACHED_ACCURACY = re.compile(r"(?<![\w.])\d{1,3}\s?%\s+(?:accura|top-1|F1)|"
                              r"(?:accura\w*|reach\w*|scor\w*|achiev\w*|gets?|got)\W+(?:[\w-]+\W+){0,3}?\d{1,3}\s?%",
                              re.IGNORECASE)
LAYER_NAME = re.compile(r"`(?:layer[1-4]|fc|blocks\.\d|conv_head|conv_stem|bn2|classifier|pooler)`")


FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*(.*)$")
PROSE_DIRECTIVE = re.compile(r"\{(?:exercise|solution|admonition|note|tip|warning|important|caution|attention|hint|"
                             r"seealso|dropdown|margin|sidebar|topic|figure|card|tab-item|prf:\w+)\}")


def _prose(markdown: str) -> str:
    """``markdown`` without its code: fenced code blocks go, the prose inside MyST directives such
    as ``{exercise}`` and ``{solution}`` stays (without the fences and ``:option:`` lines)."""
    kept, open_fences = [], []          # open_fences: (fence, is_code) from the outermost in
    for line in markdown.splitlines():
        fence = FENCE.match(line)
        if fence:
            marks, info = fence.groups()
            top = open_fences[-1][0] if open_fences else ""
            if top and marks[0] == top[0] and len(marks) >= len(top) and not info.strip():
                open_fences.pop()
            else:
                in_code = bool(open_fences and open_fences[-1][1])
                open_fences.append((marks, in_code or not PROSE_DIRECTIVE.match(info.strip())))
            kept.append("")
        elif not (open_fences and (open_fences[-1][1] or re.match(r"\s*:[\w-]+:", line))):
            kept.append(line)
    return "\n".join(kept)


def _sentences(markdown: str) -> list[str]:
    text = _prose(markdown)
    text = re.sub(r'\*"[^"\n]*"\*', "QUOTED", text)                          # a claim quoted to be examined
    text = re.sub(r"\{glue(?::\w+)?\}`[^`]*`", "GLUED", text)              # values from the run
    text = re.sub(r"\$\$.*?\$\$|\$[^$\n]*\$", "MATH", text, flags=re.S)
    return [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+|\n\s*\n|\n\|", text) if s.strip()]


def unglued_model_facts(markdown: str) -> list[str]:
    """The sentences of ``markdown`` that state a model-specific number or layer name without
    naming the model (see the module docstring)."""
    return [s for s in _sentences(markdown)
            if not NAMES_A_MODEL.search(s)
            and (PARAMETER_COUNT.search(s) or DECIMAL_ACCURACY.search(s) or REACHED_ACCURACY.search(s)
                 or LAYER_NAME.search(s))]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_model_specific_facts_are_glued_or_name_their_model(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    found = [f"cell {i}: {s[:160]}" for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown"
             for s in unglued_model_facts(cell.source)]
    assert not found, ("model-specific facts typed into the prose (glue them from the run, or name the "
                       "model they are about):\n" + "\n".join(found))


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(REPO / "book")))
def test_book_pages_state_no_unglued_model_facts(path: Path) -> None:
    found = [s[:160] for s in unglued_model_facts(path.read_text(encoding="utf-8"))]
    assert not found, ("model-specific facts typed into a page of the book (name the model they are "
                       "about, or move the number into a chapter that measures it):\n" + "\n".join(found))


@pytest.mark.parametrize("sentence", [
    "The run trains 3.4 M of 4.7 M parameters.",
    "Fine-tuning reaches 95 % on the validation photos.",
    "It gets 88 % accuracy with frozen features.",
    "```{solution} ex-a\n:class: dropdown\n\nThe head alone trains 8.7 k parameters.\n```",
    "Fine-tuning reached 86.9 % against the probe.",
    "Freeze everything up to `layer3` and retrain `layer4`.",
    "Replace `classifier` with a new head.",
])
def test_the_check_catches_a_typed_fact(sentence: str) -> None:
    assert len(unglued_model_facts(sentence)) == 1


@pytest.mark.parametrize("sentence", [
    "ResNet-18 has 11.2 M parameters.",                         # names its model
    "The run trains {glue:text}`n_trainable` parameters ({glue:text}`acc:.1%`).",   # glued
    "BERT-base reaches 93.5 % on SST-2 {cite}`devlin2019bert`.",
    "Chance is 5.9 % with 17 classes.",
    "Hold out 20 % of the split; use $\\lambda = 0.5$.",
    "Crops cover 25–100 % of the image, and 90 % of the mass lies inside.",
    "```python\nprint(f'{acc:.1%} reached 95 %')\n```",
    '- *"95 % accuracy on an image data set."* The number comes from no run.',
    "MovieLens releases range from 100 thousand to 20 million ratings {cite:p}`harper2015movielens`.",
])
def test_the_check_lets_a_true_sentence_pass(sentence: str) -> None:
    assert unglued_model_facts(sentence) == []
