"""The wavelet cascade (issue 15, docs/method.md §14): a coarse model of a_J and local mixtures of
the details given the coarser image, sampled coarse to fine."""
from __future__ import annotations

import pytest
import torch

from wavescore import WavescoreError, load_dataset
from wavescore.cascade import CascadeMachine
from wavescore.models import load_model
from wavescore.samplers import sample
from wavescore.transform import WaveletTransform


def _stationary_gaussian(n: int, side: int = 8, seed: int = 0) -> torch.Tensor:
    """Circularly stationary Gaussian images: white noise convolved with a fixed 3x3 kernel, plus a
    mean; closed under shifts by two pixels (each image appears with all its even shifts)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, side, side, generator=gen, dtype=torch.float64)
    kernel = torch.tensor([[0.2, 0.5, 0.1], [0.6, 1.0, 0.4], [0.1, 0.3, 0.2]], dtype=torch.float64)
    x = sum(kernel[i, j] * torch.roll(z, (i - 1, j - 1), (2, 3)) for i in range(3) for j in range(3))
    shifts = [torch.roll(x, (2 * a, 2 * b), (2, 3)) for a in range(side // 2) for b in range(side // 2)]
    return 0.3 * torch.cat(shifts) + 0.1


@pytest.fixture(scope="module")
def gaussian_data():
    return _stationary_gaussian(250)  # 250 x 16 shifts


@pytest.fixture(scope="module")
def gaussian_cascade(gaussian_data):
    # K = 1 and a window covering each 4x4 band: every conditional is the full Gaussian one.
    return CascadeMachine(coarse={"family": "gaussian", "ridge": 1e-12}, components=1, radius=2, levels=1,
                          shrinkage=1e-12, em_iterations=0).fit(gaussian_data, progress=False)


def test_gaussian_conditionals_are_the_closed_form(gaussian_cascade, gaussian_data):
    """score(y_d | a) = -(C + s^2 I)^-1 (y_d - mu_d - B (a - mu_a)) from the data's own covariance."""
    t = WaveletTransform((1, 8, 8), "haar", 1)
    v = t.forward(gaussian_data)
    mu, S = v.mean(0), torch.cov(v.T, correction=0)
    a, d = slice(0, 16), slice(16, 64)
    B = S[d, a] @ torch.linalg.inv(S[a, a])
    C = S[d, d] - B @ S[a, d]
    gen = torch.Generator().manual_seed(3)
    clean = v[:40]
    for s in (0.01, 0.5, 20.0):
        yd = clean[:, d] + s * torch.randn(40, 48, generator=gen, dtype=torch.float64)
        ref = -torch.linalg.solve(C + s * s * torch.eye(48, dtype=torch.float64),
                                  (yd - mu[d] - (clean[:, a] - mu[a]) @ B.T).T).T
        got = gaussian_cascade.conditional_score(0, yd, clean[:, a].reshape(-1, 1, 4, 4), s)
        assert torch.allclose(got, ref, rtol=1e-6, atol=1e-8 * float(ref.abs().max()))


