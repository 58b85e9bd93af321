"""Mixed-degree families (global linear terms plus local higher-order features): the block
elimination against the dense solve, recovery of a known score, sub-families, persistence."""
import numpy as np
import pytest
import torch

from wavescore import ScoreMachine, WavescoreError
from wavescore.features import monomial_set
from wavescore.moments import MomentAccumulator, noise_plan
from wavescore.neighbourhoods import Group
from wavescore.solver import normal_equations
from wavescore.transform import WaveletTransform


def _nongaussian_images(n, seed=0):
    """Correlated, skewed and heavy-tailed 8x8 images with a full-rank covariance."""
    g = torch.Generator().manual_seed(seed)
    z = torch.distributions.Laplace(0.0, 1.0).sample((n, 64)).double()
    a = torch.randn(64, 64, generator=g, dtype=torch.float64) / 8
    y = z @ a
    return (0.3 * (y + 0.1 * y**2)).reshape(n, 1, 8, 8)


def _dense_score(m, x_fit, w, sigma, k, r):
    """Output r of group k solved as ONE dense system over [1, every coefficient, its psi]:
    the reference the block elimination must equal."""
    acc = m.moments_
    g, feats = acc.groups[k], acc.features[k]
    i = int(g.out[r])
    D = acc.shift.shape[0]
    order = [i] + [j for j in range(D) if j != i]
    pos = {v: p for p, v in enumerate(order)}
    exps = list(np.eye(D, dtype=np.int64))
    for e in feats.exps[feats.exps.sum(1) >= 2]:
        f = np.zeros(D, dtype=np.int64)
        for l in np.nonzero(e)[0]:
            f[pos[int(g.nbr[r, l])]] += e[l]
        exps.append(f)
    ms = monomial_set(np.array(exps))
    dense = MomentAccumulator([Group("dense", np.array([i]), np.array([order]))], [ms], acc.shift, acc.scale)
    dense.update(m.transform_.forward(x_fit))
    plan = noise_plan(ms)
    clean = dense.clean_gram(0)[:, torch.as_tensor(plan.split[:, 0]), torch.as_tensor(plan.split[:, 1])]
    G, b = normal_equations(clean, ms, plan, sigma / acc.scale[torch.as_tensor(order)], acc.scale[i])
    theta = -torch.linalg.solve(G[0], b[0])
    return ms(acc.standardise(w)[:, torch.as_tensor(order)]) @ theta, i


@pytest.mark.parametrize("family,degree", [("gaussian+local", 2), ("gaussian+parent", 3), ("gaussian+orientation", 3)])
def test_block_elimination_equals_dense_solve(family, degree):
    x = _nongaussian_images(6000)
    m = ScoreMachine(family=family, degree=degree, ridge=0.0, levels=2).fit(x, progress=False)
    xt = x[:40] + 0.3 * torch.randn(40, 1, 8, 8, dtype=torch.float64)
    for sigma in (0.05, 0.3, 2.0):
        w = m.transform_.forward(xt + (sigma - 0.3) * 0)
        got = m.wavelet_score(w, sigma)
        for k, r in ((1, 0), (4, 3), (len(m.moments_.groups) - 1, 5)):
            ref, i = _dense_score(m, x, w, sigma, k, r)
            assert torch.allclose(got[:, i], ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max())), (sigma, k, r)


def _quartic(n, c, g):
    """Exact samples of p(v) ∝ exp(-v^2/2 - c v^4/4) by rejection from N(0, 1)."""
    out = torch.empty(0, dtype=torch.float64)
    while out.numel() < n:
        v = torch.randn(4 * n, generator=g, dtype=torch.float64)
        keep = torch.rand(4 * n, generator=g, dtype=torch.float64) < torch.exp(-c * v**4 / 4)
        out = torch.cat([out, v[keep]])
    return out[:n]


