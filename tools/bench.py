"""Benchmarks: what each chapter costs and measures on the machine it runs on.

``make bench`` executes every chapter at CI and at full scale (``python -m tools.book
execute``), then

* ``python -m tools.bench collect --label NAME`` reads the executed notebooks under
  ``_build/executed/<scale>/`` and writes ``bench/results/NAME.json``: the machine, each chapter's
  execution time per scale, the backbone it really used, and its headline numbers (the values
  the chapter glues into its prose);
* ``python -m tools.bench precision --label NAME`` (on a CUDA GPU) fine-tunes chapter 6's text
  model and chapter 5's image backbone with and without bfloat16 mixed precision, times a
  BERT-base-sized training step both ways, and adds the results to ``bench/results/NAME.json``;
* ``python -m tools.bench render`` rewrites the tables of ``book/benchmarks.md``, the time in each
  chapter's header (between ``<!-- bench:time -->`` markers) and the time column of
  ``book/instructors.md`` from every results file, so that the appendix, the headers and the
  guide show the same measurements, never numbers typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

from transfer_utils.errors import ConfigError
from transfer_utils.fileio import atomic_write_json, atomic_write_text

#: The numbers each chapter is about: glued name -> what it measures.
HEADLINES: dict[str, dict[str, str]] = {
    "01_when_transfer_helps.ipynb": {
        "tl_gain_small": "transfer minus scratch, accuracy points, 64 labels (related source)",
        "tl_loss_large": "scratch minus transfer, accuracy points, many labels (unrelated source)",
    },
    "02_loss_and_gradients.ipynb": {
        "l2sp_source": "source accuracy kept with L2-SP",
        "nopen_source": "source accuracy kept without a penalty",
    },
    "03_feature_extraction.ipynb": {
        "ants_sklearn_acc": "ants/bees, frozen backbone + logistic regression",
        "flowers_acc": "Flowers-17, frozen backbone + logistic regression",
        "rt_frozen_acc": "Rotten Tomatoes, frozen MiniLM + logistic regression",
        "speedup_epoch": "cached features: speed-up per epoch (x)",
        "tr_rho": "Spearman correlation, LogME score vs probe accuracy (number)",
        "tr_n": "feature sources ranked by LogME (number)",
    },
    "04_fine_tuning.ipynb": {
        "flowers_scratch_acc": "Flowers-17, from scratch",
        "flowers_frozen_acc": "Flowers-17, frozen backbone",
        "flowers_finetune_acc": "Flowers-17, fine-tuned",
        "ants_finetune_acc": "ants/bees, fine-tuned",
        "bn_train_acc": "batches of 2, frozen BatchNorm in train() mode",
        "bn_eval_acc": "batches of 2, frozen BatchNorm in eval() mode",
        "rob_probe_flowers_val": "Flowers-17, probe (robustness section)",
        "rob_ft_flowers_val": "Flowers-17, fine-tuned from a random head",
        "rob_lpft_flowers_val": "Flowers-17, LP-FT",
        "rob_lpft_ants_val": "ants/bees, LP-FT",
        "rob_wise_best_alpha": "WiSE-FT: alpha with the best Flowers-17 accuracy (number)",
        "rob_wise_best_val": "WiSE-FT: Flowers-17 accuracy at that alpha",
        "rob_wise_best_agree": "WiSE-FT: ImageNet agreement at that alpha",
        "rob_wise_end_agree": "WiSE-FT: ImageNet agreement at alpha = 1",
        "rob_soup_best_single": "model soups: best single run (test half)",
        "rob_soup_uniform": "model soups: uniform soup",
        "rob_soup_greedy": "model soups: greedy soup",
        "rob_soup_ensemble": "model soups: output ensemble",
    },
    "05_resnet_case_study.ipynb": {
        "ours_acc": "ants/bees, chapter 4's recipe",
        "tutorial_acc_best": "ants/bees, PyTorch tutorial's recipe (best epoch)",
        "ours_speedup": "our recipe's speed-up over the tutorial's (x)",
        "flowers_acc": "Flowers-17, chapter 4's recipe",
        "ece_before": "shipped image classifier: ECE before temperature scaling",
        "ece_after": "shipped image classifier: ECE after temperature scaling",
    },
    "06_bert_case_study.ipynb": {
        "frozen_mean_acc": "Rotten Tomatoes, frozen encoder (mean pooling) + logistic regression",
        "ft_plain_acc": "Rotten Tomatoes, fine-tuned (plain PyTorch loop)",
        "ft_trainer_acc": "Rotten Tomatoes, fine-tuned (Hugging Face Trainer)",
        "imdb_headtail_acc": "IMDB at 128 pieces, head+tail truncation, frozen",
        "base_ratio": "time per training step, BERT-base size vs the chapter's model (x)",
        "text_ece_before": "shipped text classifier: ECE before temperature scaling",
        "text_ece_after": "shipped text classifier: ECE after temperature scaling",
        "text_ece_change_sd": "its ECE change: bootstrap standard deviation (number)",
        "text_nll_before": "its test cross-entropy before temperature scaling (number)",
        "text_nll_after": "its test cross-entropy after temperature scaling (number)",
    },
    "07_applications.ipynb": {
        "da_so_target": "Flowers-17 colour -> shifted target, source only",
        "dann_target": "same target, DANN",
        "adabn_target": "same target, AdaBN",
        "kd_plain": "Flowers-17, small student trained on labels",
        "kd_acc": "Flowers-17, small student distilled from the teacher",
        "fs_img5_proto": "Flowers-17, 5-shot prototypes",
        "zs_desc": "Rotten Tomatoes, zero-shot (label descriptions)",
        "fusion_best": "Rotten Tomatoes, best fusion of three models",
    },
    "08_scaling_out.ipynb": {
        "test_acc": "digits 5-9, fine-tuned (the same in all three runs)",
        "single_wall": "one process, seconds including start-up (s)",
        "ddp_wall": "two processes with DDP, seconds including start-up (s)",
        "accelerate_wall": "two processes with accelerate, seconds including start-up (s)",
    },
    "09_parameter_efficient.ipynb": {
        "full_acc": "Rotten Tomatoes subset, full fine-tuning",
        "frozen_acc": "Rotten Tomatoes subset, frozen encoder + head",
        "lora_acc": "Rotten Tomatoes subset, LoRA r=8 on query and value (peft)",
        "hand_acc": "Rotten Tomatoes subset, LoRA r=8 built by hand",
        "adapter_acc": "Rotten Tomatoes subset, bottleneck adapters (Houlsby)",
        "lora_share": "LoRA r=8: share of parameters trained",
    },
}

SCALES = ("ci", "full")
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _repo() -> Path:
    return Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = found.group(1).strip() if found else cpu
    memory = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "memory_gib": memory,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


def _outputs_text(nb: Any) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
    return "\n".join(parts)


def collect(label: str, executed: Path | None = None, out_dir: Path | None = None) -> Path:
    """Write ``<out_dir>/<label>.json`` from the executed notebooks of every scale present.

    A chapter (or a scale of it) that was not executed this time keeps what ``<label>.json`` already
    held, with the digest of the version it measured (``source_sha256`` per scale), so that the
    headers can say which measurements are of today's chapter and which are older. So does an executed
    copy that ``timings.json`` does not list: it ran side by side with another chapter, or failed, and
    its time is not its own (:func:`tools.book.execute`); it is named, and left out."""
    import nbformat

    from transfer_utils.report import read_glued

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", label):
        raise ConfigError(f"label {label!r}: use letters, digits, '.', '_' or '-' (it becomes a file name)")
    executed = executed or _repo() / "_build" / "executed"
    out_dir = out_dir or _repo() / "bench" / "results"
    target = out_dir / f"{label}.json"
    previous = json.loads(target.read_text()) if target.is_file() else {}
    chapters: dict[str, dict[str, Any]] = previous.get("chapters", {})
    for entry in chapters.values():  # results files before per-scale digests: one digest (or none) for both
        if not isinstance(entry.get("source_sha256"), dict):
            old_digest = entry.get("source_sha256")
            entry["source_sha256"] = {s: old_digest for s in entry.get("seconds", {}) if old_digest}
    found = False
    for scale in SCALES:
        timings_file = executed / scale / "timings.json"
        if not timings_file.is_file():
            continue
        timings = json.loads(timings_file.read_text())
        for name, headlines in HEADLINES.items():
            path = executed / scale / name
            if not path.is_file():
                continue
            if name not in timings:
                print(f"[bench] {scale}/{name}: not timed one at a time (timings.json does not list it); "
                      f"its earlier entry is kept. Run `python -m tools.book execute --scale {scale} --only {name}`",
                      flush=True)
                continue
            nb = nbformat.read(path, as_version=4)
            glued = read_glued(nb)
            backbone = re.search(r"^(?:backbone|text model): (\S+)", _outputs_text(nb), re.M)
            entry = chapters.setdefault(name, {"seconds": {}, "backbone": {}, "values": {}})
            entry["seconds"][scale] = round(float(timings[name]), 1)
            entry["backbone"][scale] = backbone.group(1) if backbone else None
            entry["values"][scale] = {k: float(glued[k]) for k in headlines if k in glued}
            entry.setdefault("source_sha256", {})[scale] = chapter_digest(path)   # the version that ran
            found = True
    if not found:
        raise ConfigError(f"no executed chapters under {executed}: run `python -m tools.book execute "
                          "--scale ci` (and --scale full) first, or `make bench`")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"label": label, "machine": machine(), "chapters": dict(sorted(chapters.items()))}
    if "precision" in previous:  # keep what `precision` measured on this machine
        results["precision"] = previous["precision"]
    return atomic_write_json(target, results)


def mixed_precision(label: str, out_dir: Path | None = None, seed: int = 0) -> Path:
    """Measure mixed precision against full precision on this machine's CUDA GPU.

    The same fine-tuning runs as chapter 6 (Rotten Tomatoes, its recipe, one epoch) and chapter 5
    (Flowers-17, its recipe, 3 epochs), once with ``amp=False`` and once with ``amp=True``; plus the
    time of a training step of a BERT-base-sized model (random weights) at batches of 32 x 64 and
    128 x 128 pieces.
    The results go into ``<out_dir>/<label>.json`` under ``"precision"``.
    """
    import copy
    import time

    import torch
    from torch.utils import benchmark
    from torch.utils.data import DataLoader
    from transformers import AutoModelForSequenceClassification, BertConfig

    from transfer_utils import assets, config, data, evaluate, models, recipes, text

    if not torch.cuda.is_available():
        raise ConfigError("mixed precision is measured on a CUDA GPU and this machine has none: run this on a GPU")
    device = torch.device("cuda")
    offline = bool(config.resolve_offline("auto"))
    rows: list[dict[str, Any]] = []

    def timed(fn: Any) -> tuple[Any, float]:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    # Chapter 6: text fine-tuning.
    rt = data.load_text_dataset("rotten_tomatoes", offline=offline, seed=seed)
    tokenizer, probe, used = models.create_text_classifier("bert-base-uncased", num_labels=2, offline=offline)
    lr = 3e-5 if probe.config.hidden_size >= 768 else 1e-4
    del probe
    model_id = assets.pretrained_source(used, offline=offline)  # the hub id, or offline the verified local copy
    recipe = recipes.FinetuneConfig(epochs=1, batch_size=32, head_lr=lr, backbone_lr=lr, lr_decay=1.0,
                                    warmup_fraction=0.1, decay="linear", weight_decay=0.0, clip_grad_norm=1.0,
                                    frozen_bn_eval=False)
    collate = text.TextCollator(tokenizer, max_length=64)
    train_ds = text.TextClassificationDataset(rt.train_texts, rt.train_labels)
    test_loader = DataLoader(text.TextClassificationDataset(rt.test_texts, rt.test_labels), batch_size=128,
                             collate_fn=collate)
    warm_up = text.TextClassificationDataset(rt.train_texts[:256], rt.train_labels[:256])
    for amp in (False, True):  # untimed: CUDA and cuBLAS initialise lazily, once per precision
        model = AutoModelForSequenceClassification.from_pretrained(model_id, num_labels=2, local_files_only=offline)
        recipes.finetune(model, warm_up, None, recipe, device=device, seed=seed, collate_fn=collate, amp=amp)
    for amp in (False, True):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(model_id, num_labels=2, local_files_only=offline)
        _, seconds = timed(lambda: recipes.finetune(model, train_ds, None, recipe, device=device, seed=seed,
                                                    collate_fn=collate, amp=amp))
        acc = evaluate.evaluate(model, test_loader, device=device).accuracy
        rows.append({"task": "Rotten Tomatoes, fine-tune 1 epoch", "model": used, "amp": amp,
                     "seconds": round(seconds, 2), "accuracy": acc})
        del model

    # A BERT-base-sized step (random weights: the time does not depend on them), at the chapter's batch
    # (32 sentences x 64 pieces) and at a batch that keeps a large GPU busy (128 x 128).
    base_cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                          intermediate_size=3072, num_labels=2)
    for (size, length), amp in [(shape, amp) for shape in ((32, 64), (128, 128)) for amp in (False, True)]:
        batch = {k: v.to(device) for k, v in tokenizer(rt.train_texts[:size], padding="max_length", truncation=True,
                                                       max_length=length, return_tensors="pt").items()}
        labels = torch.tensor(rt.train_labels[:size], device=device)
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(base_cfg).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def step() -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = model(**batch, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()

        # torch.utils.benchmark warms up, synchronises CUDA around the timed runs and reports per run
        seconds = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads()).timeit(20).mean
        rows.append({"task": f"BERT-base-sized training step (batch {size} x {length})", "model": "bert-base size, random",
                     "amp": amp, "seconds": round(seconds, 4), "accuracy": None})
        del model, opt

    # Chapter 5: image fine-tuning on Flowers-17.
    backbone = models.create_backbone("resnet18", offline=offline)
    prep = backbone.preprocessing
    root = assets.fetch_dataset("flowers17", offline=offline)
    cache = assets.data_home() / "decoded"
    split = {name: data.decode_images(data.ImageFolderDataset(root / name), prep.resize_size, preprocessing=prep,
                                      cache_dir=cache, tag=f"flowers17-{name}") for name in ("train", "val")}
    stage_names = list(models.stages(backbone.model))
    image_recipe = recipes.FinetuneConfig(epochs=3, freeze_until=stage_names[-3], backbone_lr=1e-4)
    val_loader = DataLoader(split["val"].with_transform(prep.tensor_transform(train=False)), batch_size=64)
    for amp in (False, True):
        torch.manual_seed(seed)
        model = models.replace_head(copy.deepcopy(backbone.model), len(split["train"].classes))
        _, seconds = timed(lambda: recipes.finetune(model, split["train"].with_transform(prep.tensor_transform(train=True)),
                                                    None, image_recipe, device=device,
                                                    seed=seed, amp=amp))
        acc = evaluate.evaluate(model, val_loader, device=device).accuracy
        rows.append({"task": "Flowers-17, fine-tune 3 epochs", "model": backbone.name, "amp": amp,
                     "seconds": round(seconds, 2), "accuracy": acc})
        del model

    out_dir = out_dir or _repo() / "bench" / "results"
    target = out_dir / f"{label}.json"
    results = json.loads(target.read_text()) if target.is_file() else {"label": label, "chapters": {}}
    results["machine"] = machine()
    results["precision"] = rows
    return atomic_write_json(target, results)


def _fmt(value: float | None, percent: bool) -> str:
    if value is None:
        return "—"
    if percent:
        return f"{value:.1%}"
    return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.1f}"


def render_tables(results: list[dict[str, Any]]) -> str:
    """Markdown tables (machine, time per chapter and scale, headline numbers) for each results file."""
    lines: list[str] = []
    for res in sorted(results, key=lambda r: r["label"]):
        m = res["machine"]
        lines += [f"### {res['label']}", "",
                  f"{m['cpu']}, {m['cpu_count']} cores ({m['torch_threads']} torch threads), "
                  f"{m['memory_gib']} GiB; GPU: {m['gpu'] or 'none'}; Python {m['python']}, torch {m['torch']}.", "",
                  "| chapter | model used | CI scale (s) | full scale (s) |", "|---|---|---:|---:|"]
        for name, entry in res["chapters"].items():
            used = entry["backbone"].get("full") or entry["backbone"].get("ci") or "—"
            lines.append(f"| {Path(name).stem} | {used} | {_fmt(entry['seconds'].get('ci'), False)} "
                         f"| {_fmt(entry['seconds'].get('full'), False)} |")
        lines += ["", "| chapter | measure | CI scale | full scale |", "|---|---|---:|---:|"]
        for name, entry in res["chapters"].items():
            for key, what in HEADLINES.get(name, {}).items():
                percent = not any(w in what for w in ("(x)", "(s)", "(number)", "points"))
                vals = [entry["values"].get(s, {}).get(key) for s in SCALES]
                if "points" in what:
                    vals = [None if v is None else 100 * v for v in vals]
                lines.append(f"| {Path(name).stem} | {what} | {_fmt(vals[0], percent)} | {_fmt(vals[1], percent)} |")
        if res.get("precision"):
            lines += ["", "Mixed precision (bfloat16 autocast) against full precision, same run otherwise:", "",
                      "| run | model | precision | seconds | accuracy | speed-up |", "|---|---|---|---:|---:|---:|"]
            fp32 = {r["task"]: r["seconds"] for r in res["precision"] if not r["amp"]}
            for r in res["precision"]:
                speedup = f"{fp32[r['task']] / r['seconds']:.2f}x" if r["amp"] and r["task"] in fp32 else ""
                lines.append(f"| {r['task']} | {r['model']} | {'bf16 autocast' if r['amp'] else 'fp32'} "
                             f"| {r['seconds']:,.3g} | {_fmt(r['accuracy'], True)} | {speedup} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render(results_dir: Path | None = None, page: Path | None = None) -> Path:
    """Rewrite the part of ``book/benchmarks.md`` between the bench markers from every results file."""
    results_dir = results_dir or _repo() / "bench" / "results"
    page = page or _repo() / "book" / "benchmarks.md"
    files = sorted(results_dir.glob("*.json"))
    if not files:
        raise ConfigError(f"no results in {results_dir}: run `python -m tools.bench collect --label NAME`")
    text = page.read_text()
    if START not in text or END not in text:
        raise ConfigError(f"{page} lacks the markers {START} and {END}")
    tables = render_tables([json.loads(f.read_text()) for f in files])
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    page.write_text(f"{head}{START}\n{tables}{END}{tail}")
    return page


# ---- chapter times: one source (the results files) for the chapter headers and the instructors' guide
TIME_START, TIME_END = "<!-- bench:time -->", "<!-- /bench:time -->"
TIME_ROW = re.compile(r"^(\| \{doc\}`\.\./notebooks/(?P<stem>[^`]+)` \|(?:[^|]*\|){2})(?P<time>[^|]*)(\|.*)$", re.M)


def _minutes(seconds: float | None) -> str:
    """``"about 8½ min"`` / ``"under a minute"`` / ``"not measured"`` for a duration in seconds."""
    if seconds is None:
        return "not measured"
    if seconds < 60:
        return "under a minute"
    halves = round(seconds / 30)
    whole, half = divmod(halves, 2)
    return f"about {whole}{'½' if half else ''} min"


def _cpu_and_gpu(results: list[dict[str, Any]], chapter: str | None = None, notebook: Path | None = None
                 ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The CPU and the GPU results file that measured ``chapter`` (any, if None): one that measured
    today's ``notebook`` if there is one, else the first by label."""
    ordered = [r for r in sorted(results, key=lambda r: r["label"]) if chapter is None or chapter in r["chapters"]]
    if chapter is not None and notebook is not None:  # stable sort: a full-scale time of today's version first
        ordered.sort(key=lambda r: not (_which_version(r["chapters"][chapter], notebook) == "measured on this version"
                                        and r["chapters"][chapter]["seconds"].get("full") is not None))
    cpu = next((r for r in ordered if not r["machine"].get("gpu")), None)
    gpu = next((r for r in ordered if r["machine"].get("gpu")), None)
    return cpu, gpu


