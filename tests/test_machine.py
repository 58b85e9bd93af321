"""The score machine against closed forms, Monte Carlo and gradient-based fits (method.md §4-5)."""
import math

import numpy as np
import pytest
import torch

from wavescore import ScoreMachine, WavescoreError
from wavescore.features import monomials, n_features
from wavescore.moments import noise_plan



@pytest.fixture(autouse=True)
def _float64_default():
    """These closed-form checks run in float64; restore the default for other test files."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _exact_gaussian_data(n, d, seed=0):
    """Data whose empirical mean and (biased) covariance are exactly mu and Sigma."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g) / math.sqrt(d)
    sigma = a @ a.T + 0.05 * torch.eye(d)
    mu = 0.3 * torch.randn(d, generator=g)
    z = torch.randn(n, d, generator=g)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(z.T @ z / n)).T
    return mu + z @ torch.linalg.cholesky(sigma).T, mu, sigma


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
def test_gaussian_family_is_the_exact_gaussian_score(wavelet):
    x, mu, cov = _exact_gaussian_data(3000, 64)
    m = ScoreMachine(family="gaussian", wavelet=wavelet, ridge=0).fit(x.reshape(-1, 1, 8, 8), progress=False)
    xs = x[:7] + 0.5 * torch.randn(7, 64)
    for s in (0.01, 0.3, 5.0):
        exact = -torch.linalg.solve(cov + s**2 * torch.eye(64), (xs - mu).T).T
        ours = m.score(xs.reshape(-1, 1, 8, 8), s).reshape(7, -1)
        assert (ours - exact).norm() / exact.norm() < 1e-8


def test_independent_degree1_is_wavelet_wiener():
    x, _, _ = _exact_gaussian_data(2000, 64, seed=1)
    imgs = x.reshape(-1, 1, 8, 8)
    m = ScoreMachine(family="independent", degree=1, ridge=0).fit(imgs, progress=False)
    w = m.transform_.forward(imgs)
    mu_w, var_w = w.mean(0), w.var(0, unbiased=False)
    xs = imgs[:5] + 0.2 * torch.randn(5, 1, 8, 8)
    ws = m.transform_.forward(xs)
    for s in (0.05, 0.2, 2.0):
        wiener = -(ws - mu_w) / (var_w + s**2)
        ours = m.wavelet_score(ws, s)
        assert torch.allclose(ours, wiener, rtol=1e-9, atol=1e-10)


def test_degree3_independent_matches_closed_form_on_laplace():
    """method.md §5: features w, w^3 on a symmetric marginal; even moments only."""
    with torch.random.fork_rng(devices=[]):  # Laplace.sample takes no generator: seed a forked global RNG
        torch.manual_seed(2)
        lap = torch.distributions.Laplace(0.0, 0.7).sample((3000, 1, 4, 4))
    x = torch.cat([lap, -lap])  # exactly symmetric: odd moments vanish
    m = ScoreMachine(family="independent", degree=3, ridge=0).fit(x, progress=False)
    w = m.transform_.forward(x)
    i = 7  # a detail coefficient
    m2, m4, m6 = ((w[:, i] ** k).mean() for k in (2, 4, 6))
    ws = torch.linspace(-2, 2, 9)
    for s in (0.05, 0.5, 3.0):
        M2, M4 = m2 + s**2, m4 + 6 * s**2 * m2 + 3 * s**4
        M6 = m6 + 15 * s**2 * m4 + 45 * s**4 * m2 + 15 * s**6
        a1, a3 = torch.linalg.solve(torch.stack([torch.stack([M2, M4]), torch.stack([M4, M6])]),
                                    -torch.stack([torch.tensor(1.0), 3 * M2]))
        probe = torch.zeros(9, w.shape[1])
        probe[:, i] = ws
        ours = m.wavelet_score(probe, s)[:, i]
        assert torch.allclose(ours, a1 * ws + a3 * ws**3, rtol=1e-7, atol=1e-9)


def test_noisy_moments_match_monte_carlo():
    g = torch.Generator().manual_seed(3)
    u0 = torch.distributions.Gamma(2.0, 2.0).sample((400_000, 3)) * torch.tensor([1.0, -0.5, 0.8])
    feats = monomials(3, 2)
    plan = noise_plan(feats)
    t = torch.tensor([0.3, 0.7, 0.2])
    clean = torch.stack([(u0 ** torch.as_tensor(s)).prod(1).mean() for s in plan.sums])[None]
    analytic = plan.noisy(clean, t)[0]
    z = torch.randn(u0.shape, generator=g)
    ut = u0 + t * z
    mc = torch.stack([(ut ** torch.as_tensor(s)).prod(1) for s in plan.sums], 1)
    est, err = mc.mean(0), mc.std(0) / math.sqrt(len(mc))
    assert analytic[0] == 1.0 and err[0] == 0  # the constant moment is exact
    zscore = ((analytic - est)[1:] / err[1:]).abs()
    assert zscore.max() < 5, zscore.max()
    assert len(plan.sums) == math.comb(3 + 4, 4)