def test_recovers_a_score_that_lies_in_the_mixed_family():
    # Wavelet coefficients: a correlated Gaussian block (score -S^{-1} w: global linear) and
    # independent quartic-tailed coefficients (score -v - c v^3: own cubic), sampled exactly.
    n, c = 24000, 1.5
    g = torch.Generator().manual_seed(3)
    tr = WaveletTransform((1, 8, 8), "haar", 2)
    coarse = torch.arange(16)  # approximation and level-2 details
    fine = torch.arange(16, 64)
    a = torch.randn(16, 16, generator=g, dtype=torch.float64) / 4
    S = a @ a.T + 0.3 * torch.eye(16, dtype=torch.float64)
    w = torch.empty(n, 64, dtype=torch.float64)
    w[:, coarse] = torch.randn(n, 16, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(S).T
    w[:, fine] = _quartic(n * 48, c, g).reshape(n, 48)
    P = torch.linalg.inv(S)

    def true_score(w):
        s = torch.empty_like(w)
        s[:, coarse] = -w[:, coarse] @ P
        s[:, fine] = -w[:, fine] - c * w[:, fine] ** 3
        return s

    x = tr.inverse(w).reshape(-1, 1, 8, 8)
    fit, test = x[:20000], x[20000:]
    m = ScoreMachine(family="gaussian+independent", degree=3, ridge=0.0, levels=2).fit(fit, progress=False)
    sigma = 1e-3
    true = tr.inverse(true_score(tr.forward(test))).reshape(test.shape)
    err = lambda s: float(((s - true) ** 2).sum() / (true**2).sum())  # noqa: E731
    mixed = err(m.score(test, sigma))
    gauss = err(m._variant(1, 0.0).score(test, sigma))
    assert mixed < 0.01, mixed  # the known score is recovered
    assert gauss > 10 * mixed, (gauss, mixed)  # and the linear part alone cannot
    # the own cubic coefficient is -c on the quartic coefficients and 0 on the Gaussian ones (w units)
    th, acc = m.parameters(sigma), m.moments_
    for k in range(1, len(acc.groups)):
        feats, out = acc.features[k], torch.as_tensor(acc.groups[k].out)
        cubic = th[k][:, int(np.nonzero(feats.exps[:, 0] == 3)[0][0])] / acc.scale[out] ** 3
        expect = torch.where(out >= 16, -c, 0.0).to(torch.float64)
        assert (cubic - expect).abs().max() < 0.25 * c, (k, cubic)
        assert abs(float((cubic - expect).mean())) < 0.05 * c


def test_degree1_subfamily_is_the_gaussian_score_and_choice_is_saved(tmp_path):
    x = _nongaussian_images(4000, seed=2)
    m = ScoreMachine(family="gaussian+local", degree=2, ridge=1e-6, levels=2, select=True).fit(x, progress=False)
    ref = ScoreMachine(family="gaussian", ridge=1e-6, levels=2).fit(x, progress=False)
    xt = x[:20] + 0.2 * torch.randn(20, 1, 8, 8, dtype=torch.float64)
    for s in (0.02, 0.2, 2.0):
        assert torch.allclose(m._variant(1, 1e-6).score(xt, s), ref.score(xt, s), rtol=1e-8, atol=1e-8)
    ch = m.choice_
    assert len(ch["best"]) == len(ch["sigmas"]) and ch["n_images"] == 400
    mse = np.asarray(ch["mse"])
    assert (mse[np.arange(len(mse)), ch["best"]] <= mse.min(1) + 1e-15).all()
    # the saved machine makes the same choice and the same scores
    m.save(tmp_path / "m.wsm")
    back = ScoreMachine.load(tmp_path / "m.wsm")
    assert back.choice_ == m.choice_
    for s in (0.01, 0.3, 7.0):
        assert torch.equal(back.score(xt, s), m.score(xt, s))


def test_mixed_merge_equals_union_and_bad_configs():
    x = _nongaussian_images(3000, seed=4)
    m = ScoreMachine(family="gaussian+local", degree=2, levels=2)
    acc = m.new_accumulator(x[:500])
    w = m.transform_.forward(x)
    a, b, whole = acc.empty_like(), acc.empty_like(), acc.empty_like()
    a.update(w[:1200]), b.update(w[1200:]), whole.update(w)
    merged = a.merge(b)
    assert torch.allclose(merged.cross_sum, whole.cross_sum, rtol=1e-12, atol=1e-9)
    assert torch.allclose(merged.mono_sum, whole.mono_sum, rtol=1e-12, atol=1e-9)
    with pytest.raises(WavescoreError, match="degree=2 or 3"):
        ScoreMachine(family="gaussian+local", degree=1)
    with pytest.raises(WavescoreError, match="shared=True"):
        ScoreMachine(family="gaussian+local", degree=2, shared=True)
    with pytest.raises(WavescoreError, match="terms"):
        ScoreMachine(family="mixed")
    with pytest.raises(WavescoreError, match="term kind"):
        ScoreMachine(family="mixed", terms=[{"family": "local", "kind": "cubes"}]).fit(x, progress=False)
    with pytest.raises(WavescoreError, match="holdout"):
        ScoreMachine(family="local", select=True, holdout=0.9)


def test_declared_terms_equal_the_preset_and_squares_term():
    x = _nongaussian_images(3000, seed=5)
    preset = ScoreMachine(family="gaussian+local", degree=2, radius=1, levels=2).fit(x, progress=False)
    declared = ScoreMachine(family="mixed", levels=2,
                            terms=[{"family": "gaussian"}, {"family": "local", "degree": 2, "radius": 1}]).fit(x, progress=False)
    xt = x[:10] + 0.1 * torch.randn(10, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(preset.score(xt, 0.1), declared.score(xt, 0.1), rtol=1e-10, atol=1e-10)
    assert declared.name == "gaussian+local-r1-P2"
    # a GSM-style term: squared neighbours and own x squared neighbour, nothing else of degree >= 2
    gsm = ScoreMachine(family="mixed", levels=2, terms=[{"family": "gaussian"},
                                                        {"family": "local", "radius": 1, "kind": "squares"}])
    gsm.fit(x, progress=False)
    feats = gsm.moments_.features[5]
    high = feats.exps[feats.exps.sum(1) >= 2]
    m = feats.m
    assert len(high) == 3 * (m - 1)  # u_j^2, u_own u_j^2 and (by closure) u_own u_j
    assert gsm.memory_estimate((1, 8, 8))["distinct_monomials"] > 0
    # the named preset is these declared terms
    terms = [{"family": "gaussian"}, {"family": "parent", "degree": 2}, {"family": "independent", "degree": 3},
             {"family": "parent", "radius": 2, "kind": "squares"}]
    a = ScoreMachine(family="gaussian+gsm", degree=3, levels=2).fit(x, progress=False)
    b = ScoreMachine(family="mixed", terms=terms, levels=2).fit(x, progress=False)
    assert a.name == "gaussian+gsm-r1-P3"
    assert torch.allclose(a.score(xt, 0.05), b.score(xt, 0.05), rtol=1e-10, atol=1e-10)


def test_mixed_memory_is_stated_and_refused_before_fitting():
    m = ScoreMachine(family="gaussian+local", degree=3, max_memory=1.5 * 2**30)
    est = m.memory_estimate((1, 32, 32))
    assert est["distinct_monomials"] > 1024 and est["features"] > 1024
    with pytest.raises(WavescoreError, match=r"gaussian\+local-r1-P3 .* GiB.*these fit: .*gaussian\+local-r1-P2"):
        m.fit(torch.zeros(10, 1, 32, 32), progress=False)
