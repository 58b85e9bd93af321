"""The global Gaussian mixture machine (issue 15, docs/method.md §11): exact noisy score."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from wavescore import ScoreMachine, WavescoreError, load_dataset
from wavescore.mixture import MixtureMachine, kmeans


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def fitted(digits):
    return MixtureMachine(components=10).fit(digits)


def _noisy(x, s, seed=0):
    return x + s * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)


def test_one_component_is_the_gaussian_score(digits):
    x = digits.double()
    m1 = MixtureMachine(components=1, shrinkage=1e-6).fit(x)
    g = ScoreMachine(family="gaussian", ridge=1e-6).fit(x, progress=False)
    y = _noisy(x[:50], 0.3)
    for s in (0.002, 0.3, 80.0):
        ref = g.score(y, s)
        assert float((m1.score(y, s) - ref).abs().max()) < 1e-7 * float(ref.abs().max())


def test_score_is_the_gradient_of_the_noisy_log_density(fitted, digits):
    w = fitted.transform_.forward(_noisy(digits[:40], 0.3).double()).requires_grad_(True)
    for s in (0.002, 0.05, 0.3, 2.0, 80.0):
        grad, = torch.autograd.grad(fitted.log_density(w, s).sum(), w)
        got = fitted.wavelet_score(w.detach(), s)
        assert torch.isfinite(got).all()
        assert float((got - grad).abs().max()) <= 1e-9 * float(grad.abs().max())


def test_statistics_merge_exactly(fitted, digits):
    w = fitted.transform_.forward(digits.double())
    labels = kmeans(w, 10, 5, seed=0)
    whole = fitted.statistics(w, labels)
    halves = fitted.merge_stats(fitted.statistics(w[:900], labels[:900]), fitted.statistics(w[900:], labels[900:]))
    for k in whole:
        assert torch.allclose(whole[k], halves[k], rtol=1e-12, atol=1e-9)


def test_mixture_beats_the_gaussian_and_round_trips(fitted, digits, tmp_path):
    g = ScoreMachine(family="gaussian").fit(digits, progress=False)
    x = digits.double()
    y = _noisy(x, 0.5, seed=1)
    assert float(((fitted.denoise(y, 0.5) - x) ** 2).mean()) < 0.9 * float(((g.denoise(y, 0.5) - x) ** 2).mean())
    again = MixtureMachine.load(fitted.save(tmp_path / "m.wsm"))
    assert torch.allclose(again.denoise(y[:20], 0.5), fitted.denoise(y[:20], 0.5), rtol=0, atol=1e-12)


def test_bad_input(digits):
    with pytest.raises(WavescoreError, match="lower components"):
        MixtureMachine(components=50).fit(digits[:20])
    with pytest.raises(WavescoreError, match="shrinkage"):
        MixtureMachine(shrinkage=0.0)
    bad = digits[:100].clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(WavescoreError, match="NaN"):
        MixtureMachine(components=2).fit(bad)


def test_cli_fit_and_evaluate(tmp_path):
    import json

    from wavescore.cli import main

    wsm = tmp_path / "mix.wsm"
    assert main(["fit", "--data", "digits", "--family", "mixture", "--components", "5", "-o", str(wsm)]) == 0
    out = tmp_path / "e.json"
    assert main(["evaluate", "--model", str(wsm), "--data", "digits", "--sigmas", "0.5", "-o", str(out)]) == 0
    res = json.loads(out.read_text())
    assert list(res["models"]) == ["mixture-K5"] and 0 < res["models"]["mixture-K5"]["mse"][0] < 0.1


def test_auto_components_choose_by_held_out_error_and_round_trip(tmp_path):
    from wavescore.mixture import AUTO_COMPONENTS

    x = load_dataset("digits").double()
    m = MixtureMachine(components="auto").fit(x, progress=False)
    c = m.choice_
    assert c["candidates"] == [k for k in AUTO_COMPONENTS if k <= (len(x) - 143) // 10] == [10, 30, 100]
    score = [float(np.mean(np.log(e))) for e in c["held_out_mse"]]
    assert c["chosen"] == c["candidates"][int(np.argmin(score))] == m.weights_.shape[0]
    assert m.name == f"mixture-Kauto{c['chosen']}" and m.n_samples_ == len(x)
    again = MixtureMachine.load(m.save(tmp_path / "auto.wsm"))
    y = x[:20] + 0.3 * torch.randn(x[:20].shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert again.choice_ == c and torch.allclose(again.denoise(y, 0.3), m.denoise(y, 0.3), rtol=0, atol=1e-12)
    with pytest.raises(WavescoreError, match="auto"):
        MixtureMachine(components="auto").fit(x[:50], progress=False)