def chapter_digest(path: Path) -> str | None:
    """sha256 of a chapter's code (not its prose, not its outputs): which version of it a measurement
    timed. A change of wording keeps the digest; a change of code changes it.

    The same for the chapter in ``notebooks/`` and for an executed copy of that version (the cell
    papermill injects is left out, the commit pinned in the Colab set-up cell ignored), so
    :func:`collect` digests the copy that ran."""
    import hashlib

    import nbformat

    if not path.is_file():
        return None
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code"  # what runs; papermill adds the injected parameters
             and "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    # the executed copies' Colab set-up cell installs git+<url>@<commit> (tools.book pins it): not a change
    sources = [re.sub(r'(git\+[^"\s]+?)@[0-9a-f]{7,40}"', r'\1"', c.source) for c in cells]
    return hashlib.sha256("\n".join(sources).encode()).hexdigest()


def _which_version(entry: dict[str, Any], notebook: Path | None) -> str:
    """How the measured chapter relates to today's: the same, an earlier version, or unknown."""
    recorded = entry.get("source_sha256")
    if isinstance(recorded, str):  # a results file from before per-scale digests
        recorded = {scale: recorded for scale in entry.get("seconds", {})}
    digests = [(recorded or {}).get(scale) for scale, sec in entry.get("seconds", {}).items() if sec is not None]
    if notebook is None or not any(digests):
        return "when last benchmarked"
    current = chapter_digest(notebook)  # a scale without a digest was measured on some earlier version
    if all(d == current for d in digests):
        return "measured on this version"
    if any(d == current for d in digests):
        return "partly measured on an earlier version of this chapter"
    return "measured on an earlier version of this chapter"


