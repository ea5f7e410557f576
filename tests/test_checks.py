"""transfer_utils.checks: right answers pass, the usual mistakes get their hint, nothing crashes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F

from transfer_utils import checks


def _smooth(z, y, eps):
    k = z.shape[1]
    return (1 - eps) * F.one_hot(y, k).to(z.dtype) + eps / k


def test_label_smoothing_right_and_wrong() -> None:
    ok = checks.label_smoothing_gradient(lambda z, y, e: (z.softmax(1) - _smooth(z, y, e)) / z.shape[0])
    assert ok and "matches autograd on 5 random cases" in str(ok) and str(ok).startswith("✅")
    one_hot = checks.label_smoothing_gradient(lambda z, y, e: (z.softmax(1) - F.one_hot(y, z.shape[1])) / z.shape[0])
    assert not one_hot and "one-hot target" in one_hot.message
    assert "averages over the N" in checks.label_smoothing_gradient(lambda z, y, e: z.softmax(1) - _smooth(z, y, e)).message
    assert "sign is flipped" in checks.label_smoothing_gradient(
        lambda z, y, e: (_smooth(z, y, e) - z.softmax(1)) / z.shape[0]).message
    assert "sum to 1" in checks.label_smoothing_gradient(
        lambda z, y, e: (z.softmax(1) - (1 - e) * F.one_hot(y, z.shape[1]) - e) / z.shape[0]).message


def test_l2sp_right_and_wrong() -> None:
    data = lambda w, X, y: X.T @ (torch.sigmoid(X @ w) - y) / X.shape[0]  # noqa: E731
    assert checks.l2sp_logistic_gradient(lambda w, X, y, w0, a: data(w, X, y) + a * (w - w0))
    assert "towards zero" in checks.l2sp_logistic_gradient(lambda w, X, y, w0, a: data(w, X, y) + a * w).message
    assert "missing" in checks.l2sp_logistic_gradient(lambda w, X, y, w0, a: data(w, X, y)).message
    assert "raw score" in checks.l2sp_logistic_gradient(
        lambda w, X, y, w0, a: X.T @ (X @ w - y) / X.shape[0] + a * (w - w0)).message


def test_distillation_right_and_wrong() -> None:
    diff = lambda z, t, T: torch.softmax(z / T, 0) - torch.softmax(t / T, 0)  # noqa: E731
    assert checks.distillation_gradient(lambda z, t, T: T * diff(z, t, T))
    assert "wrong scale" in checks.distillation_gradient(diff).message
    assert "T² in front" in checks.distillation_gradient(lambda z, t, T: diff(z, t, T) / T).message
    assert "sign is flipped" in checks.distillation_gradient(lambda z, t, T: -T * diff(z, t, T)).message


def test_checks_never_crash_and_never_print_the_answer() -> None:
    r = checks.distillation_gradient(lambda z, t, T: None)
    assert not r and "returned None" in r.message
    r = checks.distillation_gradient(lambda z, t, T: 1 / 0)
    assert not r and "ZeroDivisionError" in r.message
    r = checks.label_smoothing_gradient(lambda z, y, e: z.softmax(1)[0])
    assert not r and "shape" in r.message
    r = checks.label_smoothing_gradient(lambda z, y, e: torch.zeros_like(z))
    assert not r and "differs from autograd" in r.message
    assert r._repr_markdown_().startswith("**❌ Not yet**")
    for msg in (r.message, checks.distillation_gradient(lambda z, t, T: z).message):
        assert "softmax(z" not in msg and "p - " not in msg   # hints name the mistake, not the formula


@pytest.mark.parametrize("seed", [1, 2])
def test_right_answers_pass_for_other_seeds(seed: int) -> None:
    assert checks.distillation_gradient(lambda z, t, T: T * (torch.softmax(z / T, 0) - torch.softmax(t / T, 0)), seed)


# --- chapters 1 and 3-8 ------------------------------------------------------------------------


def test_batchnorm_halfway_measures_a_real_batchnorm() -> None:
    # 1 - 0.9**k >= 0.5 first at k = 7 (0.9**6 = 0.53, 0.9**7 = 0.48): the check must agree.
    assert checks.batchnorm_halfway(7) and checks.batchnorm_halfway(7.0)
    assert "more passes" in checks.batchnorm_halfway(6).message
    assert "smallest" in checks.batchnorm_halfway(8).message
    assert "smallest" in checks.batchnorm_halfway(50).message
    for bad in (None, "7", 6.5, 0, -3, True, float("inf"), float("nan")):
        r = checks.batchnorm_halfway(bad)
        assert not r and "whole number" in r.message
    assert checks.batchnorm_halfway(2, momentum=0.3) and not checks.batchnorm_halfway(7, momentum=0.3)  # 0.3, 0.51


def test_mean_pooling_right_and_wrong() -> None:
    def right(x, m):
        m = m.unsqueeze(-1).to(x.dtype)
        return (x * m).sum(1) / m.sum(1)

    assert checks.mean_pooling(right) and checks.mean_pooling(right, seed=3)
    masked = lambda x, m: (x * m.unsqueeze(-1)).sum(1)  # noqa: E731
    assert "padding positions" in checks.mean_pooling(lambda x, m: x.mean(1)).message
    assert "padded length" in checks.mean_pooling(lambda x, m: masked(x, m) / x.shape[1]).message
    assert "a sum, not a mean" in checks.mean_pooling(masked).message
    assert "first token" in checks.mean_pooling(lambda x, m: x[:, 0]).message
    r = checks.mean_pooling(lambda x, m: (x * m.unsqueeze(-1)).mean(2))
    assert not r and "shape" in r.message and "one H-dimensional vector" in r.message
    assert "differs from features.mean_pool" in checks.mean_pooling(lambda x, m: right(x, m) + 1e-3).message

    def in_place(x, m):  # modifies its inputs: the check must not be fooled or broken by that
        x *= m.unsqueeze(-1)
        return x.sum(1) / m.sum(1, keepdim=True)

    def zero_then_mean(x, m):  # zeroes the padding in place, then divides by the padded length
        x *= m.unsqueeze(-1)
        return x.mean(1)

    assert checks.mean_pooling(in_place)
    assert "padded length" in checks.mean_pooling(zero_then_mean).message  # not misread as "padding included"


def test_stage_learning_rates_right_and_wrong() -> None:
    def right(names, head, backbone, decay):
        lrs = {names[-1]: head}
        for depth, name in enumerate(reversed(names[:-1])):
            lrs[name] = backbone * decay**depth
        return lrs

    assert checks.stage_learning_rates(right)
    assert "wrong way" in checks.stage_learning_rates(
        lambda n, h, b, d: {**{s: b * d**i for i, s in enumerate(n[:-1])}, n[-1]: h}).message
    assert "one factor of lr_decay too many" in checks.stage_learning_rates(
        lambda n, h, b, d: {**{s: b * d ** (i + 1) for i, s in enumerate(reversed(n[:-1]))}, n[-1]: h}).message
    assert "the head is new" in checks.stage_learning_rates(lambda n, h, b, d: {**right(n, h, b, d), n[-1]: b}).message
    assert "keys must be exactly" in checks.stage_learning_rates(lambda n, h, b, d: {s: b for s in n[:-1]}).message
    assert "returned a list" in checks.stage_learning_rates(lambda n, h, b, d: [h]).message
    assert "must be a number" in checks.stage_learning_rates(lambda n, h, b, d: {s: "fast" for s in n}).message
    # it is the book's helper the check agrees with, on a real backbone's stage names
    from torchvision.models import resnet18

    from transfer_utils import models, recipes
    model = resnet18(weights=None)
    cfg = recipes.FinetuneConfig(head_lr=1e-3, backbone_lr=1e-4, lr_decay=0.5)
    names = list(models.stages(model))
    assert right(names, 1e-3, 1e-4, 0.5) == recipes.stage_learning_rates(model, cfg)


def test_confident_mistakes_right_and_wrong() -> None:
    import numpy as np

    def right(p, y, t):
        return [i for i in np.flatnonzero(p.argmax(1).numpy() != y.numpy()) if p[i].max() > t]

    assert checks.confident_mistakes(right) and checks.confident_mistakes(lambda p, y, t: list(reversed(right(p, y, t))))
    assert checks.confident_mistakes(lambda p, y, t: torch.tensor(right(p, y, t), dtype=torch.long), seed=4)
    assert "got right" in checks.confident_mistakes(lambda p, y, t: torch.nonzero(p.max(1).values > t)).message
    assert "unsure" in checks.confident_mistakes(lambda p, y, t: torch.nonzero(p.argmax(1) != y)).message
    assert "true class" in checks.confident_mistakes(
        lambda p, y, t: torch.nonzero((p.argmax(1) != y) & (p.gather(1, y[:, None])[:, 0] > t))).message
    assert "whole numbers" in checks.confident_mistakes(lambda p, y, t: p.max(1).values[:3]).message
    assert "returned None" in checks.confident_mistakes(lambda p, y, t: None).message


def test_expected_calibration_error_right_and_wrong() -> None:
    def right(probs, labels, n_bins):   # the solution of chapter 5's exercise
        confidence, predicted = probs.max(1)
        correct = (predicted == labels).float()
        bins = (confidence * n_bins).floor()
        return sum((bins == m).float().mean() * (correct[bins == m].mean() - confidence[bins == m].mean()).abs()
                   for m in bins.unique())

    assert checks.expected_calibration_error(right)
    assert checks.expected_calibration_error(lambda p, y, m: float(right(p, y, m)), seed=3)

    def unweighted(probs, labels, n_bins):
        confidence, predicted = probs.max(1)
        correct = (predicted == labels).double()
        bins = (confidence * n_bins).floor()
        gaps = [(correct[bins == m].mean() - confidence[bins == m].mean()).abs() for m in bins.unique()]
        return sum(gaps) / len(gaps)

    assert "share of the predictions" in checks.expected_calibration_error(unweighted).message
    per_example = checks.expected_calibration_error(
        lambda p, y, m: ((p.argmax(1) == y).double() - p.max(1).values).abs().mean())
    assert "single predictions" in per_example.message
    assert "cancel" in checks.expected_calibration_error(
        lambda p, y, m: abs(float((p.argmax(1) == y).double().mean() - p.max(1).values.mean()))).message
    assert "return one" in checks.expected_calibration_error(lambda p, y, m: p.max(1).values).message
    assert "returned None" in checks.expected_calibration_error(lambda p, y, m: None).message


def test_head_tail_truncation_right_and_wrong() -> None:
    def right(ids, b):
        return ids if len(ids) <= b else ids[:b // 4] + ids[len(ids) - (b - b // 4):]

    assert checks.head_tail_truncation(right)
    assert "only the beginning" in checks.head_tail_truncation(lambda ids, b: ids[:b]).message
    assert "only the end" in checks.head_tail_truncation(lambda ids, b: ids[-b:]).message
    assert "wrong way round" in checks.head_tail_truncation(
        lambda ids, b: ids if len(ids) <= b else ids[:b - b // 4] + ids[len(ids) - b // 4:]).message
    assert "even split" in checks.head_tail_truncation(
        lambda ids, b: ids if len(ids) <= b else ids[:b // 2] + ids[len(ids) - (b - b // 2):]).message
    assert "already fits" in checks.head_tail_truncation(lambda ids, b: ids[:b // 4] + ids[len(ids) - (b - b // 4):]).message
    assert "never more than max_tokens" in checks.head_tail_truncation(lambda ids, b: ids).message
    assert "not a list of ids" in checks.head_tail_truncation(lambda ids, b: 3).message


def test_distillation_loss_right_and_wrong() -> None:
    def kl(p, q, reduction="batchmean"):  # KL(softmax(p) || softmax(q)); "mean": over examples and classes
        elementwise = F.kl_div(F.log_softmax(q, -1), F.log_softmax(p, -1), log_target=True, reduction="none")
        return {"batchmean": elementwise.sum() / len(p), "sum": elementwise.sum(), "mean": elementwise.mean()}[reduction]

    def loss(s, t, y, T, a, soft=None):
        soft = T * T * kl(t / T, s / T) if soft is None else soft
        return a * soft + (1 - a) * F.cross_entropy(s, y)

    assert checks.distillation_loss(loss) and checks.distillation_loss(loss, seed=5)
    # written out by hand, with probabilities instead of F.kl_div
    def by_hand(s, t, y, T, a):
        q = torch.softmax(t / T, 1)
        soft = (q * (q.log() - torch.log_softmax(s / T, 1))).sum(1).mean() * T**2
        return a * soft - (1 - a) * torch.log_softmax(s, 1).gather(1, y[:, None]).mean()

    assert checks.distillation_loss(by_hand)
    assert "depends on T" in checks.distillation_loss(lambda s, t, y, T, a: loss(s, t, y, T, a, kl(t / T, s / T))).message
    assert "wrong way" in checks.distillation_loss(lambda s, t, y, T, a: loss(s, t, y, T, a, T * T * kl(s / T, t / T))).message
    assert "same temperature" in checks.distillation_loss(lambda s, t, y, T, a: loss(s, t, y, T, a, T * T * kl(t, s / T))).message
    assert "reduction='mean'" in checks.distillation_loss(
        lambda s, t, y, T, a: loss(s, t, y, T, a, T * T * kl(t / T, s / T, "mean"))).message
    assert "summed over the batch" in checks.distillation_loss(
        lambda s, t, y, T, a: loss(s, t, y, T, a, T * T * kl(t / T, s / T, "sum"))).message
    assert "alpha weighs the wrong term" in checks.distillation_loss(lambda s, t, y, T, a: loss(s, t, y, T, 1 - a)).message
    r = checks.distillation_loss(lambda s, t, y, T, a: F.cross_entropy(s, y, reduction="none"))
    assert not r and "a single number" in r.message


def test_batchnorm_moments_right_and_wrong() -> None:
    def right(n, s, q):
        N = n.sum()
        mean = s.sum(0) / N
        return mean, q.sum(0) / N - mean**2

    assert checks.batchnorm_moments(right) and checks.batchnorm_moments(right, seed=6)
    per = lambda n, s, q: (s / n[:, None], q / n[:, None] - (s / n[:, None]) ** 2)  # noqa: E731
    assert "as if every rank held as many" in checks.batchnorm_moments(
        lambda n, s, q: (per(n, s, q)[0].mean(0), per(n, s, q)[1].mean(0))).message
    assert "their means differ" in checks.batchnorm_moments(
        lambda n, s, q: (right(n, s, q)[0], (per(n, s, q)[1] * n[:, None]).sum(0) / n.sum())).message
    assert "unbiased" in checks.batchnorm_moments(
        lambda n, s, q: (right(n, s, q)[0], right(n, s, q)[1] * n.sum() / (n.sum() - 1))).message
    assert "mean of the squares" in checks.batchnorm_moments(lambda n, s, q: (right(n, s, q)[0], q.sum(0) / n.sum())).message
    assert "pair of tensors" in checks.batchnorm_moments(lambda n, s, q: right(n, s, q)[0]).message
    # the check's reference is what a BatchNorm layer computes on the concatenated batch
    x = torch.randn(10, 3, dtype=torch.float64)
    bn = torch.nn.BatchNorm1d(3, momentum=1.0).double().train()
    bn(x)
    shards = (x[:4], x[4:])
    n = torch.tensor([4.0, 6.0], dtype=torch.float64)
    mean, var = right(n, torch.stack([t.sum(0) for t in shards]), torch.stack([(t**2).sum(0) for t in shards]))
    assert torch.allclose(mean, bn.running_mean) and torch.allclose(var * 10 / 9, bn.running_var)


# --- the chapters' check cells and their solutions -----------------------------------------------

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
CHECK_CALL = re.compile(r"^checks\.(\w+)\((my_\w+)\)\s*$", re.M)


def _run_cell(source: str, namespace: dict) -> object:
    """Execute a cell like Jupyter: everything, and return the value of its last expression."""
    tree = ast.parse(source)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<cell>", "exec"), namespace)
    return eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace) if last else None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_check_cells_say_not_yet_as_shipped_and_pass_with_the_solution(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code" and CHECK_CALL.search(c.source)]
    assert cells, f"{path.name} has no self-check cell (`checks.<name>(my_...)`)"
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    blocks = re.findall(r"```python\n(.*?)```", markdown, re.S)
    shared: dict = {}  # the check cells run in order, in one kernel
    for source in cells:
        check, name = CHECK_CALL.search(source).groups()
        shipped = _run_cell(source, shared)
        assert isinstance(shipped, checks.CheckResult) and not shipped, (check, shipped)
        assert "Not yet" in str(shipped)
        if path.name.startswith("02_"):
            continue  # chapter 2's solutions use check_gradient; its checks are tested above
        solution = [b for b in blocks if re.search(rf"^(def {name}\(|{name} = )", b, re.M)]
        assert len(solution) == 1, f"{path.name}: one solution must define {name}, found {len(solution)}"
        namespace = {"torch": torch, "F": F, "np": __import__("numpy")}
        _run_cell(solution[0], namespace)
        result = getattr(checks, check)(namespace[name])
        assert result, f"{path.name}: the printed solution for {check} fails its own check: {result}"


def test_lora_delta_right_and_wrong() -> None:
    right = lambda A, B, a, r: (a / r) * (B @ A)  # noqa: E731
    assert checks.lora_delta(right) and checks.lora_delta(right, seed=7)
    assert "scale alpha / r is missing" in checks.lora_delta(lambda A, B, a, r: B @ A).message
    assert "upside down" in checks.lora_delta(lambda A, B, a, r: (r / a) * (B @ A)).message
    assert "not divided by the rank" in checks.lora_delta(lambda A, B, a, r: a * (B @ A)).message
    assert "alpha is missing" in checks.lora_delta(lambda A, B, a, r: (B @ A) / r).message
    r = checks.lora_delta(lambda A, B, a, r: (a / r) * (A.T @ B.T))
    assert not r and ("transposed" in r.message or "out_features × in_features" in r.message)
    assert "returned None" in checks.lora_delta(lambda A, B, a, r: None).message
    # the check's reference is what merging a trained LoRA layer adds to its weight
    from torch import nn

    from transfer_utils import lora
    layer = lora.LoRALinear(nn.Linear(5, 3), r=2, alpha=4)
    with torch.no_grad():
        layer.B.normal_()
    w0 = layer.base.weight.detach().clone()
    holder = nn.Sequential(layer)
    lora.merge_lora(holder)
    torch.testing.assert_close(holder[0].weight - w0, right(layer.A, layer.B, 4, 2).detach())


def test_weight_interpolation_right_and_wrong() -> None:
    def right(a, b, t):
        return {k: (1 - t) * v + t * b[k] if v.is_floating_point() else v.clone() for k, v in a.items()}

    ok = checks.weight_interpolation(right)
    assert ok and "matches weightspace.interpolate on 5 random cases" in str(ok)
    assert checks.weight_interpolation(lambda a, b, t: {**right(a, b, t), "bn.num_batches_tracked": b["bn.num_batches_tracked"]})
    swapped = checks.weight_interpolation(lambda a, b, t: right(b, a, t))
    assert not swapped and "wrong end" in swapped.message
    assert "plain average" in checks.weight_interpolation(lambda a, b, t: right(a, b, 0.5)).message
    counted = checks.weight_interpolation(lambda a, b, t: {k: (1 - t) * v + t * b[k] for k, v in a.items()})
    assert not counted and "not a weight" in counted.message
    assert "add up to 1" in checks.weight_interpolation(
        lambda a, b, t: {k: v + t * b[k] if v.is_floating_point() else v for k, v in a.items()}).message
    assert "returned None" in checks.weight_interpolation(lambda a, b, t: None).message
    assert "dict" in checks.weight_interpolation(lambda a, b, t: [1, 2]).message
    missing = checks.weight_interpolation(lambda a, b, t: {k: v for k, v in right(a, b, t).items() if "bn" not in k})
    assert not missing and "one entry per tensor" in missing.message

    def in_place(a, b, t):   # modifies its inputs: the check must not be fooled (nor crash)
        for k, v in a.items():
            if v.is_floating_point():
                v.mul_(1 - t).add_(t * b[k])
        return a

    assert checks.weight_interpolation(in_place)
