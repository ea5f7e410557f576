"""Self-checking exercises: run a learner's function, say right or wrong, and hint — never answer.

Each check runs the learner's function on several random inputs and compares the result with a
reference: autograd for chapter 2's gradients, the book's own helper (``features.mean_pool``,
``text.truncate_ids``, ``distill.distillation_loss``, ...) for the other chapters. When they
differ, it tests the function against the usual mistakes (a sign, a missing factor, the wrong
target, padding counted as data) and names the *kind* of mistake, not the formula.

Example::

    def my_grad(z, labels, eps):
        return ...                     # your dL/dz
    checks.label_smoothing_gradient(my_grad)   # shows ✅ or ❌ with a hint

One check per chapter beyond chapter 2: :func:`batchnorm_halfway` (1), :func:`mean_pooling` (3),
:func:`stage_learning_rates` and :func:`weight_interpolation` (4), :func:`confident_mistakes` and :func:`expected_calibration_error` (5),
:func:`head_tail_truncation` (6), :func:`distillation_loss` (7), :func:`batchnorm_moments` (8), :func:`lora_delta` (09, parameter-efficient).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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


def _invoke(exercise: str, fn: Callable[..., object], args: Sequence[object], expected: str) -> object:
    """``fn(*args)``, or a failed :class:`CheckResult` if it raises or returns None (``expected`` says
    what to return instead). The learner's code: report, don't crash the notebook."""
    try:
        out = fn(*args)
    except Exception as err:
        return CheckResult(exercise, False, f"your function raised {type(err).__name__}: {err}")
    if out is None:
        return CheckResult(exercise, False, f"your function returned None: return {expected}.")
    return out


def _call(exercise: str, fn: Callable[..., object], *args: object) -> torch.Tensor | CheckResult:
    out = _invoke(exercise, fn, args, "your result (see the docstring)")
    if isinstance(out, CheckResult):
        return out
    if not isinstance(out, torch.Tensor):
        return CheckResult(exercise, False, f"your function returned a {type(out).__name__}, not a torch.Tensor.")
    return out.detach().to(torch.float64)


def _compare(exercise: str, fn: Callable[..., object], cases: list[tuple[tuple[object, ...], torch.Tensor]],
             mistakes: list[tuple[Callable[..., torch.Tensor], str]], *, reference: str = "autograd",
             shape_hint: str = "the gradient has the shape of the variable",
             call: Callable[..., torch.Tensor | CheckResult] | None = None) -> CheckResult:
    """Run ``fn`` on every case; on the first mismatch, name the first matching known mistake.

    ``reference`` names what the cases' expected values are (in the messages); ``call`` turns the
    learner's output into a float64 tensor or a failed :class:`CheckResult` (default: :func:`_call`).
    """
    call = call or _call
    worst = 0.0
    for args, expected in cases:
        got = call(exercise, fn, *(a.clone() if isinstance(a, torch.Tensor) else a for a in args))  # fn may modify
        if isinstance(got, CheckResult):
            return got
        if not _close(got, expected):
            for wrong, hint in mistakes:
                if _close(got, wrong(*args).to(torch.float64)):
                    return CheckResult(exercise, False, hint)
            if got.shape != expected.shape:
                return CheckResult(exercise, False, f"shape {tuple(got.shape)}, expected {tuple(expected.shape)} "
                                                    f"({shape_hint}).")
            diff = float((got - expected).abs().max())
            return CheckResult(exercise, False, f"differs from {reference} by up to {diff:.3g}. "
                                                "Check your code step by step on a small example.")
        worst = max(worst, float((got - expected).abs().max()))
    return CheckResult(exercise, True, f"matches {reference} on {len(cases)} random cases "
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


# ----------------------------------------------------------------------------------------------
# Chapters 1 and 3-8: one check each, against the book's own helpers
# ----------------------------------------------------------------------------------------------


def batchnorm_halfway(passes: object, momentum: float = 0.1) -> CheckResult:
    """Chapter 1, exercise ``ex-nt-bn``: ``passes`` is your answer — how many
    forward passes in ``train()`` mode move BatchNorm's running mean at least halfway from its
    initial value to the batch mean. The check runs a real ``nn.BatchNorm1d`` to find out."""
    exercise = "BatchNorm halfway"
    if (isinstance(passes, bool) or not isinstance(passes, int | float) or not math.isfinite(passes)
            or float(passes) != int(passes) or passes < 1):
        return CheckResult(exercise, False, f"{passes!r} is not a number of passes: answer with a whole number ≥ 1.")
    n = int(passes)
    if n > 10_000:
        return CheckResult(exercise, False, f"{n} passes is far too many: each pass moves the running mean "
                                            "by a fixed fraction of the remaining gap.")

    def moved(k: int) -> float:
        bn = torch.nn.BatchNorm1d(1, momentum=momentum).train()
        x = torch.ones(4, 1)  # batch mean 1, running mean starts at 0
        with torch.no_grad():
            for _ in range(k):
                bn(x)
        return float(bn.running_mean[0])

    now, before = moved(n), moved(n - 1)
    if now < 0.5:
        return CheckResult(exercise, False, f"after {n} passes the running mean has moved only {now:.0%} of the "
                                            "way: more passes are needed. What fraction of the gap is left after each?")
    if before >= 0.5:
        return CheckResult(exercise, False, f"{n} passes get there, but so do fewer: after {n - 1} it has already "
                                            f"moved {before:.0%} of the way. Find the smallest number.")
    return CheckResult(exercise, True, f"after {n - 1} passes the running mean has moved {before:.0%} of the way, "
                                       f"after {n} passes {now:.0%} (measured on nn.BatchNorm1d, momentum {momentum}).")


def _padded_batch(g: torch.Generator, b: int, length: int, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    hidden = torch.randn(b, length, h, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, length + 1, (b,), generator=g)
    lengths[0] = length  # the longest text sets the padded length
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return hidden, mask


def mean_pooling(fn: Callable[[torch.Tensor, torch.Tensor], object], seed: int = 0) -> CheckResult:
    """Chapter 3, exercise ``ex-fe-meanpool``: ``fn(last_hidden, attention_mask)`` must return the mean of
    each text's token vectors, padding excluded: ``last_hidden`` is ``[B, L, H]``, ``attention_mask``
    is ``[B, L]`` (1 for a real token, 0 for padding), the result ``[B, H]``."""
    from .features import mean_pool

    g = torch.Generator().manual_seed(seed)
    cases = []
    for b, length, h in ((4, 7, 5), (3, 12, 8), (6, 5, 3), (2, 9, 16), (5, 10, 4)):
        hidden, mask = _padded_batch(g, b, length, h)
        cases.append(((hidden, mask), mean_pool(hidden, mask)))
    masked = lambda x, m: (x * m.unsqueeze(-1).to(x.dtype)).sum(1)  # noqa: E731
    mistakes = [
        (lambda x, m: x.mean(1), "your mean includes the padding positions: only the real tokens of each text "
                                 "should count. Which input tells you which positions are real?"),
        (lambda x, m: masked(x, m) / x.shape[1], "you left out the padding's vectors but still divided by the padded "
                                                 "length: a short text's embedding comes out too small."),
        (lambda x, m: masked(x, m), "this is a sum, not a mean: divide by the number of real tokens of each text."),
        (lambda x, m: x[:, 0], "this is the first token's vector ([CLS] pooling), not the mean over the tokens."),
    ]
    return _compare("mean pooling", fn, cases, mistakes, reference="features.mean_pool",
                    shape_hint="one H-dimensional vector per text")


def stage_learning_rates(fn: Callable[[Sequence[str], float, float, float], object]) -> CheckResult:
    """Chapter 4, exercise ``ex-ft-stage-lrs``: ``fn(stage_names, head_lr, backbone_lr, lr_decay)``
    must return ``{stage: learning rate}`` as :func:`transfer_utils.recipes.stage_learning_rates`
    does. ``stage_names`` runs from the input to the output; the last name is the new head."""
    from .recipes import learning_rates_by_stage as reference

    exercise = "stage learning rates"
    cases = [(["stem", "layer1", "layer2", "layer3", "layer4", "fc"], 1e-3, 1e-4, 0.5),
             (["embeddings", "encoder.0", "encoder.1", "classifier"], 2e-4, 3e-5, 0.8),
             (["features.0", "features.1", "head"], 1e-2, 1e-3, 0.1),
             (["body", "head"], 1e-3, 1e-4, 0.5)]

    def bottom_up(names: Sequence[str], head: float, backbone: float, decay: float) -> dict[str, float]:
        return {**{n: backbone * decay**i for i, n in enumerate(names[:-1])}, names[-1]: head}

    def one_too_many(names: Sequence[str], head: float, backbone: float, decay: float) -> dict[str, float]:
        return {**{n: backbone * decay ** (d + 1) for d, n in enumerate(reversed(names[:-1]))}, names[-1]: head}

    def head_as_backbone(names: Sequence[str], head: float, backbone: float, decay: float) -> dict[str, float]:
        return {**reference(names, head, backbone, decay), names[-1]: backbone}

    def head_decayed(names: Sequence[str], head: float, backbone: float, decay: float) -> dict[str, float]:
        return {n: head * decay**d for d, n in enumerate(reversed(names))}

    mistakes = [
        (bottom_up, "your decay runs the wrong way: the stages nearest the input hold the most general features "
                    "and should move the least."),
        (one_too_many, "one factor of lr_decay too many: the stage right below the head gets backbone_lr itself."),
        (head_as_backbone, "the backbone is right, but the head is new and randomly initialised: which learning "
                           "rate is meant for it?"),
        (head_decayed, "you decayed from head_lr through every stage: the backbone has its own starting rate."),
    ]

    def same(got: dict[str, float], want: dict[str, float]) -> bool:
        return set(got) == set(want) and all(math.isclose(float(got[k]), want[k], rel_tol=1e-9) for k in want)

    for names, head, backbone, decay in cases:
        got = _invoke(exercise, fn, (list(names), head, backbone, decay), "a dict {stage name: lr}")
        if isinstance(got, CheckResult):
            return got
        if not isinstance(got, dict):
            return CheckResult(exercise, False, f"your function returned a {type(got).__name__}, not a dict.")
        want = reference(names, head, backbone, decay)
        if set(got) != set(want):
            return CheckResult(exercise, False, f"for stages {names} the keys must be exactly those names "
                                                f"(got {sorted(map(str, got))}).")
        try:
            ok = same(got, want)
        except (TypeError, ValueError):
            return CheckResult(exercise, False, "every value of the dict must be a number (a learning rate).")
        if not ok:
            for wrong, hint in mistakes:
                if same(got, wrong(names, head, backbone, decay)):
                    return CheckResult(exercise, False, hint)
            return CheckResult(exercise, False, f"not the rates recipes.stage_learning_rates gives for {names} "
                                                f"(head_lr={head}, backbone_lr={backbone}, lr_decay={decay}).")
    return CheckResult(exercise, True, f"matches recipes.stage_learning_rates on {len(cases)} backbones.")


def _index_set(exercise: str, fn: Callable[..., object], *args: object) -> torch.Tensor | CheckResult:
    """The learner's indices as a sorted float64 tensor (list, array or tensor; order ignored)."""
    out = _invoke(exercise, fn, args, "the list of indices")
    if isinstance(out, CheckResult):
        return out
    try:
        values = torch.as_tensor(out).reshape(-1).to(torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return CheckResult(exercise, False, f"your function returned a {type(out).__name__} that is not a list of "
                                            "indices.")
    if values.numel() and not torch.equal(values, values.round()):
        return CheckResult(exercise, False, "return the indices of the images (whole numbers), not probabilities.")
    return torch.unique(values)  # sorted, without repeats


def weight_interpolation(fn: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor], float], object],
                         seed: int = 0) -> CheckResult:
    """Chapter 4, exercise ``ex-ft-interpolate``: ``fn(state_a, state_b, alpha)`` gets two state dicts
    of one architecture and must return a new one holding ``(1 - alpha) * state_a + alpha * state_b``
    for every floating-point tensor, as :func:`transfer_utils.weightspace.interpolate` does; integer
    counters (BatchNorm's ``num_batches_tracked``) stay integers, copied from either state."""
    from .weightspace import interpolate as reference

    exercise = "weight interpolation"
    counter = "bn.num_batches_tracked"
    g = torch.Generator().manual_seed(seed)
    cases = []
    for shapes, alpha in ((((3, 4), (3,)), 0.25), (((2, 2, 3, 3), (5,)), 0.7), (((6,),), 0.0),
                          (((4, 2),), 1.0), (((3, 3), (2,)), 0.4)):
        a = {f"layer{i}.weight": torch.randn(s, generator=g, dtype=torch.float64) for i, s in enumerate(shapes)}
        b = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in a.items()}
        a[counter], b[counter] = torch.tensor(7), torch.tensor(12)
        cases.append(((a, b, alpha), _flat(reference(a, b, alpha), a)))

    def call(exercise: str, fn: Callable[..., object], a: dict, b: dict, alpha: float) -> torch.Tensor | CheckResult:
        out = _invoke(exercise, fn, ({k: v.clone() for k, v in a.items()}, {k: v.clone() for k, v in b.items()}, alpha),
                      "a new dict {name: tensor}")
        if isinstance(out, CheckResult):
            return out
        if not isinstance(out, dict) or not all(isinstance(v, torch.Tensor) for v in out.values()):
            return CheckResult(exercise, False, f"your function returned a {type(out).__name__}: return a dict "
                                                "{name: tensor}, like a state_dict().")
        if set(out) != set(a):
            return CheckResult(exercise, False, f"your dict has the names {sorted(out)}, the states have "
                                                f"{sorted(a)}: one entry per tensor of the state dicts.")
        got = out[counter]
        if got.is_floating_point() or int(got) not in (int(a[counter]), int(b[counter])):
            return CheckResult(exercise, False, f"{counter!r} came back as {got.tolist()} ({got.dtype}): it counts "
                                                "BatchNorm's updates, it is not a weight. Keep one state's integer.")
        return _flat(out, a)

    mistakes = [
        (lambda a, b, t: _flat({k: t * v + (1 - t) * b[k] if v.is_floating_point() else v for k, v in a.items()}, a),
         "alpha weighs the wrong end: alpha = 0 must give back the first state, alpha = 1 the second."),
        (lambda a, b, t: _flat({k: (v + b[k]) / 2 if v.is_floating_point() else v for k, v in a.items()}, a),
         "you return the plain average whatever alpha is: alpha sets how far along the line to go."),
        (lambda a, b, t: _flat({k: v + t * b[k] if v.is_floating_point() else v for k, v in a.items()}, a),
         "the two weights of your combination do not add up to 1: the first state's share must shrink as "
         "alpha grows."),
        (lambda a, b, t: _flat({k: v + t * (v - b[k]) if v.is_floating_point() else v for k, v in a.items()}, a),
         "you move away from the second state instead of towards it: check the direction of the difference."),
    ]
    return _compare(exercise, fn, cases, mistakes, reference="weightspace.interpolate",
                    shape_hint="every tensor keeps its shape", call=call)