def time_phrase(results: list[dict[str, Any]], chapter: str, notebook: Path | None = None) -> str:
    """The generated "Time" sentence of ``chapter``'s header, from the results files."""
    cpu, gpu = _cpu_and_gpu(results, chapter, notebook)
    parts = []
    if cpu is not None and chapter in cpu["chapters"]:
        sec = cpu["chapters"][chapter]["seconds"]
        m = cpu["machine"]
        threads = m.get("torch_threads")
        how = f", {threads} torch thread{'s' if threads != 1 else ''}" if threads and threads != m["cpu_count"] else ""
        parts.append(f"{_minutes(sec.get('full'))} at full scale and {_minutes(sec.get('ci'))} at CI scale on "
                     f"{m['cpu_count']} CPU cores{how} ({_which_version(cpu['chapters'][chapter], notebook)}: "
                     f"`bench/results/{cpu['label']}.json`)")
    else:
        parts.append("not yet measured on a CPU (run `make bench`)")
    if gpu is not None and chapter in gpu["chapters"]:
        sec = gpu["chapters"][chapter]["seconds"]
        parts.append(f"{_minutes(sec.get('full'))} at full scale on one {gpu['machine']['gpu']} "
                     f"({_which_version(gpu['chapters'][chapter], notebook)}: `bench/results/{gpu['label']}.json`)")
    return "; ".join(parts) + "."