def test_cascade_samples_have_the_gaussian_covariance(gaussian_cascade, gaussian_data):
    """Coarse-to-fine samples reproduce the Gaussian family's covariance (the training data's)
    within the sampling error of as many exact Gaussian draws."""
    n = 3000
    emp = torch.cov(gaussian_data.reshape(len(gaussian_data), -1).T, correction=0)
    x = sample(gaussian_cascade, n, steps=30, seed=1).reshape(n, -1)
    err = float(torch.linalg.norm(torch.cov(x.T) - emp) / torch.linalg.norm(emp))
    z = torch.randn(n, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z = z @ torch.linalg.cholesky(emp).T
    exact = float(torch.linalg.norm(torch.cov(z.T) - emp) / torch.linalg.norm(emp))
    assert err < 1.3 * exact  # measured 0.095 against 0.091
    assert abs(float(x.mean()) - 0.1) < 0.05
    # The test has power: a model without the correlations (the diagonal alone) misses by far more.
    assert float(torch.linalg.norm(torch.diag(torch.diag(emp)) - emp) / torch.linalg.norm(emp)) > 3 * exact


def test_level_errors_of_gaussian_conditionals_are_the_closed_form(gaussian_cascade, gaussian_data):
    """The conditional denoiser's error equals the Gaussian closed form s^2 - s^4 tr((C + s^2)^-1)/n
    in expectation: checked against that on 1,000 images (a sampling margin of 5%)."""
    t = WaveletTransform((1, 8, 8), "haar", 1)
    S = torch.cov(t.forward(gaussian_data).T, correction=0)
    a, d = slice(0, 16), slice(16, 64)
    C = S[d, d] - S[d, a] @ torch.linalg.solve(S[a, a], S[a, d])
    res = gaussian_cascade.level_errors(gaussian_data[:1000], (0.05, 0.5))
    (name, errs), = res["levels"].items()
    assert name == "level 1 (4x4)"
    for s, e in zip(res["sigmas"], errs):
        lam = torch.linalg.eigvalsh(C)
        closed = float((s * s * lam / (lam + s * s)).mean())  # the posterior variance per coefficient
        assert abs(e / closed - 1) < 0.05


def test_default_sampler_is_coarse_to_fine_and_matches_the_named_one(gaussian_cascade):
    a = sample(gaussian_cascade, 4, steps=5, seed=2)
    b = sample(gaussian_cascade, 4, steps=5, seed=2, sampler="cascade")
    assert torch.equal(a, b)
    with pytest.raises(WavescoreError, match="cascade machine"):
        sample(object(), 2, sampler="cascade", shape=(1, 8, 8))


def test_plug_in_denoiser_is_exact_at_low_noise_and_round_trips(tmp_path):
    x = load_dataset("digits").double()
    m = CascadeMachine(coarse={"family": "mixture", "components": 10}, components=8).fit(x[:1200], progress=False)
    test = x[1200:1300]
    y = test + 1e-3 * torch.randn(test.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(((m.denoise(y, 1e-3) - test) ** 2).mean()) < 1.5e-6  # noise alone: 1e-6
    for s in (0.002, 80.0):
        assert torch.isfinite(m.denoise(y, s)).all()
    name, again = load_model(str(m.save(tmp_path / "c.wsm")))
    assert isinstance(again, CascadeMachine) and name == m.name
    assert torch.allclose(again.denoise(y, 0.3), m.denoise(y, 0.3), rtol=0, atol=1e-12)
    assert torch.allclose(sample(again, 3, steps=4), sample(m, 3, steps=4), rtol=0, atol=1e-9)


def test_bad_input_is_one_line():
    x = load_dataset("digits").double()[:200]
    with pytest.raises(WavescoreError, match="at most 2 cascade levels"):
        CascadeMachine(levels=3).fit(x, progress=False)
    with pytest.raises(WavescoreError, match="too small"):
        CascadeMachine().fit(torch.zeros(10, 1, 2, 2, dtype=torch.float64), progress=False)
    with pytest.raises(WavescoreError, match="one machine"):
        CascadeMachine(coarse={"family": "cascade"})
    with pytest.raises(WavescoreError, match="components"):
        CascadeMachine(components=0)
    with pytest.raises(WavescoreError, match="not fitted"):
        CascadeMachine().denoise(x[:2], 0.1)
    with pytest.raises(WavescoreError, match="need at least"):
        CascadeMachine(coarse={"family": "gaussian"}, components=50000).fit(x, progress=False)


def test_cli_fit_sample_and_joined(tmp_path):
    import json

    from wavescore.cli import main

    wsm = tmp_path / "c.wsm"
    assert main(["fit", "--data", "digits", "--family", "cascade", "--components", "4", "-o", str(wsm)]) == 0
    png = tmp_path / "s.png"
    assert main(["sample", "--model", str(wsm), "-n", "4", "--steps", "4", "-o", str(png)]) == 0
    meta = json.loads(png.with_suffix(".json").read_text())
    assert meta["sampler"] == "cascade" and png.exists()
    joined = tmp_path / "j.wsm"
    assert main(["fit", "--data", "digits", "--family", "mixture+local-mixture", "--components", "5",
                 "-o", str(joined)]) == 0
    name, m = load_model(str(joined))
    assert name.startswith("joined(gaussian-P1+mixture-K5+local-mixture-pixel-K64-r1+")
