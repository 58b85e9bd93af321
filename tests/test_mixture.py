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


@pytest.mark.parametrize("which", ["fitted", "lowrank"])  # full and low-rank-plus-diagonal covariances
def test_score_is_the_gradient_of_the_noisy_log_density(which, request, digits):
    m = request.getfixturevalue(which)
    w = m.transform_.forward(_noisy(digits[:40], 0.3).double()).requires_grad_(True)
    for s in (0.002, 0.01, 0.05, 0.3, 2.0, 20.0, 80.0):
        grad, = torch.autograd.grad(m.log_density(w, s).sum(), w)
        got = m.wavelet_score(w.detach(), s)
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


# ---------------------------------------------------------------- low-rank covariances (method.md §11)
@pytest.fixture(scope="module")
def lowrank(digits):
    return MixtureMachine(components=10, covariance="lowrank", rank=8).fit(digits)


def _dense_log_density(m, w, s):
    """The low-rank mixture's noisy log-density built densely from U U^T + diag(d + s^2)."""
    U, d = m.factors_, m.diag_
    C = U @ U.transpose(1, 2) + torch.diag_embed(d + s * s)  # (K, D, D)
    L = torch.linalg.cholesky(C)
    v = (w[None] - m.means_[:, None]).unsqueeze(-1)  # (K, n, D, 1)
    z = torch.linalg.solve_triangular(L[:, None], v, upper=False).squeeze(-1)
    D = w.shape[1]
    logn = -0.5 * (2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)[:, None] + (z * z).sum(-1)
                   + D * np.log(2 * np.pi))
    return torch.logsumexp(torch.log(m.weights_)[:, None] + logn, 0)


def test_lowrank_of_full_rank_is_the_full_covariance(digits):
    x = digits.double()
    full = MixtureMachine(components=10).fit(x)
    lr = MixtureMachine(components=10, covariance="lowrank", rank=64).fit(x)
    over = MixtureMachine(components=10, covariance="lowrank", rank=100).fit(x)  # rank above D is D
    assert lr.factors_.shape == over.factors_.shape == (10, 64, 64) and torch.equal(lr.factors_, over.factors_)
    # the residual diagonal is round-off: d = the shrinkage floor, as in the full covariance
    floor = full.shrinkage * full.mean_variance_
    assert float((lr.diag_ - floor).abs().max()) < 1e-12
    y = _noisy(x[:60], 0.3)
    for s in (0.002, 0.01, 0.5, 20.0, 80.0):
        ref = full.score(y, s)
        assert float((lr.score(y, s) - ref).abs().max()) < 1e-9 * float(ref.abs().max())
        assert float((lr.denoise(y, s) - full.denoise(y, s)).abs().max()) < 1e-9


def test_woodbury_equals_the_dense_evaluation(digits):
    m = MixtureMachine(components=3, covariance="lowrank", rank=5).fit(digits[:300])
    w = m.transform_.forward(_noisy(digits[300:330], 0.3).double())
    for s in (0.002, 0.01, 0.5, 20.0, 80.0):
        dense = _dense_log_density(m, w, s)
        got = m.log_density(w, s)
        assert float((got - dense).abs().max()) <= 1e-10 * float(dense.abs().max())
        wg = w.clone().requires_grad_(True)
        grad, = torch.autograd.grad(_dense_log_density(m, wg, s).sum(), wg)
        assert float((m.wavelet_score(w, s) - grad).abs().max()) <= 1e-10 * float(grad.abs().max())


