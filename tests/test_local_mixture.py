"""The local Gaussian mixture machine (issue 15, docs/method.md §12): a mixture over each
coefficient's neighbourhood, exact noisy marginal score at the centre."""
from __future__ import annotations

import pytest
import torch

from wavescore import ScoreMachine, WavescoreError, load_dataset
from wavescore.local_mixture import LocalMixtureMachine, em_statistics
from wavescore.mixture import gmm_from_stats


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits").double()


def _noisy(x, s, seed=0):
    return x + s * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)


@pytest.mark.parametrize("neighbourhood", ["local", "parent"])
def test_one_component_is_the_local_linear_machine(digits, neighbourhood):
    m1 = LocalMixtureMachine(components=1, shrinkage=1e-12, neighbourhood=neighbourhood).fit(digits, progress=False)
    g = ScoreMachine(family=neighbourhood, degree=1, radius=1, shared=True, ridge=1e-12).fit(digits, progress=False)
    y = _noisy(digits[:50], 0.3)
    for s in (0.002, 0.3, 80.0):
        ref = g.score(y, s)
        assert float((m1.score(y, s) - ref).abs().max()) < 1e-9 * float(ref.abs().max())


def test_merged_em_step_equals_one_process(digits):
    m = LocalMixtureMachine(components=4, basis="pixel").fit(digits[:300], progress=False)
    u = m.transform_.forward(digits)[:, torch.from_numpy(m.groups_[0].nbr)].reshape(1, -1, 9)
    p = m.params_[0]
    whole = em_statistics(u, p)
    a, b = em_statistics(u[:, :5000], p), em_statistics(u[:, 5000:], p)
    for k in whole:
        assert torch.allclose(whole[k], a[k] + b[k], rtol=1e-10, atol=1e-8)
    one = gmm_from_stats(whole, 30.0, 1e-4)
    two = gmm_from_stats({k: a[k] + b[k] for k in a}, 30.0, 1e-4)
    assert torch.allclose(one[1], two[1], atol=1e-10) and torch.allclose(one[2], two[2], atol=1e-10)


def test_pixel_mixture_beats_the_gaussian_and_round_trips(digits, tmp_path):
    train, test = digits[:1200], digits[1200:]
    m = LocalMixtureMachine(components=16, basis="pixel").fit(train, progress=False)
    g = ScoreMachine(family="gaussian").fit(train, progress=False)
    y = _noisy(test, 0.3, seed=1)
    mse = float(((m.denoise(y, 0.3) - test) ** 2).mean())
    assert mse < 0.95 * float(((g.denoise(y, 0.3) - test) ** 2).mean())  # measured 0.0358 vs 0.0407
    for s in (0.002, 80.0):
        assert torch.isfinite(m.score(y, s)).all()
    again = LocalMixtureMachine.load(m.save(tmp_path / "l.wsm"))
    assert torch.allclose(again.denoise(y[:20], 0.3), m.denoise(y[:20], 0.3), rtol=0, atol=1e-12)


def test_per_position_mixtures(digits):
    m = LocalMixtureMachine(components=2, shared=False, basis="pixel", em_iterations=2).fit(digits[:400], progress=False)
    assert m.params_[0][1].shape == (64, 2, 9)
    y = _noisy(digits[400:450], 0.3)
    assert torch.isfinite(m.denoise(y, 0.3)).all()


def test_bad_input(digits):
    with pytest.raises(WavescoreError, match="neighbourhoods per mixture"):
        LocalMixtureMachine(components=20, shared=False).fit(digits[:10], progress=False)
    with pytest.raises(WavescoreError, match="pixel patch has no parents"):
        LocalMixtureMachine(basis="pixel", neighbourhood="parent")
    with pytest.raises(WavescoreError, match="not fitted"):
        LocalMixtureMachine().denoise(digits[:2], 0.1)
    bad = digits[:50].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(WavescoreError, match="NaN"):
        LocalMixtureMachine(components=2).fit(bad, progress=False)


def test_cli_fit_and_evaluate(tmp_path):
    import json

    from wavescore.cli import main

    wsm = tmp_path / "loc.wsm"
    assert main(["fit", "--data", "digits", "--family", "local-mixture", "--components", "4", "-o", str(wsm)]) == 0
    out = tmp_path / "e.json"
    assert main(["evaluate", "--model", str(wsm), "--data", "digits", "--sigmas", "0.3", "-o", str(out)]) == 0
    res = json.loads(out.read_text())
    name = "local-mixture-pixel-K4-r1"
    assert list(res["models"]) == [name] and 0 < res["models"][name]["mse"][0] < 0.06


