"""Samplers on Gaussian data, where the machine's score is exact (method.md §5)."""
import math

import pytest
import torch

from wavescore import ScoreMachine, WavescoreError
from wavescore.samplers import edm_sigmas, sample


def _gaussian_machine(d=16, n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    cov = a @ a.T * 0.5 + 0.02 * torch.eye(d, dtype=torch.float64)
    mu = 0.5 * torch.randn(d, generator=g, dtype=torch.float64)
    x = mu + torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    m = ScoreMachine(family="gaussian", ridge=0).fit(x.reshape(n, 1, 4, 4), progress=False)
    w = x - x.mean(0)
    return m, x.mean(0), w.T @ w / n  # the machine's exact target: the empirical Gaussian


def test_edm_sigmas():
    s = edm_sigmas(18)
    assert len(s) == 19 and s[-1] == 0
    assert torch.isclose(s[0], torch.tensor(80.0, dtype=torch.float64))
    assert torch.isclose(s[-2], torch.tensor(0.002, dtype=torch.float64))
    assert (s[:-1] > s[1:]).all()


@pytest.mark.parametrize("sampler", ["heun", "euler", "edm", "ddim"])
def test_samples_match_gaussian_moments(sampler):
    m, mu, cov = _gaussian_machine()
    n = 3000
    steps = 40 if sampler == "heun" else 120  # first-order samplers need more steps
    x = sample(m, n, steps=steps, sampler=sampler, seed=1).reshape(n, -1)
    # Mean: each coordinate's standard error is sqrt(var/n); allow 4.5 SE over 16 coordinates.
    se = (cov.diagonal() / n).sqrt()
    assert ((x.mean(0) - mu).abs() / se).max() < 4.5
    # Covariance: the sample covariance of n Gaussian draws has relative Frobenius error about
    # sqrt((d + 1) / n) ~ 0.075 here; allow twice that for sampling noise plus discretisation.
    c = x - x.mean(0)
    emp = c.T @ c / n
    assert (emp - cov).norm() / cov.norm() < 2 * math.sqrt(17 / n)


def test_seed_reproducible_and_errors():
    m, _, _ = _gaussian_machine()
    a = sample(m, 4, steps=5, seed=3, sampler="edm")
    b = sample(m, 4, steps=5, seed=3, sampler="edm")
    assert torch.equal(a, b)
    assert not torch.equal(a, sample(m, 4, steps=5, seed=4, sampler="edm"))
    with pytest.raises(WavescoreError, match="unknown sampler"):
        sample(m, 2, sampler="rk45")
    with pytest.raises(WavescoreError, match="shape"):
        sample(object(), 2)