def test_closed_form_equals_dsm_least_squares():
    """Stein: the closed form equals least squares of -z/s on phi(w_s) over sampled noise."""
    g = torch.Generator().manual_seed(4)
    base = torch.distributions.Laplace(0.0, 0.5).sample((3000, 1, 4, 4))
    x = base + 0.3 * base.roll(1, dims=-1)  # neighbours correlate
    m = ScoreMachine(family="local", degree=2, radius=1, shared=True, ridge=0).fit(x, progress=False)
    s = 0.4
    w0 = m.transform_.forward(x)
    reps = 60
    w0r = w0.repeat(reps, 1)
    z = torch.randn(w0r.shape, generator=g)
    ws = w0r + s * z
    # the band (level 1, 'h') of channel 0: shared theta regresses -z/s of every position
    k = [j for j, grp in enumerate(m.moments_.groups) if grp.name == "h1/c0"][0]
    grp, feats = m.moments_.groups[k], m.moments_.features[k]
    phi = feats(m.moments_.standardise(ws)[:, torch.as_tensor(grp.nbr)]).reshape(-1, feats.F)
    target = (-z[:, torch.as_tensor(grp.out)] / s).reshape(-1)
    theta_ls = torch.linalg.lstsq(phi, target[:, None]).solution[:, 0]
    theta = m.parameters(s)[k][0]
    # compare the fitted score functions on fresh noisy inputs (parameters are collinear-ish)
    probe = phi[:5000]
    rel = (probe @ (theta - theta_ls)).norm() / (probe @ theta).norm()
    assert rel < 0.03, rel


def test_tweedie_and_sigma_vector():
    x = torch.randn(200, 1, 8, 8) * 0.5
    m = ScoreMachine(family="local", degree=2).fit(x, progress=False)
    xs = x[:4] + 0.3 * torch.randn(4, 1, 8, 8)
    s = torch.tensor([0.1, 0.3, 0.3, 2.0])
    d = m.denoise(xs, s)
    sc = m.score(xs, s)
    assert torch.allclose(d, xs + s.reshape(-1, 1, 1, 1) ** 2 * sc, atol=1e-12)
    assert torch.allclose(d[1:3], m.denoise(xs[1:3], 0.3), atol=1e-12)
    assert m.denoise(xs.float(), 0.3).dtype == torch.float32


def test_merge_equals_union():
    x = torch.randn(300, 1, 8, 8)
    m = ScoreMachine(family="parent", degree=2, bands="all")
    a = m.new_accumulator(x[:50])
    b = m.new_accumulator(x[:50])
    a.update(m.transform_.forward(x[:120]))
    b.update(m.transform_.forward(x[120:]))
    u = m.new_accumulator(x[:50]).update(m.transform_.forward(x))
    merged = a.merge(b)
    assert merged.count == 300
    for p, q in zip(merged.grams, u.grams):
        assert torch.allclose(p, q, rtol=1e-12, atol=1e-10)
    other = ScoreMachine(family="parent", degree=2, bands="all").new_accumulator(x[50:100])
    with pytest.raises(WavescoreError, match="cannot merge"):
        a.merge(other)


def test_singular_gram_no_nan_no_warning(recwarn):
    x = torch.randn(100, 1, 8, 8)
    x[:, :, 0, :] = -1.0  # constant border: constant coefficients, singular Grams
    x[:, :, :, 0] = -1.0
    for ridge in (0.0, 1e-6):
        m = ScoreMachine(family="local", degree=3, ridge=ridge).fit(x, progress=False)
        for s in (0.002, 0.01, 80.0):
            out = m.denoise(x[:3], s)
            assert torch.isfinite(out).all()
    assert len(recwarn) == 0


def test_shared_is_translation_equivariant():
    x = torch.randn(300, 1, 16, 16)
    m = ScoreMachine(family="local", degree=2, shared=True, levels=2).fit(x, progress=False)
    xs = torch.randn(2, 1, 16, 16)
    # a shift by 4 pixels moves every level-1 and level-2 coefficient by a whole position
    a = m.denoise(xs.roll(4, dims=-1), 0.5)
    b = m.denoise(xs, 0.5).roll(4, dims=-1)
    assert torch.allclose(a, b, atol=1e-10)


