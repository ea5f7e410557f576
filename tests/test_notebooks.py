"""Each chapter: committed clean, structured as the house style asks, and executed end to end
at CI scale with the numbers it reports checked against honest thresholds."""

from __future__ import annotations

import math
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from transfer_utils.recipes import FinetuneConfig
from transfer_utils.report import read_glued

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_chapters() -> None:
    assert NOTEBOOKS, "no notebooks found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {i} has outputs: clear them before committing"
            assert cell.execution_count is None, f"cell {i} has an execution count"
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_house_structure(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    header = nb.cells[0].source
    for needed in ("What you will learn", "Prerequisites", "**Time**"):
        assert needed in header, f"the header lacks {needed!r}"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell must be tagged 'parameters'"
    assert 'SCALE = "full"' in params[0].source and 'OFFLINE = "auto"' in params[0].source
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "## Exercises" in text and "## Summary" in text
    assert text.count("{exercise}") >= 3 and text.count(":class: dropdown") >= text.count("{exercise}")


HIDDEN = {"hide-input", "hide-cell", "remove-cell", "remove-input"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_visible_code_cells_stay_short(path: Path) -> None:
    """A code cell the reader sees teaches one step: at most 30 lines, unless its first line says why
    it is longer ("... on purpose ..."). Bookkeeping belongs in hidden-input cells."""
    nb = nbformat.read(path, as_version=4)
    long = [f"cell {i}: {len(c.source.splitlines())} lines, starting {c.source.splitlines()[0][:60]!r}"
            for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and not HIDDEN & set(c.metadata.get("tags", []))
            and len(c.source.splitlines()) > 30 and "on purpose" not in c.source.splitlines()[0]]
    assert not long, "split these cells, or move their bookkeeping into a hidden-input cell:\n" + "\n".join(long)


TIME_BUDGET = re.compile(r"^\s*assert\b.*\b(?:elapsed|\w*minutes|\w*seconds)\s*[<>]=?\s*[\d(]")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_chapter_asserts_a_time_budget(path: Path) -> None:
    """How long a chapter takes depends on the machine and on what else runs on it: a budget in an
    assertion turns "slow" into "failed". Times are measured and shown (header, benchmarks appendix)."""
    nb = nbformat.read(path, as_version=4)
    budgets = [f"cell {i}: {line.strip()}" for i, c in enumerate(nb.cells) if c.cell_type == "code"
               for line in c.source.splitlines() if TIME_BUDGET.match(line)]
    assert not budgets, "time budgets asserted in the chapter:\n" + "\n".join(budgets)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_setup_installs_from_the_configured_repository(path: Path) -> None:
    repo_url = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]["url"]
    nb = nbformat.read(path, as_version=4)
    setup = next(c for c in nb.cells if c.cell_type == "code")
    assert '"google.colab" in sys.modules' in setup.source
    assert f"git+{repo_url}" in setup.source


def _outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif "text/plain" in out.get("data", {}):
                parts.append(out["data"]["text/plain"])
    return "\n".join(parts)


@pytest.mark.notebooks
def test_every_notebook_executes_without_errors(executed_notebooks: dict[str, Path]) -> None:
    assert sorted(executed_notebooks) == [p.name for p in NOTEBOOKS]
    for name, path in executed_notebooks.items():
        nb = nbformat.read(path, as_version=4)
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
        assert not errors, f"{name}: {errors[0]['ename']}: {errors[0]['evalue']}"
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and 'SCALE = "ci"' in injected[0].source
        # the chapter's self-check cells ran in its kernel, as shipped (no answer filled in)
        assert "❌ Not yet (" in _outputs_text(nb), f"{name}: no self-check cell ran"


@pytest.mark.notebooks
def test_feature_extraction_results(executed_notebooks: dict[str, Path]) -> None:
    nb = nbformat.read(executed_notebooks["03_feature_extraction.ipynb"], as_version=4)
    raw = read_glued(nb)
    glued = {k: float(v) for k, v in raw.items() if _is_number(v)}
    # A real ImageNet backbone separates ants from bees and 17 flower species from 16 images per class.
    assert glued["ants_sklearn_acc"] >= 0.80
    assert glued["ants_torch_acc"] >= 0.80
    assert glued["flowers_acc"] >= 0.80
    # The PyTorch head and scikit-learn solve the same convex problem.
    assert glued["ants_agreement"] >= 0.85
    # The cache must pay off, per epoch by a wide margin.
    assert glued["speedup_epoch"] > 20 and glued["speedup_total"] > 2
    # Transfer helps most with few labels: the frozen encoder beats TF-IDF at 100 sentences.
    assert glued["rt_small_n"] == 100 and glued["rt_small_gain"] > 0.02
    assert 0.6 < glued["rt_frozen_acc"] < 0.95
    # Choosing what to transfer: the cheap score ranks the candidates much as the probes do, and the
    # random-weight baseline scores far below the pretrained features on both (what the prose says).
    # The candidates: the backbone's 5 stages (models.stages, the same count on every image backbone; the
    # last one's average is the pooled features, checked in the chapter), MobileNetV2 and the random-weight
    # baseline. (Until this was checked, the pooled features were also listed as an eighth, duplicate candidate.)
    assert glued["tr_n"] == 7 and glued["tr_rho"] > 0.5
    assert raw["tr_last_is_pooled"] == "True"
    assert glued["tr_random_acc"] < glued["tr_pooled_acc"] - 0.3
    assert glued["tr_random_logme"] < glued["tr_pooled_logme"]
    # With every label the comparison is what the verdict in the prose says it is.
    lead, noise, verdict = glued["rt_all_lead"], glued["rt_all_noise"], _glued_markdown(nb, "rt_all_verdict")
    expected = "overtakes" if lead > noise else "still trails" if -lead > noise else "catches up"
    assert expected in verdict, (lead, noise, verdict)
    assert glued["rt_small_gain"] > -lead                  # the encoder's edge is largest with few labels
    assert glued["rt_bow_features"] > 10 * glued["rt_dim"]


@pytest.mark.notebooks
@pytest.mark.parametrize("name,prefix,default", [
    ("03_feature_extraction.ipynb", "backbone: ", "resnet18"),
    ("04_fine_tuning.ipynb", "backbone: ", "resnet18"),
    ("05_resnet_case_study.ipynb", "backbone: ", "resnet18"),
    ("06_bert_case_study.ipynb", "text model: ", "google/bert_uncased_L-4_H-512_A-8"),  # the CPU default
    ("07_applications.ipynb", "backbone: ", "resnet18"),
    ("09_parameter_efficient.ipynb", "text model: ", "google/bert_uncased_L-4_H-512_A-8"),  # the CPU default
])
def test_substitutions_are_announced(executed_notebooks: dict[str, Path], name: str, prefix: str, default: str) -> None:
    """Whenever a notebook ran with another model than its default, it said so."""
    nb = nbformat.read(executed_notebooks[name], as_version=4)
    text = _outputs_text(nb)
    used = next(line[len(prefix):].split()[0] for line in text.splitlines() if line.startswith(prefix))
    if used != default:
        assert "OFFLINE MODE is ON" in text
        assert f"SUBSTITUTION: '{default}'" in text and f"Using '{used}'" in text


@pytest.mark.notebooks
def test_fine_tuning_results(executed_notebooks: dict[str, Path]) -> None:
    """The orderings chapter 4 claims, on the CI subset (8 flowers and 24 ants/bees per class)."""
    nb = nbformat.read(executed_notebooks["04_fine_tuning.ipynb"], as_version=4)
    glued = read_glued(nb)
    num = {k: float(v) for k, v in glued.items()
           if k not in ("resume_identical", "backbone_name") and not v.startswith("<")}
    # Pretrained >> scratch, both pretrained regimes, both datasets.
    for key in ("flowers", "ants"):
        for regime in ("finetune", "frozen"):
            assert num[f"{key}_{regime}_acc"] >= num[f"{key}_scratch_acc"] + 0.2, (key, regime)
    # One image per class: scratch is at chance (1/17), pretrained features are not.
    assert num["curve_scratch_smallest"] < 0.12 and min(num["curve_frozen_smallest"], num["curve_finetune_smallest"]) > 0.15
    # Ants and bees are ImageNet classes: the untrained original head already separates them.
    assert num["ants_zero_shot"] > 0.75
    # Frozen BatchNorm left in train() mode drifts (the eval() case is asserted to be 0 in the chapter).
    assert num["bn_train_drift"] > 0.1
    # Forgetting: restoring BatchNorm statistics recovers much of it; in the weights, the aggressive
    # run forgets most and L2-SP least.
    assert num["forget_recipe_restored"] > num["forget_recipe_agree"]
    # The probe's agreement and accuracy move in steps of one photo (1/n), as the prose says.
    n = num["probe_n"]
    assert n >= 10 and num["probe_step"] == pytest.approx(1 / n)
    for key in ("forget_aggr_agree", "forget_recipe_agree", "forget_l2sp_agree", "probe_original_acc"):
        assert num[key] * n == pytest.approx(round(num[key] * n)), key
    # Gradient accumulation does not reproduce a large batch under BatchNorm in train() mode;
    # in eval() mode (stored statistics) it does, to rounding.
    assert num["accum_gap_train"] > 1e-2 and num["accum_gap_eval"] < 1e-5
    assert num["forget_aggr_kl_restored"] > num["forget_recipe_kl_restored"] > num["forget_l2sp_kl_restored"]
    assert glued["resume_identical"] == "True"
    # The regime table's counts come from the run: fine-tuning trains the whole network, the frozen
    # regime only a linear head (17 classes), hundreds of times fewer weights.
    assert num["params_all_m"] * 1e3 > 100 * num["params_head_k"] > 0
    # "The frozen backbone also costs a fraction of the time"; "training only the last stage and the
    # head is ... times faster than training everything".
    assert num["flowers_frozen_seconds"] < num["flowers_ft_seconds"] and num["depth_speedup"] > 1
    # The recipe's learning rates quoted in the prose are the package's defaults (small steps for the
    # pretrained layers, larger for the new head).
    assert num["recipe_backbone_lr"] == FinetuneConfig().backbone_lr < num["recipe_head_lr"] == FinetuneConfig().head_lr
    # The plain-PyTorch loop of the chapter's first section is a working fine-tuning, not a sketch.
    assert num["plain_acc"] >= num["flowers_scratch_acc"] + 0.2
    photos = 100 / num["val_image_points"]   # "one validation photo is ... points"
    assert photos == pytest.approx(round(photos)) and photos >= 17
    # Verdicts in words match the numbers they summarise.
    agree = abs(num["plain_vs_recipe"]) <= 3
    assert _glued_markdown(nb, "plain_verdict").startswith("agree") == agree, num["plain_vs_recipe"]
    for key, dataset in (("flowers", "Flowers-17"), ("ants", "ants vs bees")):
        gap = num[f"{key}_finetune_acc"] - num[f"{key}_frozen_acc"]
        expected = "tie" if abs(gap) < 0.005 else ("fine-tuning is ahead" if gap > 0 else "the frozen backbone is ahead")
        assert expected in _glued_markdown(nb, f"verdict_{key}"), (key, gap)
        assert num[f"{key}_pretrain_gain"] == pytest.approx(
            100 * (min(num[f"{key}_finetune_acc"], num[f"{key}_frozen_acc"]) - num[f"{key}_scratch_acc"]))
    # Robust fine-tuning (LP-FT, WiSE-FT, soups). The probe leaves the backbone untouched: full agreement;
    # the blurred, noisy copies are a real shift for it; the probed head starts with a far lower loss.
    for key in ("ants", "flowers"):
        assert num[f"rob_probe_{key}_agree"] == 1.0
        assert num[f"rob_probe_{key}_shift"] < num[f"rob_probe_{key}_val"]
        assert num[f"rob_loss_probed_{key}"] < 0.5 * num[f"rob_loss_random_{key}"]
    # "Plain fine-tuning (the three-regimes table's runs)": the same models, kept.
    for key in ("ants", "flowers"):
        assert num[f"rob_ft_{key}_val"] == pytest.approx(num[f"{key}_finetune_acc"])
    # WiSE-FT: alpha = 1 is the LP-FT run itself; the best alpha is the best point of the line.
    for short in ("val", "shift", "agree"):
        assert num[f"rob_wise_end_{short}"] == pytest.approx(num[f"rob_lpft_flowers_{short}"])
    assert num["rob_wise_best_val"] >= max(num["rob_wise_end_val"], num["rob_probe_flowers_val"], num["rob_wise_mid_val"])
    assert num["rob_wise_best_alpha"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    # The verdicts say what the numbers say.
    lost = [k for k in ("ants", "flowers") if num[f"rob_ft_{k}_val"] < num[f"rob_probe_{k}_val"]]
    fixed = all(num[f"rob_lpft_{k}_val"] >= num[f"rob_probe_{k}_val"] for k in lost)
    lpft_verdict = _glued_markdown(nb, "rob_lpft_verdict")
    assert ("nothing to fix" in lpft_verdict) == (not lost), lpft_verdict
    assert ("**is** the fix" in lpft_verdict) == (bool(lost) and fixed), lpft_verdict
    assert ("**not** the fix" in lpft_verdict) == (bool(lost) and not fixed), lpft_verdict
    closed = [k for k in lost if num[f"rob_lpft_{k}_val"] >= num[f"rob_probe_{k}_val"]]
    assert ("closes the gap on" in lpft_verdict) == (0 < len(closed) < len(lost)), lpft_verdict   # one set of two
    less = sum(num[f"rob_moved1_lpft_{k}"] < num[f"rob_moved1_ft_{k}"] for k in ("ants", "flowers"))
    assert _glued_markdown(nb, "rob_moved_verdict").startswith({2: "on both", 1: "on ", 0: "on neither"}[less])
    assert ("keeps the averaged" in _glued_markdown(nb, "rob_bn_verdict")) == (num["rob_wise_midbn_val"] < num["rob_wise_mid_val"])
    # Soups: CI averages 2 runs; the greedy soup keeps between 1 and all of them.
    assert num["rob_soup_k"] == 2 and 1 <= num["rob_soup_greedy_n"] <= num["rob_soup_k"]
    assert num["rob_soup_step"] == pytest.approx(100 / num["rob_soup_test_n"])
    # The interpolation self-check runs as shipped and says "Not yet".
    assert "❌ Not yet (weight interpolation): your function returned None" in _outputs_text(nb)


@pytest.mark.notebooks
def test_positive_and_negative_transfer_results(executed_notebooks: dict[str, Path]) -> None:
    nb = nbformat.read(executed_notebooks["01_when_transfer_helps.ipynb"], as_version=4)
    raw = read_glued(nb)
    glued = {k: float(v) for k, v in raw.items() if v not in ("True", "False")}
    assert glued["tl_small_n"] == 64 and glued["tl_gain_small"] > 0.02      # positive transfer, few labels
    assert glued["tl_loss_large"] > 0.05                                       # negative transfer, many labels
    # "Frozen" weights: frozen before their first backward they never move; frozen after training
    # steps, a zeroed (not None) gradient lets AdamW's momentum (even without weight decay) move them.
    assert glued["frozen_drift_before"] == 0.0 and glued["frozen_drift_set_to_none"] == 0.0
    assert glued["frozen_drift_after"] > 0.01 and glued["frozen_drift_momentum"] > 0.01
    # BatchNorm statistics move in train() mode with every parameter frozen, not in eval() mode.
    assert glued["bn_frozen_train_shift"] > 0.01 and glued["bn_frozen_eval_shift"] == 0.0
    # The write-ups' "VGG16": eight pools, so Linear(64*7*7) needs a 1792-px input.
    assert glued["seed_pools"] == 8 and glued["seed_fit_side"] == 1792
    # The BCE as written rewards a confident mistake; the correct one charges -log(0.1).
    assert glued["bce_written_mistake"] < 0 < glued["bce_correct_mistake"]
    # from_pretrained returns a model in eval() mode.
    assert raw["from_pretrained_training"] == "False"


@pytest.mark.notebooks
def test_every_derivation_is_checked(executed_notebooks: dict[str, Path]) -> None:
    nb = nbformat.read(executed_notebooks["02_loss_and_gradients.ipynb"], as_version=4)
    text = _outputs_text(nb)
    checks = [line for line in text.splitlines() if "GradientCheck(" in line]
    assert len(checks) >= 5 and all("GradientCheck(OK" in line for line in checks), checks
    glued = {k: float(v) for k, v in read_glued(nb).items() if _is_number(v)}
    assert glued["mse_grad_wrong"] < 1e-2 < 0.9 < glued["ce_grad_wrong"]       # MSE saturates, CE does not
    assert glued["brier_grad_mistake"] < 1e-2 < 0.9 < glued["ce_grad_mistake"]  # so does the Brier score, softmax
    assert glued["l2sp_source"] > glued["nopen_source"]                        # L2-SP forgets less
    # The verdict on unpenalised fine-tuning says what the numbers say.
    pre, scratch, nopen = glued["pre_target"], glued["scratch_target"], glued["nopen_target"]
    verdict = _glued_markdown(nb, "nopen_verdict")
    assert ("**below** even" in verdict) == (nopen < scratch), verdict
    assert ("**below** the pretrained" in verdict) == (scratch <= nopen < pre), verdict
    assert glued["clip_end"] < 0.5
    assert abs(glued["joint_sharp"] - glued["joint_mid"]) > 1                  # unequal curvatures: no average
    # Distillation: without T^2 the soft gradient falls off like 1/T^2; with it, it is flat in T.
    assert abs(glued["kd_slope_without"] + 2) < 0.1 and abs(glued["kd_slope_with"]) < 0.1
    assert glued["kd_limit_gap"] < 0.05
    # AdamW: each weight moves by about lr per step in every stage, whatever the gradient's size.
    assert 0.3 < glued["adamw_step_min"] <= glued["adamw_step_max"] <= 1.0
    assert glued["adamw_step_max"] / glued["adamw_step_min"] < 2 < glued["grad_spread"]
    assert glued["adamw_vs_sgd"] > 10
    assert glued["head_vs_stem_disc"] > glued["head_vs_stem_uniform"]
    assert 0.1 < glued["last_vs_stem_uniform"] < 10   # "the same order of magnitude" (pretrained stages)
    # The self-checks of the exercises run, as shipped (no answer filled in), and say "Not yet".
    for exercise in ("label smoothing", "L2-SP", "distillation"):
        assert f"❌ Not yet ({exercise}): your function returned None" in text, exercise


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_is_in_the_toc(path: Path) -> None:
    toc = (REPO / "_toc.yml").read_text()
    assert f"notebooks/{path.stem}" in toc


@pytest.mark.notebooks
def test_resnet_case_study_results(executed_notebooks: dict[str, Path]) -> None:
    """Chapter 5 on the CI subset (16 ants and 16 bees per split): a working classifier whose speed
    against the tutorial's recipe is reported as measured, that reloads in a fresh process with the
    same predictions."""
    nb = nbformat.read(executed_notebooks["05_resnet_case_study.ipynb"], as_version=4)
    glued = read_glued(nb)
    assert float(glued["ours_acc"]) >= 0.75
    # The speed sentence says what the times say (at CI scale both recipes run 2 short epochs and may tie).
    speedup = float(glued["ours_speedup"])
    phrase = _glued_markdown(nb, "speed_phrase")
    assert ("faster" in phrase) == (speedup >= 1.1) and ("slower" in phrase) == (speedup <= 1 / 1.1), (phrase, speedup)
    assert glued["reload_same"] == "True"
    assert 0.5 <= float(glued["tta_acc"]) <= 1.0
    text = _outputs_text(nb)
    assert "fresh process:" in text and "model.safetensors" in text
    # Calibration: the hand-written ECE is torchmetrics'; temperatures cross-fitted on the two halves of
    # the 153 validation photos lower their ECE (0.19 -> 0.06-0.08 over 8 splits of a CI-scale model,
    # 0.044 -> 0.02-0.04 at full scale), and the temperature fitted on all of them is shipped.
    assert float(glued["ece_tm_check"]) < 1e-5
    assert int(glued["n_calibration_photos"]) > 0 and 0.05 <= float(glued["temperature"]) <= 20
    assert float(glued["ece_after"]) < float(glued["ece_before"])
    assert '"kind": "image-classifier"' in text and '"temperature": ' in text
    # The verdicts the prose reads say what the numbers say.
    temperature, before, after = (float(glued[k]) for k in ("temperature", "ece_before", "ece_after"))
    assert ("overconfident" in _glued_markdown(nb, "temperature_verdict")) == (temperature > 1), temperature
    assert ("does **not**" in _glued_markdown(nb, "ece_verdict")) == (after >= before), (before, after)
    heldout = float(glued["ece_heldout"])
    assert ("does **not**" in _glued_markdown(nb, "heldout_verdict")) == (heldout >= before), (before, heldout)
    if heldout >= before:   # the reason given is read from the two temperatures: a smaller T sharpens
        sharper = float(glued["temperature_heldout"]) < temperature
        assert ("sharpens" in _glued_markdown(nb, "heldout_verdict")) == sharper, glued["temperature_heldout"]
    met = float(glued["ours_acc"]) >= 0.93 and speedup >= 5
    assert _glued_markdown(nb, "benchmark_verdict").startswith("**meets**" if met else "**does not meet**")


@pytest.mark.notebooks
def test_bert_case_study_results(executed_notebooks: dict[str, Path]) -> None:
    """Chapter 6 on the CI subset (640 training and 300 test sentences, 2 epochs): both ways of
    fine-tuning learn the task and agree within noise; the shipped model reloads in a fresh process
    with the same predictions; bad input is refused with the fix in the message."""
    nb = nbformat.read(executed_notebooks["06_bert_case_study.ipynb"], as_version=4)
    glued = read_glued(nb)
    num = {k: float(v) for k, v in glued.items()
           if k in ("ft_plain_acc", "ft_trainer_acc", "ft_diff", "ft_two_se", "frozen_cls_acc", "frozen_mean_acc",
                    "imdb_head_acc", "imdb_tail_acc", "imdb_headtail_acc", "rt_fit", "base_ratio")}
    assert num["ft_plain_acc"] > 0.6 and num["ft_trainer_acc"] > 0.6
    assert glued["ft_within_noise"] == "True" and num["ft_diff"] <= num["ft_two_se"]
    assert 0.55 < num["frozen_mean_acc"] < 0.95 and 0.5 <= num["frozen_cls_acc"] < 0.95
    assert all(0.5 <= num[k] <= 1.0 for k in ("imdb_head_acc", "imdb_tail_acc", "imdb_headtail_acc"))
    assert num["rt_fit"] > 0.99                     # max_length 64 covers the sentences
    # A ratio of two timings: its size depends on the machine and on how busy it is (7.2 measured on an idle
    # 2-core CPU, 2.0 while another job shared the cores), so only the direction the prose reads is asserted.
    assert num["base_ratio"] > 1                    # BERT-base size is slower than the chapter's model
    assert glued["reload_same"] == "True"
    text = _outputs_text(nb)
    assert "DataError: text(s) at position(s) [1] are empty" in text
    assert "DataError: predict_texts() takes a list of texts" in text
    assert "is not valid UTF-8" in text
    assert "model.safetensors" in text and "fresh process:" in text
    # Calibration: a temperature fitted on training sentences held out of fine-tuning, applied to the
    # test sentences' probabilities and shipped in the manifest.
    assert 0.05 <= float(glued["text_temperature"]) <= 20
    assert float(glued["text_ece_after"]) < float(glued["text_ece_before"])
    assert "'kind': 'text-classifier'" in text and "'temperature': " in text
    # The verdicts the prose reads say what the numbers say.
    noise = _glued_markdown(nb, "ft_noise_verdict")
    assert noise == ("well within" if num["ft_diff"] <= num["ft_two_se"] / 2 else
                     "within" if num["ft_diff"] <= num["ft_two_se"] else "outside"), (noise, num["ft_diff"])
    if num["frozen_mean_acc"] != num["frozen_cls_acc"]:
        mean_best = num["frozen_mean_acc"] > num["frozen_cls_acc"]
        assert (_glued_markdown(nb, "best_pooling") == "mean pooling") == mean_best
    gain, gain_verdict = float(glued["ft_gain"]), _glued_markdown(nb, "ft_gain_verdict")
    assert gain_verdict.startswith("beats") <= (gain > 0), (gain, gain_verdict)     # "beats" only when ahead
    assert f"{gain * 100:.1f} points" in gain_verdict or f"{gain * 100:+.1f} points" in gain_verdict
    imdb_two_se = 2 * math.sqrt(2 * 0.25 / int(glued["imdb_n"]))
    assert _glued_markdown(nb, "imdb_noise") == ("larger than" if float(glued["imdb_spread"]) > imdb_two_se else "within")
    text_t, text_before, text_after = (float(glued[k]) for k in ("text_temperature", "text_ece_before", "text_ece_after"))
    assert ("overconfident" in _glued_markdown(nb, "text_temperature_verdict")) == (text_t > 1), text_t
    assert ("does **not**" in _glued_markdown(nb, "text_ece_verdict")) == (text_after >= text_before)
    # Why the ECE need not fall: the test cross-entropy before and after, and the bootstrap spread of the change.
    nll_before, nll_after, change_sd = (float(glued[k]) for k in ("text_nll_before", "text_nll_after", "text_ece_change_sd"))
    assert 0 < change_sd < 0.5 and nll_before > 0 and nll_after > 0
    assert _glued_markdown(nb, "text_nll_verdict").startswith("down" if nll_after < nll_before else "up:")
    assert _glued_markdown(nb, "text_ece_noise").startswith(
        "within" if abs(text_after - text_before) < 2 * change_sd else "larger"), (text_before, text_after, change_sd)


@pytest.mark.notebooks
def test_parameter_efficient_results(executed_notebooks: dict[str, Path]) -> None:
    """The parameter-efficient chapter on the CI subset (320 sentences, 2 epochs): LoRA starts exactly at the pretrained model, merges without changing a
    prediction, trains the same parameters by hand and with peft (under 1 % of the model), and the
    family table (with bottleneck adapters), the image section, the 4-bit base and the two-adapter
    section say what they measured."""
    nb = nbformat.read(executed_notebooks["09_parameter_efficient.ipynb"], as_version=4)
    glued = read_glued(nb)
    num = {k: float(v) for k, v in glued.items() if _is_number(v)}
    assert glued["same_start"] == "True"                                   # B = 0: the pretrained function
    assert glued["merge_same_preds"] == "True" and num["merge_max_diff"] < 1e-4 and num["merge_leftover"] == 0
    assert num["hand_trainable"] == num["peft_trainable"] and num["hand_share"] <= 0.01
    assert num["lora_share"] <= 0.01
    assert glued["peft_within_noise"] == "True" and num["peft_diff"] <= num["peft_two_se"]
    assert num["hand_acc"] > 0.6 and num["lora_acc"] > 0.6                  # LoRA learns the task
    # and is ahead of the frozen encoder + head. At CI scale (300 test sentences) the gap measured 7 points,
    # below two conservative standard errors (8.2), so only "ahead" is asserted here; the prose's verdict
    # ("beats" or "within the noise") is checked against the measured gap below.
    assert num["gap_frozen"] > 0
    # the verdicts in the prose follow the measured gaps, whichever way they went
    verdicts = [("lora_vs_frozen", "gap_frozen"), ("lora_vs_full", "gap_full"), ("adapter_vs_lora", "gap_adapter"),
                ("img_lora_vs_full", "img_gap_lora_full"), ("img_lora_vs_probe", "img_gap_lora_probe"),
                ("img_norm_vs_probe", "img_gap_norm_probe")]
    if "gap_prompt" in num:                                                # prompt tuning runs at full scale only
        verdicts.append(("prompt_vs_lora", "gap_prompt"))
    for key, gap in verdicts:
        noise = num["img_se2"] if key.startswith("img_") else num["family_se2"]
        words = _glued_markdown(nb, key)
        if abs(num[gap]) <= noise:
            assert "within the noise" in words, (key, words)
        else:
            assert ("beats" in words or "trails" in words), (key, words)
    assert num["pad_saving"] > 1                                           # grouped batches carry fewer tokens
    assert num["opt_lora"] < 0.05 * num["opt_full"]                        # gradients + AdamW moments shrink
    assert num["act_lora"] > 0.5 * num["act_full"]                         # activations do not
    assert num["adapter_kb"] * 1e-3 < 0.05 * num["full_mb"]                # the adapter is a small file
    # Houlsby adapters: start at the pretrained function, two per block, under 1 % of the model, and learn
    assert glued["adapter_same_start"] == "True" and num["n_adapters"] == num["n_wrapped"]
    assert num["adapter_share"] <= 0.01 and num["adapter_acc"] > 0.6
    # the image backbone: every pretrained method far above chance (1/17); LoRA trains a small share
    assert min(num["img_full_acc"], num["img_lora_acc"], num["img_norm_acc"], num["img_probe_acc"]) > 0.3
    assert num["img_lora_share"] < 0.1 and num["img_norm_share"] < 0.05
    # the 4-bit base: 4.5 bits per weight (about 7x smaller than float32), small rounding, LoRA still learns
    assert 6.5 < num["nf4_ratio"] < 7.5 and num["nf4_whole_ratio"] < num["nf4_ratio"]
    assert num["nf4_weight_change"] < 0.15 and num["qlora_acc"] > 0.6
    assert "did not run" in _glued_markdown(nb, "qlora_gpu_md") or "peak" in _glued_markdown(nb, "qlora_gpu_md")
    assert glued["rt_adapter_reloaded"] == "True" and glued["base_untouched"] == "True"
    assert num["switch_rt_on_rt"] == num["peft_acc"]                        # the reloaded adapter is the trained one
    verdict = _glued_markdown(nb, "switch_verdict")                        # the prose says which way IMDB went
    assert ("beats the sibling" in verdict) == (num["imdb_own_gain"] > 0 and "within the noise" not in verdict)
    assert ("*worse*" in verdict) == (num["imdb_own_gain"] < 0 and "within the noise" not in verdict)
    text = _outputs_text(nb)
    assert "trainable params:" in text                                     # peft's own report
    assert "adapter_model.safetensors" in text and "adapter_config.json" in text


@pytest.mark.notebooks
def test_scaling_out_results(executed_notebooks: dict[str, Path]) -> None:
    """The appendix: two processes (DDP and accelerate) end with the single process's weights up to
    float32 rounding, a genuinely different run (twice the global batch) does not, and BatchNorm
    breaks the gradient identity."""
    nb = nbformat.read(executed_notebooks["08_scaling_out.ipynb"], as_version=4)
    glued = {k: float(v) for k, v in read_glued(nb).items()}
    assert glued["ddp_max_dw"] < 1e-5 and glued["acc_max_dw"] < 1e-5
    assert glued["ddp_max_dloss"] < 1e-4 and glued["acc_max_dloss"] < 1e-4
    assert glued["b64_max_dw"] > 1e-2
    assert glued["grad_avg_diff"] < 1e-12 < 1e-3 < glued["bn_grad_diff"]
    assert glued["test_acc"] > 0.9


@pytest.mark.notebooks
def test_applications_results(executed_notebooks: dict[str, Path]) -> None:
    """Chapter 7 on the CI subset (10 flowers per class, 600/300 sentences): the shift costs the
    source-only model accuracy and the oracle bounds it; DANN does not help on frozen features and
    does on the rotated moons; a distilled student stays below its teacher;
    few-shot accuracy grows with shots; zero-shot beats chance; every method is in the summary; every
    verdict in the prose was computed."""
    nb = nbformat.read(executed_notebooks["07_applications.ipynb"], as_version=4)
    glued = read_glued(nb)
    num = {k: float(v) for k, v in glued.items() if k.replace("_", "").isalnum() and _is_number(v)}
    assert num["da_so_source"] > num["da_so_target"] + 0.1        # the domain gap is real
    # What the prose says of the two methods: DANN's discriminator still tells the domains apart
    # (0.5 would be invariant features), and AdaBN done halfway (target statistics under a head
    # trained with ImageNet statistics) is worse than AdaBN done right.
    assert num["dann_disc"] > 0.6
    assert "above" not in _glued_markdown(nb, "dann_flowers_verdict")  # "Why DANN does not help here"
    # Where DANN works (the rotated moons, every layer trained): better on average over the three
    # seeds by a margin, and on most of them (measured: +8.7 mean, -1.6/+19.0/+8.8 for seeds 0-2;
    # +1.4 to +18.6 for seeds 3-7).
    assert num["moons_gain_mean"] > 4 and num["moons_wins"] >= 2
    assert num["moons_dann"] > num["moons_so"]
    assert num["adabn_half"] < num["adabn_target"]
    assert num["adabn_layers"] > 10                                # every BatchNorm of the backbone
    assert num["kd_teacher"] > num["kd_acc"] and num["kd_size_ratio"] > 10
    # The transfer-set attempt: a teacher fit on the few labels still beats the students, and the
    # prose's verdicts on distillation (helped / within the noise / worse) were computed.
    assert num["kd_few_teacher"] > max(num["kd_few_plain"], num["kd_transfer"])
    assert _glued_markdown(nb, "kd_transfer_verdict").strip() and _glued_markdown(nb, "kd_overall").strip()
    assert num["fs_img5_proto"] > num["fs_img1_proto"] > 1 / 17 + 0.1
    assert num["zs_desc"] > 0.55 and num["zs_full"] > 0.6
    assert num["fusion_best"] > 0.55
    for verdict in ("da_verdict", "kd_verdict", "fusion_verdict", "fs_wins"):
        assert glued[verdict].strip(), verdict
    text = _outputs_text(nb)
    for method in ("source only", "DANN", "AdaBN", "student, distilled", "prototypes", "zero-shot (descriptions)",
                   "shared encoder, two heads", "stacking"):
        assert method in text or method in _html_text(nb), f"{method!r} missing from the chapter's output"


def _glued_markdown(nb, name: str) -> str:
    """The Markdown text of a value glued as ``IPython.display.Markdown`` (its text/plain is only a repr)."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            meta = out.get("metadata", {}).get("scrapbook")
            if meta and meta["name"] == name:
                return out["data"][meta["mime_prefix"] + "text/markdown"]
    raise KeyError(name)


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _html_text(nb) -> str:
    return "\n".join(out.get("data", {}).get("text/html", "") for cell in nb.cells for out in cell.get("outputs", []))
