"""Keep it true: a model-specific fact in a chapter's prose comes from the run (glue) or names
the model it is about.

The offline build runs EfficientNet-Lite0 and all-MiniLM-L6-v2 where a Colab learner runs
ResNet-18 and BERT, so a parameter count, an accuracy or a layer name typed into the prose is
true of at most one of them. This check reads every chapter's Markdown (code blocks, maths and
glued values removed) and fails on a sentence that contains

* a parameter count (``11.2 M``, ``8.7 k``, ``3 million``),
* an accuracy with a decimal (``86.9 %``),
* a layer name of one backbone (```layer4```, ```fc```, ```blocks.6```, ```conv_head```, …),

unless the sentence names a model (or cites the paper the number comes from, ``{cite}``), or
is about chance level.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))

NAMES_A_MODEL = re.compile(
    r"ResNet|EfficientNet|Lite0|BERT|MiniLM|MobileNet|VGG|RoBERTa|ViT|CLIP|GPT|Llama|UniLM|Inception|AlexNet|"
    r"ConvNeXt|\{cite\}|chance", re.IGNORECASE)
PARAMETER_COUNT = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?(?:M|k|million)(?![\w-])")
DECIMAL_ACCURACY = re.compile(r"(?<![\w.])\d{1,3}\.\d\s?%")
LAYER_NAME = re.compile(r"`(?:layer[1-4]|fc|blocks\.\d|conv_head|conv_stem|bn2|classifier|pooler)`")


def _sentences(markdown: str) -> list[str]:
    text = re.sub(r"```.*?```|~~~.*?~~~", " ", markdown, flags=re.S)        # code and directive blocks
    text = re.sub(r"\{glue(?::\w+)?\}`[^`]*`", "GLUED", text)              # values from the run
    text = re.sub(r"\$\$.*?\$\$|\$[^$\n]*\$", "MATH", text, flags=re.S)
    return [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+|\n\s*\n|\n\|", text) if s.strip()]


def unglued_model_facts(markdown: str) -> list[str]:
    """The sentences of ``markdown`` that state a model-specific number or layer name without
    naming the model (see the module docstring)."""
    return [s for s in _sentences(markdown)
            if not NAMES_A_MODEL.search(s)
            and (PARAMETER_COUNT.search(s) or DECIMAL_ACCURACY.search(s) or LAYER_NAME.search(s))]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_model_specific_facts_are_glued_or_name_their_model(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    found = [f"cell {i}: {s[:160]}" for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown"
             for s in unglued_model_facts(cell.source)]
    assert not found, ("model-specific facts typed into the prose (glue them from the run, or name the "
                       "model they are about):\n" + "\n".join(found))


@pytest.mark.parametrize("sentence", [
    "The run trains 3.4 M of 4.7 M parameters.",
    "Fine-tuning reached 86.9 % against the probe.",
    "Freeze everything up to `layer3` and retrain `layer4`.",
    "Replace `classifier` with a new head.",
])
def test_the_check_catches_a_typed_fact(sentence: str) -> None:
    assert unglued_model_facts(sentence) == [sentence]


@pytest.mark.parametrize("sentence", [
    "ResNet-18 has 11.2 M parameters.",                         # names its model
    "The run trains {glue:text}`n_trainable` parameters ({glue:text}`acc:.1%`).",   # glued
    "BERT-base reaches 93.5 % on SST-2 {cite}`devlin2019bert`.",
    "Chance is 5.9 % with 17 classes.",
    "Hold out 20 % of the split; use $\\lambda = 0.5$.",
])
def test_the_check_lets_a_true_sentence_pass(sentence: str) -> None:
    assert unglued_model_facts(sentence) == []