def _flat(state: dict, order: dict) -> torch.Tensor:
    """The floating-point tensors of ``state`` (in ``order``'s key order) as one float64 vector."""
    return torch.cat([state[k].detach().reshape(-1).to(torch.float64) for k, v in order.items() if v.is_floating_point()])


def confident_mistakes(fn: Callable[[torch.Tensor, torch.Tensor, float], object], seed: int = 0) -> CheckResult:
    """Chapter 5, exercise ``ex-resnet-confident``: ``fn(probs, labels, threshold)`` must return the indices of
    the examples the model gets wrong while giving its predicted class a probability above
    ``threshold``; ``probs`` is ``[N, K]`` (rows sum to 1), ``labels`` is ``[N]``. Order is ignored."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    for n, k, threshold in ((40, 2, 0.8), (60, 5, 0.6), (30, 3, 0.7), (50, 17, 0.5)):
        probs = torch.softmax(3 * torch.randn(n, k, generator=g, dtype=torch.float64), 1)
        labels = torch.randint(0, k, (n,), generator=g)
        want = torch.nonzero((probs.argmax(1) != labels) & (probs.max(1).values > threshold)).reshape(-1)
        cases.append(((probs, labels, threshold), want.to(torch.float64)))

    def idx(mask: torch.Tensor) -> torch.Tensor:
        return torch.nonzero(mask).reshape(-1).to(torch.float64)

    mistakes = [
        (lambda p, y, t: idx(p.max(1).values > t), "your list includes images the model got right: keep only "
                                                   "the wrong predictions."),
        (lambda p, y, t: idx(p.argmax(1) != y), "your list includes mistakes the model was unsure of: keep only "
                                                "those above the threshold."),
        (lambda p, y, t: idx((p.argmax(1) != y) & (p.gather(1, y[:, None])[:, 0] > t)),
         "you thresholded the probability of the true class; the model's confidence is the probability of the class "
         "it predicted."),
        (lambda p, y, t: idx((p.argmax(1) == y) & (p.max(1).values > t)), "these are the confident *right* answers."),
    ]
    return _compare("confident mistakes", fn, cases, mistakes, reference="the expected indices",
                    shape_hint="the number of confident mistakes", call=_index_set)


def _scalar(exercise: str, fn: Callable[..., object], *args: object) -> torch.Tensor | CheckResult:
    """The learner's one number (a float, or a tensor or array holding one) as a float64 scalar tensor."""
    out = _invoke(exercise, fn, args, "one number")
    if isinstance(out, CheckResult):
        return out
    try:
        value = torch.as_tensor(out, dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        return CheckResult(exercise, False, f"your function returned a {type(out).__name__}, not a number.")
    if value.numel() != 1:
        return CheckResult(exercise, False, f"your function returned {value.numel()} numbers: return one, the ECE.")
    return value[0]


def expected_calibration_error(fn: Callable[[torch.Tensor, torch.Tensor, int], object], seed: int = 0) -> CheckResult:
    """Chapter 5, exercise ``ex-resnet-ece``: ``fn(probs, labels, n_bins)`` must return the expected
    calibration error of ``probs`` (``[N, K]``, rows sum to 1) against ``labels`` (``[N]``), with
    bin ``m`` holding the confidences in ``[m/M, (m+1)/M)``, like
    :func:`transfer_utils.evaluate.expected_calibration_error` (and torchmetrics)."""
    from .evaluate import expected_calibration_error as reference

    g = torch.Generator().manual_seed(seed)
    cases = []
    for n, k, scale, n_bins in ((200, 2, 3.0, 15), (150, 5, 1.5, 10), (80, 3, 4.0, 15), (300, 2, 1.0, 5)):
        probs = torch.softmax(scale * torch.randn(n, k, generator=g, dtype=torch.float64), 1)
        labels = torch.randint(0, k, (n,), generator=g)
        cases.append(((probs, labels, n_bins), torch.tensor(reference(probs, labels, n_bins=n_bins),
                                                            dtype=torch.float64)))

    def parts(p: torch.Tensor, y: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        conf, pred = p.max(1)
        return conf, (pred == y).to(torch.float64), (conf * m).floor()

    def binned(p: torch.Tensor, y: torch.Tensor, m: int, weighted: bool = True, absolute: bool = True) -> torch.Tensor:
        conf, correct, bins = parts(p, y, m)
        gaps = [((bins == b).to(torch.float64).mean() if weighted else torch.tensor(1.0, dtype=torch.float64),
                 correct[bins == b].mean() - conf[bins == b].mean()) for b in bins.unique()]
        total = sum(w * (gap.abs() if absolute else gap) for w, gap in gaps)
        return torch.as_tensor(total if weighted else total / len(gaps), dtype=torch.float64)

    def positive_class(p: torch.Tensor, y: torch.Tensor, m: int) -> torch.Tensor:
        conf, correct = p[:, 1], (y == 1).to(torch.float64)
        bins = (conf * m).floor()
        return torch.as_tensor(sum((bins == b).to(torch.float64).mean() * (correct[bins == b].mean()
                                                                            - conf[bins == b].mean()).abs()
                                   for b in bins.unique()), dtype=torch.float64)

    mistakes = [
        (lambda p, y, m: binned(p, y, m, weighted=False), "you averaged the bins' gaps equally; weight each bin by "
                                                         "the share of the predictions that fall in it."),
        (lambda p, y, m: binned(p, y, m, absolute=False).abs(), "you added the signed gaps, so over- and "
                                                                "underconfident bins cancel: take each bin's "
                                                                "absolute gap before adding."),
        (lambda p, y, m: (parts(p, y, m)[1] - parts(p, y, m)[0]).abs().mean(),
         "you averaged |correct - confidence| over single predictions: compare each bin's accuracy with its "
         "mean confidence."),
        (lambda p, y, m: binned(p, y, m, absolute=False), "you added the signed gaps: take each bin's absolute gap."),
        (positive_class, "you binned the probability of class 1; the confidence is the probability of the class "
                         "the model predicts (the largest one)."),
    ]
    return _compare("expected calibration error", fn, cases, mistakes,
                    reference="evaluate.expected_calibration_error", shape_hint="one number", call=_scalar)


def _id_list(exercise: str, fn: Callable[..., object], ids: list[int], max_tokens: int) -> torch.Tensor | CheckResult:
    out = _invoke(exercise, fn, (list(ids), max_tokens), "the list of ids you keep")
    if isinstance(out, CheckResult):
        return out
    try:
        kept = [int(i) for i in out]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return CheckResult(exercise, False, f"your function returned a {type(out).__name__}, not a list of ids.")
    if len(kept) > max_tokens:
        return CheckResult(exercise, False, f"you kept {len(kept)} ids with a budget of {max_tokens}: never more "
                                            "than max_tokens.")
    return torch.tensor(kept, dtype=torch.float64)


def head_tail_truncation(fn: Callable[[list[int], int], object]) -> CheckResult:
    """Chapter 6, exercise ``ex-bert-headtail``: ``fn(ids, max_tokens)`` must keep at most ``max_tokens`` of the
    word-piece ``ids`` the way ``text.truncate_ids(ids, max_tokens, "head+tail")`` does: the first
    quarter of the budget (rounded down) from the start and the rest from the end; a text that
    fits is returned unchanged."""
    from .text import truncate_ids

    cases = []
    for length, budget in ((20, 8), (600, 510), (5, 8), (9, 9), (1000, 128), (7, 1), (13, 6)):
        ids = list(range(100, 100 + length))
        cases.append(((ids, budget), torch.tensor(truncate_ids(ids, budget, "head+tail"), dtype=torch.float64)))

    def as_tensor(ids: list[int]) -> torch.Tensor:
        return torch.tensor(ids, dtype=torch.float64)

    def split(ids: list[int], budget: int, head: int) -> torch.Tensor:
        return as_tensor(ids[:head] + ids[len(ids) - (budget - head):])

    mistakes = [
        (lambda ids, b: as_tensor(ids[:b]), "you kept only the beginning (head truncation); head+tail keeps the end "
                                            "of the review too, where its verdict often is."),
        (lambda ids, b: as_tensor(ids[-b:]), "you kept only the end (tail truncation); head+tail keeps the beginning "
                                             "too."),
        (lambda ids, b: split(ids, b, b - b // 4) if len(ids) > b else as_tensor(ids),
         "the split is the wrong way round: the head gets the smaller share of the budget."),
        (lambda ids, b: split(ids, b, b // 2) if len(ids) > b else as_tensor(ids),
         "an even split; this strategy gives the head one quarter of the budget (rounded down)."),
        (lambda ids, b: split(ids, b, b // 4), "a text that already fits must come back unchanged; yours repeats or "
                                               "drops ids."),
    ]
    return _compare("head+tail truncation", fn, cases, mistakes, reference='text.truncate_ids(..., "head+tail")',
                    shape_hint="the number of ids kept", call=_id_list)


def distillation_loss(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, float], object],
                      seed: int = 0) -> CheckResult:
    """Chapter 7, exercise ``ex-app-kd-loss``: ``fn(student_logits, teacher_logits, labels, T, alpha)``
    must return the batch-averaged loss ``alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)) +
    (1 − alpha) · CE(s, y)`` as a scalar tensor, like :func:`transfer_utils.distill.distillation_loss`."""
    from .distill import distillation_loss as reference

    g = torch.Generator().manual_seed(seed)
    cases = []
    for n, k, T, alpha in ((8, 5, 4.0, 0.9), (3, 17, 2.0, 0.5), (16, 2, 8.0, 0.7), (5, 10, 3.0, 0.25)):
        s, t = torch.randn(n, k, generator=g, dtype=torch.float64), 2 * torch.randn(n, k, generator=g, dtype=torch.float64)
        y = torch.randint(0, k, (n,), generator=g)
        cases.append(((s, t, y, T, alpha), reference(s, t, y, T, alpha).detach()))

    def kl(p_logits: torch.Tensor, q_logits: torch.Tensor, reduction: str = "batchmean") -> torch.Tensor:
        """KL(softmax(p) ‖ softmax(q)) with F.kl_div's reductions (its "mean" warns, so it is spelled out)."""
        pointwise = F.kl_div(F.log_softmax(q_logits, -1), F.log_softmax(p_logits, -1), log_target=True,
                             reduction="none")
        return {"batchmean": pointwise.sum() / len(p_logits), "sum": pointwise.sum(), "mean": pointwise.mean()}[reduction]

    def combine(soft: torch.Tensor, s: torch.Tensor, y: torch.Tensor, a: float) -> torch.Tensor:
        return a * soft + (1 - a) * F.cross_entropy(s, y)

    mistakes = [
        (lambda s, t, y, T, a: combine(kl(t / T, s / T), s, y, a),
         "the soft term is too small by a factor that depends on T: without it its gradients shrink as T grows "
         "(chapter 2's distillation gradient)."),
        (lambda s, t, y, T, a: combine(T * T * kl(s / T, t / T), s, y, a),
         "the KL divergence runs the wrong way: the teacher's softened distribution is the target, the student's "
         "is the one being fitted."),
        (lambda s, t, y, T, a: combine(T * T * kl(t, s / T), s, y, a),
         "the teacher's scores must be softened at the same temperature as the student's."),
        (lambda s, t, y, T, a: combine(T * T * kl(t / T, s / T, "mean"), s, y, a),
         "F.kl_div's reduction='mean' averages over the classes as well as the examples: the KL per example "
         "is a sum over classes, averaged over the batch."),
        (lambda s, t, y, T, a: combine(T * T * kl(t / T, s / T, "sum"), s, y, a),
         "the soft term is summed over the batch; average it over the examples, like the cross-entropy."),
        (lambda s, t, y, T, a: (1 - a) * T * T * kl(t / T, s / T) + a * F.cross_entropy(s, y),
         "alpha weighs the wrong term: here alpha is the weight of the teacher's soft targets."),
    ]
    return _compare("distillation loss", fn, cases, mistakes, reference="distill.distillation_loss",
                    shape_hint="a single number, the mean over the batch")


def _moments(exercise: str, fn: Callable[..., object], *args: object) -> torch.Tensor | CheckResult:
    out = _invoke(exercise, fn, args, "(mean, var)")
    if isinstance(out, CheckResult):
        return out
    if not isinstance(out, tuple | list) or len(out) != 2 or not all(isinstance(v, torch.Tensor) for v in out):
        return CheckResult(exercise, False, "return a pair of tensors (mean, var), one value per channel each.")
    mean, var = (v.detach().to(torch.float64) for v in out)
    if mean.shape != var.shape:
        return CheckResult(exercise, False, f"mean {tuple(mean.shape)} and var {tuple(var.shape)} must have the same "
                                            "shape: one value per channel.")
    return torch.stack([mean, var])


def batchnorm_moments(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], object], seed: int = 0) -> CheckResult:
    """Chapter 8, exercise ``ex-ddp-syncbn``: ``fn(counts, sums, sumsqs)`` gets what each of R ranks
    contributes to one all-reduce — its number of samples ``counts [R]``, and per channel the sum
    ``sums [R, C]`` and sum of squares ``sumsqs [R, C]`` of its activations — and must return the
    whole batch's ``(mean, var)`` per channel, with BatchNorm's biased variance (divide by N)."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    for counts, c in (((5, 11), 3), ((2, 9, 4), 4), ((16, 3), 1), ((7, 7, 1, 12), 6)):
        shards = [torch.randn(n, c, generator=g, dtype=torch.float64) * (r + 1) + 2 * r for r, n in enumerate(counts)]
        whole = torch.cat(shards)
        stats = (torch.tensor(counts, dtype=torch.float64), torch.stack([x.sum(0) for x in shards]),
                 torch.stack([(x**2).sum(0) for x in shards]))
        cases.append((stats, torch.stack([whole.mean(0), whole.var(0, unbiased=False)])))

    def per_rank(n: torch.Tensor, s: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = s / n[:, None]
        return mean, q / n[:, None] - mean**2

    def whole(n: torch.Tensor, s: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = s.sum(0) / n.sum()
        return mean, q.sum(0) / n.sum() - mean**2

    def rank_averages(n: torch.Tensor, s: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return torch.stack([v.mean(0) for v in per_rank(n, s, q)])

    def within_ranks_only(n: torch.Tensor, s: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return torch.stack([whole(n, s, q)[0], (per_rank(n, s, q)[1] * n[:, None]).sum(0) / n.sum()])

    def unbiased(n: torch.Tensor, s: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        mean, var = whole(n, s, q)
        return torch.stack([mean, var * n.sum() / (n.sum() - 1)])

    def mean_of_squares(n: torch.Tensor, s: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return torch.stack([whole(n, s, q)[0], q.sum(0) / n.sum()])

    def unweighted_mean(n: torch.Tensor, s: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return torch.stack([per_rank(n, s, q)[0].mean(0), whole(n, s, q)[1]])

    mistakes = [
        (rank_averages, "you averaged the ranks' own means and variances as if every rank held as many samples, "
                        "and as if the ranks' means did not differ. Which three totals does one all-reduce give you?"),
        (within_ranks_only, "the mean is right, but the variance of the whole batch is more than the average of the "
                            "ranks' variances: their means differ too."),
        (unbiased, "that is the unbiased variance (divide by N − 1); BatchNorm normalises with the biased one."),
        (mean_of_squares, "the mean is right; your variance is the mean of the squares. What must be taken away "
                          "from it?"),
        (unweighted_mean, "the variance is right but the mean is not: the ranks hold different numbers of samples."),
    ]
    return _compare("BatchNorm moments", fn, cases, mistakes, reference="the moments of the whole batch",
                    shape_hint="mean and var, one value per channel", call=_moments)


def lora_delta(fn: Callable[[torch.Tensor, torch.Tensor, float, int], object], seed: int = 0) -> CheckResult:
    """The parameter-efficient chapter (09), exercise ``ex-peft-merge``: ``fn(A, B, alpha, r)`` gets a LoRA pair — ``A`` of shape
    ``[r, d_in]``, ``B`` of shape ``[d_out, r]`` — and must return the update ``(alpha / r) · B A`` that
    merging adds to the frozen weight, shaped like it: ``[d_out, d_in]``, like :func:`transfer_utils.lora.lora_delta`."""
    from .lora import lora_delta as reference

    g = torch.Generator().manual_seed(seed)
    cases = []
    for d_in, d_out, r, alpha in ((6, 4, 2, 16.0), (5, 9, 3, 8.0), (12, 7, 4, 4.0), (8, 8, 1, 2.0), (10, 3, 8, 32.0)):
        A = torch.randn(r, d_in, generator=g, dtype=torch.float64)
        B = torch.randn(d_out, r, generator=g, dtype=torch.float64)
        cases.append(((A, B, alpha, r), reference(A, B, alpha, r)))
    mistakes = [
        (lambda A, B, a, r: B @ A, "the product is right but the scale alpha / r is missing: the merged model would not "
                                   "compute what the trained one did."),
        (lambda A, B, a, r: (r / a) * (B @ A), "the scale is upside down: the LoRA path multiplies by alpha / r."),
        (lambda A, B, a, r: a * (B @ A), "scaled by alpha, but not divided by the rank."),
        (lambda A, B, a, r: (B @ A) / r, "divided by the rank, but alpha is missing."),
        (lambda A, B, a, r: (a / r) * (B @ A).T, "the update is transposed: an nn.Linear stores its weight as "
                                                 "out_features × in_features."),
    ]
    return _compare("LoRA merge", fn, cases, mistakes, reference="lora.lora_delta",
                    shape_hint="the update has the frozen weight's shape, out_features × in_features")