def test_lowrank_memory_is_k_d_r_and_it_denoises(lowrank, digits):
    K, D, r = 10, 64, 8
    assert lowrank.name == "mixture-K10-r8"
    assert not hasattr(lowrank, "U_") and not hasattr(lowrank, "lam_")  # nothing D x D is kept
    fitted = [lowrank.weights_, lowrank.means_, lowrank.factors_, lowrank.diag_]
    assert sum(t.numel() for t in fitted) == K * (1 + D + D * r + D)
    assert (lowrank.diag_ >= lowrank.shrinkage * lowrank.mean_variance_).all()
    x = digits.double()
    y = _noisy(x, 0.5, seed=1)
    g = ScoreMachine(family="gaussian").fit(digits, progress=False)
    mse = float(((lowrank.denoise(y, 0.5) - x) ** 2).mean())
    assert mse < 0.9 * float(((g.denoise(y, 0.5) - x) ** 2).mean())
    # no overflow or NaN at the ends of the noise range, even far from every component
    for s in (0.002, 80.0):
        for inp in (y[:30], 50 * y[:30]):
            assert torch.isfinite(lowrank.score(inp, s)).all() and torch.isfinite(lowrank.denoise(inp, s)).all()


def test_lowrank_round_trips_exactly_and_old_files_load(lowrank, fitted, digits, tmp_path):
    from wavescore._io import write_archive

    again = MixtureMachine.load(lowrank.save(tmp_path / "lr.wsm"))
    assert again.get_params() == lowrank.get_params() and again.name == "mixture-K10-r8"
    for a in ("weights_", "means_", "factors_", "diag_"):
        assert torch.equal(getattr(again, a), getattr(lowrank, a))
    y = _noisy(digits[:20].double(), 0.3)
    for s in (0.002, 0.3, 80.0):
        assert torch.equal(again.denoise(y, s), lowrank.denoise(y, s))
    # a file written before covariance= and rank= existed loads as the full covariance
    header, arrays = fitted._archive()
    for k in ("covariance", "rank"):
        del header["params"][k]
    old = MixtureMachine.load(write_archive(tmp_path / "old.wsm", header, arrays))
    assert old.covariance == "full" and old.rank is None and torch.equal(old.U_, fitted.U_)
    # same values; eigh's strided eigenbasis vs the loaded contiguous copy differs only in GEMM round-off
    assert torch.allclose(old.denoise(y, 0.3), fitted.denoise(y, 0.3), rtol=0, atol=1e-12)
    # a low-rank header with the full machine's arrays is refused, not misread
    header, _ = lowrank._archive()
    with pytest.raises(WavescoreError, match="does not match its own configuration"):
        MixtureMachine.load(write_archive(tmp_path / "mixed.wsm", header, arrays))


@pytest.mark.parametrize("kwargs, match", [
    ({"covariance": "lowrank", "rank": 0}, "rank must be a whole number >= 1, got 0"),
    ({"covariance": "lowrank", "rank": 2.5}, "rank must be a whole number >= 1, got 2.5"),
    ({"covariance": "lowrank", "rank": "20"}, "rank must be a whole number"),
    ({"covariance": "lowrank"}, "needs rank=r"),
    ({"covariance": "diagonal", "rank": 4}, "covariance must be 'full' or 'lowrank'"),
    ({"rank": 4}, "applies only to covariance='lowrank'"),
])
def test_lowrank_bad_input(kwargs, match):
    with pytest.raises(WavescoreError, match=match) as exc:
        MixtureMachine(components=3, **kwargs)
    assert "\n" not in str(exc.value)


def test_lowrank_cli(tmp_path, capsys):
    import json

    from wavescore.cli import main

    wsm = tmp_path / "lr.wsm"
    assert main(["fit", "--data", "digits", "--family", "mixture", "--components", "5", "--covariance", "lowrank",
                 "--rank", "6", "-o", str(wsm)]) == 0
    assert MixtureMachine.load(wsm).factors_.shape == (5, 64, 6)
    out = tmp_path / "e.json"
    assert main(["evaluate", "--model", str(wsm), "--data", "digits", "--sigmas", "0.5", "-o", str(out)]) == 0
    assert list(json.loads(out.read_text())["models"]) == ["mixture-K5-r6"]
    capsys.readouterr()
    assert main(["fit", "--data", "digits", "--family", "local-mixture", "--rank", "6", "-o", str(wsm)]) == 2
    assert "--rank does not apply to --family local-mixture" in capsys.readouterr().err
    assert main(["fit", "--data", "digits", "--family", "mixture", "--covariance", "lowrank", "-o", str(wsm)]) == 2
    assert "needs rank=r" in capsys.readouterr().err