def instructor_time(results: list[dict[str, Any]], chapter: str, notebook: Path | None = None) -> str:
    """The guide's run-time cell of ``chapter``: the same measurement as its header's."""
    cpu, _ = _cpu_and_gpu(results, chapter, notebook)
    if cpu is None or chapter not in cpu["chapters"]:
        return "not yet measured"
    return _minutes(cpu["chapters"][chapter]["seconds"].get("full"))


def render_times(results_dir: Path | None = None, notebooks: Path | None = None,
                 guide: Path | None = None) -> list[Path]:
    """Rewrite each chapter header's time (between the ``bench:time`` markers) and the time column
    of the instructors' guide from the results files; return the files that changed."""
    import nbformat

    results_dir = results_dir or _repo() / "bench" / "results"
    notebooks = notebooks or _repo() / "notebooks"
    guide = guide or _repo() / "book" / "instructors.md"
    results = [json.loads(f.read_text()) for f in sorted(results_dir.glob("*.json"))]
    changed = []
    for path in sorted(notebooks.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        head = nb.cells[0].source
        if TIME_START not in head or TIME_END not in head:
            raise ConfigError(f"{path.name}'s first cell lacks the markers {TIME_START} … {TIME_END} after **Time**:")
        before, rest = head.split(TIME_START, 1)
        _, after = rest.split(TIME_END, 1)
        new = f"{before}{TIME_START}{time_phrase(results, path.name, path)}{TIME_END}{after}"
        if new != head:
            nb.cells[0].source = new
            atomic_write_text(path, nbformat.writes(nb) + "\n")
            changed.append(path)
    text = guide.read_text()
    def row(m: re.Match[str]) -> str:
        name = m.group("stem") + ".ipynb"
        return f"{m.group(1)} {instructor_time(results, name, notebooks / name)} {m.group(4)}"

    new_text = TIME_ROW.sub(row, text)
    if new_text != text:
        atomic_write_text(guide, new_text)
        changed.append(guide)
    return changed


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m tools.bench {collect,render}``."""
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_collect = sub.add_parser("collect", help="write bench/results/LABEL.json from the executed chapters")
    p_collect.add_argument("--label", required=True, help="a name for this machine, e.g. cpu-2core")
    p_prec = sub.add_parser("precision", help="(CUDA) fine-tune with and without mixed precision")
    p_prec.add_argument("--label", required=True, help="the results file to add to, e.g. h100")
    sub.add_parser("render", help="rewrite the tables of book/benchmarks.md, the chapter headers' times and "
                                  "the instructors' guide's time column")
    args = parser.parse_args(argv)
    if args.cmd == "collect":
        print(f"[bench] wrote {collect(args.label)}")
    elif args.cmd == "precision":
        print(f"[bench] wrote {mixed_precision(args.label)}")
    else:
        print(f"[bench] wrote {render()}")
        for path in render_times():
            print(f"[bench] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
