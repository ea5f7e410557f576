"""transfer_utils.checks: right answers pass, the usual mistakes get their hint, nothing crashes."""

from __future__ import annotations

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