# ---------------------------------------------------------------- tempered responsibilities (method.md §11)
def _tempered(m: MixtureMachine, T: float) -> MixtureMachine:
    """The same fitted mixture with another temperature (a runtime setting: no refit)."""
    import copy

    return copy.deepcopy(m).set_params(temperature=T)


@pytest.mark.parametrize("which", ["fitted", "lowrank"])
def test_tempered_score_is_the_gradient_of_its_potential(which, request, digits):
    m = request.getfixturevalue(which)
    w = m.transform_.forward(_noisy(digits[:40], 0.3).double())
    for T in (0.5, 3.0):
        t = _tempered(m, T)
        assert t.name.endswith(f"-T{T:g}")
        for s in (0.01, 0.3, 2.0, 80.0):
            wg = w.clone().requires_grad_(True)
            grad, = torch.autograd.grad(t.log_density(wg, s).sum(), wg)
            got = t.wavelet_score(w, s)
            assert float((got - grad).abs().max()) <= 1e-9 * float(grad.abs().max())
            assert float((got - m.wavelet_score(w, s)).abs().max()) > 1e-6 * float(grad.abs().max())
    # T = 1 is the exact score, bitwise; the default
    assert torch.equal(_tempered(m, 1.0).wavelet_score(w, 0.3), m.wavelet_score(w, 0.3)) and m.temperature == 1.0