def test_save_load_exact_and_bad_files(tmp_path):
    x = torch.randn(150, 1, 8, 8)
    m = ScoreMachine(family="orientation", degree=2, shared=True).fit(x, progress=False)
    path = m.save(tmp_path / "m.wsm")
    m2 = ScoreMachine.load(path)
    assert m2.get_params() == m.get_params()
    xs = torch.randn(3, 1, 8, 8)
    assert torch.equal(m.denoise(xs, 0.2), m2.denoise(xs, 0.2))
    data = path.read_bytes()
    (tmp_path / "trunc.wsm").write_bytes(data[: len(data) // 2])
    with pytest.raises(WavescoreError, match="truncated|corrupt"):
        ScoreMachine.load(tmp_path / "trunc.wsm")
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF  # flip a byte inside the moments
    (tmp_path / "flip.wsm").write_bytes(bytes(bad))
    with pytest.raises(WavescoreError, match="corrupt"):
        ScoreMachine.load(tmp_path / "flip.wsm")
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    with pytest.raises(WavescoreError, match="not a wavescore machine|corrupt"):
        ScoreMachine.load(tmp_path / "foreign.npz")
    (tmp_path / "text.wsm").write_text("hello")
    with pytest.raises(WavescoreError, match="not a wavescore machine"):
        ScoreMachine.load(tmp_path / "text.wsm")


def test_bad_inputs():
    with pytest.raises(WavescoreError, match="unknown family"):
        ScoreMachine(family="wide")
    with pytest.raises(WavescoreError, match="degree"):
        ScoreMachine(degree=4)
    with pytest.raises(WavescoreError, match="degree=1"):
        ScoreMachine(family="gaussian", degree=2)
    m = ScoreMachine()
    with pytest.raises(WavescoreError, match=r"\(N, C, H, W\)"):
        m.fit(torch.zeros(10, 8, 8))
    with pytest.raises(WavescoreError, match="NaN"):
        m.fit(torch.full((4, 1, 8, 8), float("nan")), progress=False)
    with pytest.raises(WavescoreError, match="not fitted"):
        m.denoise(torch.zeros(1, 1, 8, 8), 0.1)
    m.fit(torch.randn(20, 1, 8, 8), progress=False)
    with pytest.raises(WavescoreError, match="fitted on images of shape"):
        m.denoise(torch.zeros(1, 1, 16, 16), 0.1)
    with pytest.raises(WavescoreError, match="positive"):
        m.denoise(torch.zeros(1, 1, 8, 8), 0.0)


def test_memory_refusal_names_features_and_alternatives():
    m = ScoreMachine(family="local", degree=3, bands="all", max_memory=2**30)
    est = m.memory_estimate((1, 32, 32))
    assert est["features"] == n_features(27, 3) == 4060
    with pytest.raises(WavescoreError, match=r"4060 features.*GiB.*these fit: local-r0all-P3"):
        m.fit(torch.randn(4, 1, 32, 32), progress=False)


def test_restricted_subfamily_equals_smaller_fit():
    """Sub-family moments are sub-blocks: restricting a parent fit to the own coefficient
    reproduces the independent family exactly, and to same-position terms the orientation one."""
    x = torch.randn(300, 1, 8, 8)
    x[:, :, 2:6, 2:6] += torch.randn(300, 1, 1, 1)  # some cross-coefficient dependence
    big = ScoreMachine(family="parent", degree=2, bands="all").fit(x, progress=False)

    def only(allowed):
        return lambda exps, roles: (exps[:, [k for k, r in enumerate(roles) if r not in allowed]] == 0).all(1)

    xs = torch.randn(3, 1, 8, 8)
    for allowed, small in [({"own"}, dict(family="independent", degree=2)),
                           ({"own", "orientation"}, dict(family="orientation", degree=2))]:
        ref = ScoreMachine(**small).fit(x, progress=False)
        assert torch.allclose(big.restrict(only(allowed)).denoise(xs, 0.3), ref.denoise(xs, 0.3), atol=1e-10)
    assert not torch.allclose(big.denoise(xs, 0.3), ref.denoise(xs, 0.3), atol=1e-4)


def test_real_mnist_ordering_with_margins():
    """On real digits: dependencies help, and the global Gaussian score leads at sigma 0.5
    (the full-data table in the README shows the same ordering with these margins)."""
    from wavescore import load_dataset
    from wavescore.evaluation import evaluate_denoisers

    train = load_dataset("mnist", limit=20000)
    test = load_dataset("mnist", "test", limit=500)
    models = {cfg["family"] + str(cfg.get("degree", 1)): ScoreMachine(**cfg).fit(train, progress=False)
              for cfg in (dict(family="independent"), dict(family="parent", degree=2), dict(family="gaussian"))}
    mse = {k: v["mse"][0] for k, v in evaluate_denoisers(models, test, [0.5], progress=False)["models"].items()}
    assert mse["parent2"] < 0.85 * mse["independent1"]
    assert mse["gaussian1"] < 0.9 * mse["parent2"]
    assert 0.02 < mse["gaussian1"] < 0.05  # sigma^2 = 0.25: the denoiser removes ~90% of the noise
