"""The book's build tooling: not part of the learner's package.

``pip install .`` installs :mod:`transfer_utils` only (``pyproject.toml`` lists it alone); these
modules run from the repository checkout (``python -m tools.book ...``, the ``Makefile``, the
tests):

* :mod:`tools.book` — execute the chapters once and build the book from those executions
* :mod:`tools.bench` — the benchmarks appendix (collect and render the measured chapter times)
* :mod:`tools.web_assets` — files the rendered book loads in the browser (mermaid.js), verified

They may import :mod:`transfer_utils`; nothing in :mod:`transfer_utils` imports them
(``tests/test_layers.py`` checks it).
"""
