"""Self-checking exercises: run a learner's function, say right or wrong, and hint — never answer.

Each check compares the learner's function with autograd on several random inputs (float64). When
they differ, it tests the function against the usual mistakes (a sign, a missing factor, the
wrong target) and names the *kind* of mistake, not the formula.

Example::

    def my_grad(z, labels, eps):
        return ...                     # your dL/dz
    checks.label_smoothing_gradient(my_grad)   # shows ✅ or ❌ with a hint
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class CheckResult:
    """The verdict of a check; renders as one line in a notebook."""

    exercise: str
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return f"{'✅ Correct' if self.passed else '❌ Not yet'} ({self.exercise}): {self.message}"

    __repr__ = __str__

    def _repr_markdown_(self) -> str:
        return f"**{'✅ Correct' if self.passed else '❌ Not yet'}** ({self.exercise}): {self.message}"


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-6, atol=1e-8)


def _call(exercise: str, fn: Callable[..., object], *args: object) -> torch.Tensor | CheckResult:
    try:
        out = fn(*args)
    except Exception as err:  # the learner's code: report, don't crash the notebook
        return CheckResult(exercise, False, f"your function raised {type(err).__name__}: {err}")
    if out is None:
        return CheckResult(exercise, False, "your function returned None: return the gradient as a tensor.")
    if not isinstance(out, torch.Tensor):
        return CheckResult(exercise, False, f"your function returned a {type(out).__name__}, not a torch.Tensor.")
    return out.to(torch.float64)


def _compare(exercise: str, fn: Callable[..., object], cases: list[tuple[tuple[object, ...], torch.Tensor]],
             mistakes: list[tuple[Callable[..., torch.Tensor], str]]) -> CheckResult:
    """Run ``fn`` on every case; on the first mismatch, name the first matching known mistake."""
    worst = 0.0
    for args, reference in cases:
        got = _call(exercise, fn, *args)
        if isinstance(got, CheckResult):
            return got
        if got.shape != reference.shape:
            return CheckResult(exercise, False, f"shape {tuple(got.shape)}, expected {tuple(reference.shape)} "
                                                "(the gradient has the shape of the variable).")
        if not _close(got, reference):
            for wrong, hint in mistakes:
                if _close(got, wrong(*args).to(torch.float64)):
                    return CheckResult(exercise, False, hint)
            diff = float((got - reference).abs().max())
            return CheckResult(exercise, False, f"differs from autograd's gradient by up to {diff:.3g}. "
                                                "Check your derivation step by step against check_gradient.")
        worst = max(worst, float((got - reference).abs().max()))
    return CheckResult(exercise, True, f"matches autograd on {len(cases)} random cases "
                                       f"(largest difference {worst:.1e}).")


def _grad(loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    loss(x).backward()
    assert x.grad is not None
    return x.grad


def label_smoothing_gradient(fn: Callable[[torch.Tensor, torch.Tensor, float], object], seed: int = 0) -> CheckResult:
    """Chapter 2, "Label smoothing": ``fn(z, labels, eps)`` must return ∂L/∂z of
    ``F.cross_entropy(z, labels, label_smoothing=eps)`` (the batch mean) for logits ``z [N, K]``."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    for n, k in ((3, 5), (1, 2), (4, 7), (6, 3), (2, 10)):
        z = torch.randn(n, k, generator=g, dtype=torch.float64)
        labels = torch.randint(0, k, (n,), generator=g)
        eps = float(torch.rand(1, generator=g)) * 0.3 + 0.05
        ref = _grad(lambda v: F.cross_entropy(v, labels, label_smoothing=eps), z)
        cases.append(((z.clone(), labels.clone(), eps), ref))

    def smooth(z: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
        k = z.shape[1]
        return (1 - eps) * F.one_hot(labels, k).to(z.dtype) + eps / k

    mistakes = [
        (lambda z, y, e: (z.softmax(1) - F.one_hot(y, z.shape[1]).to(z.dtype)) / z.shape[0],
         "this is the gradient for the one-hot target: which target does label smoothing put in the loss?"),
        (lambda z, y, e: z.softmax(1) - smooth(z, y, e),
         "right shape, but N times too large: F.cross_entropy averages over the N examples of the batch."),
        (lambda z, y, e: (smooth(z, y, e) - z.softmax(1)) / z.shape[0],
         "the sign is flipped: the loss grows when you move along the gradient, not against it."),
        (lambda z, y, e: ((1 - e) * F.one_hot(y, z.shape[1]).to(z.dtype) + e - z.softmax(1)).neg() / z.shape[0],
         "close: the smoothed target must still sum to 1 over the K classes — how is ε shared among them?"),
    ]
    return _compare("label smoothing", fn, cases, mistakes)


def l2sp_logistic_gradient(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float], object],
                           seed: int = 0) -> CheckResult:
    """Chapter 2, "Logistic regression with L2-SP": ``fn(w, X, y, w0, alpha)`` must return ∇J(w) for
    ``J(w) = mean BCE(sigmoid(X w), y) + alpha/2 ||w - w0||²``."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    for n, d in ((8, 4), (3, 2), (10, 5), (5, 1), (6, 6)):
        X = torch.randn(n, d, generator=g, dtype=torch.float64)
        y = torch.randint(0, 2, (n,), generator=g).to(torch.float64)
        w0, w = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
        alpha = float(torch.rand(1, generator=g)) + 0.1
        ref = _grad(lambda v: F.binary_cross_entropy_with_logits(X @ v, y) + alpha / 2 * ((v - w0) ** 2).sum(), w)
        cases.append(((w.clone(), X, y, w0, alpha), ref))
    data_term = lambda w, X, y: X.T @ (torch.sigmoid(X @ w) - y) / X.shape[0]  # noqa: E731
    mistakes = [
        (lambda w, X, y, w0, a: data_term(w, X, y) + a * w,
         "your penalty pulls the weights towards zero; L2-SP pulls them towards somewhere else."),
        (lambda w, X, y, w0, a: data_term(w, X, y),
         "the penalty term is missing from your gradient."),
        (lambda w, X, y, w0, a: data_term(w, X, y) * X.shape[0] + a * (w - w0),
         "the data term is N times too large: the loss is a mean over the N examples."),
        (lambda w, X, y, w0, a: X.T @ (X @ w - y) / X.shape[0] + a * (w - w0),
         "the data term uses the raw score X·w where the model's prediction should be."),
        (lambda w, X, y, w0, a: data_term(w, X, y) + a / 2 * (w - w0),
         "the penalty's gradient is off by a factor: differentiate α/2·‖w − w⁰‖² once more."),
    ]
    return _compare("L2-SP", fn, cases, mistakes)


def distillation_gradient(fn: Callable[[torch.Tensor, torch.Tensor, float], object], seed: int = 0) -> CheckResult:
    """Chapter 2, "The distillation gradient": ``fn(z, t, T)`` must return ∂L/∂z of
    ``L = T² KL(softmax(t/T) ‖ softmax(z/T))`` for one example's logits ``z`` and ``t`` (``[K]``)."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    for k, T in ((6, 3.0), (2, 1.0), (10, 5.0), (4, 2.0), (3, 0.5)):
        z, t = torch.randn(k, generator=g, dtype=torch.float64), torch.randn(k, generator=g, dtype=torch.float64)
        q = torch.softmax(t / T, 0)
        ref = _grad(lambda v: T**2 * (q * (q.log() - torch.log_softmax(v / T, 0))).sum(), z)
        cases.append(((z.clone(), t.clone(), T), ref))
    diff = lambda z, t, T: torch.softmax(z / T, 0) - torch.softmax(t / T, 0)  # noqa: E731
    mistakes = [
        (lambda z, t, T: diff(z, t, T),
         "right direction, wrong scale: follow the factor T² and the 1/T from the chain rule through z/T."),
        (lambda z, t, T: T**2 * diff(z, t, T),
         "right direction, but one factor of T too many: the chain rule through z/T contributes 1/T."),
        (lambda z, t, T: diff(z, t, T) / T,
         "right direction, but the T² in front of the KL is missing."),
        (lambda z, t, T: -T * diff(z, t, T),
         "the sign is flipped: which of the two distributions does the student's logit z move?"),
        (lambda z, t, T: T * (torch.softmax(z, 0) - torch.softmax(t, 0)),
         "the softmaxes must be taken at temperature T, as in the loss."),
    ]
    return _compare("distillation", fn, cases, mistakes)