@pytest.mark.parametrize("which", ["fitted", "lowrank"])
def test_several_temperatures_from_one_log_joint(which, request, digits, monkeypatch):
    """wavelet_scores(w, s, (T1, T2, ...)) is each tempered machine's score, from one log joint."""
    import wavescore.mixture as mixture

    m = request.getfixturevalue(which)
    w = m.transform_.forward(_noisy(digits[:40], 0.7, seed=5).double())
    temps = (1.0, 2.0, 4.0)
    want = torch.stack([_tempered(m, T).wavelet_score(w, 0.7) for T in temps])
    name = "lowrank_log_joint" if which == "lowrank" else "gmm_log_joint"
    calls = []
    real = getattr(mixture, name)
    monkeypatch.setattr(mixture, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    got = m.wavelet_scores(w, 0.7, temps)
    assert got.shape == (3,) + tuple(w.shape) and len(calls) == 1
    assert float((got - want).abs().max()) <= 1e-12 * float(want.abs().max())
    for bad, match in (((), "at least one"), ((1.0, 0.0), "temperature"), ((float("nan"),), "temperature")):
        with pytest.raises(WavescoreError, match=match):
            m.wavelet_scores(w, 0.7, bad)


def test_temperature_limits_closed_form(fitted, digits):
    """T -> 0: the most likely component's Gaussian score -(Sigma_k + s^2)^-1 (w - mu_k); T -> inf:
    the responsibilities are uniform, the components' scores averaged with equal weight."""
    m = fitted
    w = m.transform_.forward(_noisy(digits[:30], 0.5, seed=3).double())
    s2 = 0.25
    cov = (m.U_ * (m.lam_ + s2)[:, None, :]) @ m.U_.transpose(1, 2)  # (K, D, D) noisy covariances
    each = -torch.linalg.solve(cov[None], (w[:, None] - m.means_[None])[..., None])[..., 0]  # (n, K, D)
    logp = torch.stack([torch.distributions.MultivariateNormal(m.means_[k], cov[k]).log_prob(w)
                        for k in range(len(m.weights_))], 1) + torch.log(m.weights_)
    hard = each[torch.arange(len(w)), logp.argmax(1)]
    sharp = _tempered(m, 1e-6).wavelet_score(w, 0.5)
    assert float((sharp - hard).abs().max()) <= 1e-8 * float(hard.abs().max())
    flat = _tempered(m, 1e12).wavelet_score(w, 0.5)
    assert float((flat - each.mean(1)).abs().max()) <= 1e-8 * float(each.abs().max())


def test_temperature_round_trips_and_is_checked(fitted, digits, tmp_path):
    t = MixtureMachine(components=10, temperature=2.5).fit(digits)
    assert t.name == "mixture-K10-T2.5"
    again = MixtureMachine.load(t.save(tmp_path / "t.wsm"))
    y = _noisy(digits[:20].double(), 1.0)
    assert again.temperature == 2.5
    assert torch.allclose(again.denoise(y, 1.0), t.denoise(y, 1.0), rtol=0, atol=1e-12)
    assert torch.equal(t.weights_, fitted.weights_)  # the fit does not see the temperature
    for bad in (0, -1.0, float("nan"), float("inf"), "warm"):
        with pytest.raises(WavescoreError, match="temperature"):
            MixtureMachine(temperature=bad)


def test_temperature_is_a_runtime_setting_and_hedging_finds_it(fitted, digits):
    from wavescore.analysis import hedging

    with pytest.raises(WavescoreError, match="needs a new fit"):
        _tempered(fitted, 1.0).set_params(components=3)
    # a reference that is this mixture at T = 2: hedging finds T = 2 at every sigma, with R^2 = 1
    ref = _tempered(fitted, 2.0)
    res = hedging(fitted, {"self-T2": ref, "self": fitted}, digits[:60], (0.3, 1.0, 3.0), (0.5, 1.0, 2.0, 4.0))
    assert res["best"] == {"self-T2": [2.0, 2.0, 2.0], "self": [1.0, 1.0, 1.0]}
    grid = np.asarray(res["r2"]["self-T2"])
    assert np.allclose(grid[:, 2], 1.0, atol=1e-12) and (grid[:, [0, 1, 3]] < 1 - 1e-6).all()
    assert fitted.temperature == 1.0  # untouched
    with pytest.raises(WavescoreError, match="tempers a fitted global mixture"):
        hedging(ref.transform_, {"self": fitted}, digits[:10], (1.0,))


def test_temperature_and_border_cli(tmp_path, capsys):
    from wavescore.cli import main
    from wavescore.local_mixture import LocalMixtureMachine

    wsm = tmp_path / "t.wsm"
    assert main(["fit", "--data", "digits", "--family", "mixture", "--components", "5", "--temperature", "2",
                 "-o", str(wsm)]) == 0
    assert MixtureMachine.load(wsm).name == "mixture-K5-T2"
    assert main(["fit", "--data", "digits", "--family", "local-mixture", "--components", "4", "--border", "2",
                 "-o", str(wsm)]) == 0
    assert LocalMixtureMachine.load(wsm).name == "local-mixture-pixel-K4-r1-border2"
    capsys.readouterr()
    for argv, msg in ((["--family", "local-mixture", "--temperature", "2"], "--temperature does not apply"),
                      (["--family", "mixture", "--border", "2"], "--border does not apply"),
                      (["--family", "local", "--border", "2"], "--border applies only"),
                      (["--family", "local", "--temperature", "2"], "--temperature apply only")):
        assert main(["fit", "--data", "digits", *argv, "-o", str(wsm)]) == 2, argv
        assert msg in capsys.readouterr().err, argv
    with pytest.raises(SystemExit):  # argparse's own refusal, before any data is read
        main(["fit", "--data", "digits", "--family", "mixture", "--temperature", "0", "-o", str(wsm)])
    assert "argument --temperature: the value must be > 0" in capsys.readouterr().err