# ---------------------------------------------------------------- border classes (method.md §12)
def test_border_classes_partition_the_pixels():
    from wavescore.local_mixture import _pixel_groups, border_class

    assert border_class(__import__("numpy").arange(7), 7, 2).tolist() == [0, 1, 2, 2, 2, -2, -1]
    plain = _pixel_groups((2, 12, 10), 1)
    groups = _pixel_groups((2, 12, 10), 1, border=2)
    assert len(plain) == 2 and len(groups) == 2 * 25
    assert groups[0].name == "pixels/c0/border2,2" and groups[0].n == 8 * 6  # the interior first
    for ch in range(2):
        mine = [g for g in groups if g.name.startswith(f"pixels/c{ch}/")]
        outs = sorted(int(o) for g in mine for o in g.out)
        assert outs == sorted(plain[ch].out.tolist())  # every pixel in exactly one class
        for g in mine:  # each class's windows are the plain windows of its pixels
            assert (g.nbr == plain[ch].nbr[g.out - ch * 120]).all()


def test_border_every_pixel_its_own_class_is_the_per_position_mixture(digits):
    """On 8x8 digits border=4 gives every pixel its own class: with one component (no k-means
    choice) each class's Gaussian is that position's, so the scores equal shared=False's."""
    x = digits[:400]
    own = LocalMixtureMachine(components=1, basis="pixel", border=4).fit(x, progress=False)
    per = LocalMixtureMachine(components=1, basis="pixel", shared=False).fit(x, progress=False)
    assert len(own.groups_) == 64 and own.name == "local-mixture-pixel-K1-r1-border4"
    y = _noisy(digits[400:450], 0.3)
    for s in (0.01, 0.3, 5.0):
        ref = per.score(y, s)
        assert float((own.score(y, s) - ref).abs().max()) < 1e-9 * float(ref.abs().max())


def test_border_aware_beats_shared_where_position_matters(digits, tmp_path):
    """Digits' border pixels are nearly always blank: a border-aware mixture denoises held-out
    digits better than the fully shared one at every noise level, and reloads exactly."""
    train, test = digits[:1400], digits[1400:]
    shared = LocalMixtureMachine(components=8, basis="pixel").fit(train, progress=False)
    aware = LocalMixtureMachine(components=8, basis="pixel", border=2).fit(train, progress=False)
    for s in (0.1, 0.5, 1.0):
        y = _noisy(test, s, seed=2)
        mse = [float(((m.denoise(y, s) - test) ** 2).mean()) for m in (shared, aware)]
        assert mse[1] < 0.9 * mse[0], (s, mse)
    again = LocalMixtureMachine.load(aware.save(tmp_path / "b.wsm"))
    y = _noisy(test[:20], 0.5)
    assert again.border == 2 and torch.allclose(again.denoise(y, 0.5), aware.denoise(y, 0.5), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [(dict(border=2), "basis='pixel'"),
                                           (dict(border=2, basis="pixel", shared=False), "shared=True"),
                                           (dict(border=-1, basis="pixel"), "border"),
                                           (dict(border=1.5, basis="pixel"), "border")])
def test_border_bad_input(kwargs, match):
    with pytest.raises(WavescoreError, match=match):
        LocalMixtureMachine(**kwargs)


@pytest.mark.parametrize("shared", [True, False])
def test_centre_score_is_the_gradient_of_the_noisy_patch_density(digits, shared):
    """score_i = d/dy_0 log sum_k pi_k N(y_N; mu_k, Sigma_k + s^2 I) (method.md §12), by autograd
    of the dense density (torch.distributions, Cholesky), and the same as the per-component
    projections of mixture.gmm_score(row=0), from sigma 0.002 to 80."""
    from wavescore.local_mixture import centre_score
    from wavescore.mixture import gmm_score

    m = LocalMixtureMachine(components=1 if not shared else 6, shared=shared, basis="pixel",
                            shrinkage=1e-6).fit(digits[:300], progress=False)
    w = m.transform_.forward(_noisy(digits[300:310], 0.3))
    g, p = m.groups_[0], m.params_[0]
    R, K, d = p[1].shape
    y = w[:, torch.from_numpy(g.nbr)]
    y = y.reshape(1, -1, d) if R == 1 else y.permute(1, 0, 2)
    for s in (0.002, 0.05, 0.5, 5.0, 80.0):
        got = centre_score(y, p, s * s)
        assert float((got - gmm_score(y, p, s * s, row=0)).abs().max()) < 1e-10 * float(got.abs().max())
        weights, means, lam, U = p
        cov = U @ torch.diag_embed(lam + s * s) @ U.transpose(-1, -2)
        yg = y.clone().requires_grad_(True)
        comp = torch.distributions.MultivariateNormal(means[:, None], covariance_matrix=cov[:, None])  # (R, 1, K)
        logp = torch.logsumexp(torch.log(weights)[:, None] + comp.log_prob(yg[:, :, None]), -1)
        grad, = torch.autograd.grad(logp.sum(), yg)
        assert float((got - grad[..., 0]).abs().max()) < 1e-9 * float(grad[..., 0].abs().max())
    # and the machine's own score, coefficient by coefficient
    sc = m.wavelet_score(w, 0.5)
    ref = gmm_score(y, p, 0.25, row=0)
    ref = ref.reshape(w.shape[0], g.n) if R == 1 else ref.T
    assert torch.allclose(sc[:, torch.from_numpy(g.out)], ref, rtol=1e-10, atol=1e-12)
