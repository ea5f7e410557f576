"""LogME: the closed-form evidence equals the Gaussian marginal likelihood it stands for, the
fixed-point updates find its maximum, and the score ranks informative features above noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from transfer_utils import transferability as tr
from transfer_utils.errors import DataError


def _data(n: int = 60, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(n, d))
    y = (f[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(float)
    return f, y


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.3, 4.0), (20.0, 0.5)])
def test_log_evidence_is_the_gaussian_marginal_likelihood(alpha: float, beta: float) -> None:
    f, y = _data()
    cov = np.eye(len(y)) / beta + f @ f.T / alpha  # y = F w + noise, w and noise integrated out
    assert tr.log_evidence(f, y, alpha, beta) == pytest.approx(multivariate_normal(cov=cov).logpdf(y), rel=1e-9)


@pytest.mark.parametrize("shape", [(60, 8), (20, 50)])  # more examples than features, and fewer
def test_fixed_point_finds_the_maximum(shape: tuple[int, int]) -> None:
    f, y = _data(*shape)
    best = tr.class_evidence(f, y)
    assert best.log_evidence == pytest.approx(tr.log_evidence(f, y, best.alpha, best.beta))
    for da in (0.5, 0.9, 1.1, 2.0):  # any step away from (alpha, beta) lowers the evidence
        assert tr.log_evidence(f, y, best.alpha * da, best.beta) < best.log_evidence
        assert tr.log_evidence(f, y, best.alpha, best.beta * da) < best.log_evidence


def test_informative_features_score_higher_than_noise() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=150)
    informative = np.eye(3)[labels] * 2 + rng.normal(size=(150, 3))
    good = np.hstack([informative, rng.normal(size=(150, 13))])
    noise = rng.normal(size=(150, 16))
    assert tr.logme(torch.tensor(good), torch.tensor(labels)) > tr.logme(noise, labels)


def test_bad_inputs_are_refused_with_the_reason() -> None:
    f, y = _data()
    with pytest.raises(DataError, match="one per feature row"):
        tr.logme(f, y[:-1].astype(int))
    with pytest.raises(DataError, match="integer class indices"):
        tr.logme(f, y)
    with pytest.raises(DataError, match="at least 2 classes"):
        tr.logme(f, np.zeros(len(f), dtype=int))
    f[3, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        tr.logme(f, y.astype(int))
