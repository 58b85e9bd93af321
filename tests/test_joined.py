"""The joined machine (issue 15, docs/method.md §13): parts weighted per sigma and wavelet band by
the closed-form held-out combination."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from wavescore import ScoreMachine, WavescoreError, load_dataset
from wavescore.joined import JoinedMachine, combination_weights, scheduled_local_mixture
from wavescore.models import load_model
from wavescore.presets import make_machine

PARTS = [{"family": "gaussian"}, {"family": "mixture", "components": 10},
         {"family": "local-mixture", "components": 16, "basis": "pixel"}]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits").double()


@pytest.fixture(scope="module")
def joined(digits):
    return make_machine("mixture+local-mixture", parts=PARTS, holdout=200).fit(digits[:1400], progress=False)


def _noisy(x, s, seed=0):
    return x + s * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)


def test_combination_weights_are_the_constrained_least_squares_optimum():
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(5, 3, 400, generator=gen, dtype=torch.float64) + torch.randn(5, 1, 400, generator=gen,
                                                                                  dtype=torch.float64)
    G = torch.einsum("bin,bjn->bij", r, r)
    a = combination_weights(G, "affine", ridge=0.0)
    assert torch.allclose(a.sum(-1), torch.ones(5, dtype=torch.float64), atol=1e-12)
    # Brute force: minimise |r_0 + sum_{i>0} c_i (r_i - r_0)|^2 by least squares, a = (1 - sum c, c).
    for b in range(5):
        A = (r[b, 1:] - r[b, 0]).T
        c = torch.linalg.lstsq(A, -r[b, 0][:, None]).solution[:, 0]
        assert torch.allclose(a[b], torch.cat([1 - c.sum()[None], c]), atol=1e-10)
    # Convex: no point of a fine grid on the simplex does better, and the weights are >= 0.
    c = combination_weights(G, "convex", ridge=0.0)
    assert (c >= 0).all() and torch.allclose(c.sum(-1), torch.ones(5, dtype=torch.float64), atol=1e-12)
    t = torch.linspace(0, 1, 201, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    grid = torch.cat([grid, 1 - grid.sum(1, keepdim=True)], 1)
    grid = grid[grid[:, 2] >= 0]
    for b in range(5):
        brute = torch.einsum("gi,ij,gj->g", grid, G[b], grid).min()
        assert float(c[b] @ G[b] @ c[b]) <= float(brute) * (1 + 1e-12)
    # Residuals more alike than the better part is small: the affine optimum has a negative weight
    # (it extrapolates), the convex one puts that part at 0.
    G3 = torch.tensor([[1.0, 1.01], [1.01, 1.1]], dtype=torch.float64)
    assert combination_weights(G3, "affine", ridge=0.0)[1] < 0
    assert torch.allclose(combination_weights(G3, "convex", ridge=0.0), torch.tensor([1.0, 0.0], dtype=torch.float64))
    sel = combination_weights(G, "select")
    assert torch.equal(sel.argmax(-1), torch.diagonal(G, dim1=-2, dim2=-1).argmin(-1)) and (sel.sum(-1) == 1).all()


def _convex_by_every_face(G):
    """The simplex optimum by brute force: the affine optimum on every support, the best feasible."""
    P, best, best_obj = G.shape[0], None, np.inf
    for mask in range(1, 2**P):
        idx = [i for i in range(P) if mask >> i & 1]
        u = np.linalg.solve(G[np.ix_(idx, idx)], np.ones(len(idx)))
        a = np.zeros(P)
        a[idx] = u / u.sum()
        if (a >= -1e-12).all() and a @ G @ a < best_obj:
            best, best_obj = a, a @ G @ a
    return best


@pytest.mark.parametrize("P", [2, 5, 9])
def test_convex_weights_equal_every_face_brute_force(P):
    # Residuals sharing a common part (as real parts' do), some nearly copies of others: the
    # active set must find the same face and weights as trying all 2^P - 1 supports.
    rng = np.random.default_rng(P)
    for trial in range(40):
        common = rng.normal(size=(1, 300))
        r = common + rng.normal(size=(P, 300)) * rng.uniform(0.05, 2.0, size=(P, 1))
        if trial % 3 == 0:
            r[-1] = r[0] + 1e-3 * rng.normal(size=300)  # a near copy
        G = r @ r.T
        G = G / np.diag(G).mean() + 1e-9 * np.eye(P)
        a = combination_weights(torch.from_numpy(G), "convex", ridge=0.0).numpy()
        ref = _convex_by_every_face(G)
        assert (a >= 0).all() and abs(a.sum() - 1) < 1e-12
        assert a @ G @ a <= ref @ G @ ref * (1 + 1e-12) + 1e-15
        assert np.allclose(a, ref, atol=1e-7)


def test_convex_weights_are_fast_for_many_parts():
    # 20 parts, 200 problems: the face-by-face search would solve 2 x 10^8 systems.
    rng = np.random.default_rng(0)
    r = rng.normal(size=(200, 1, 500)) + rng.normal(size=(200, 20, 500)) * rng.uniform(0.1, 2, size=(200, 20, 1))
    G = torch.from_numpy(np.einsum("bin,bjn->bij", r, r))
    t = time.perf_counter()
    a = combination_weights(G, "convex")
    assert time.perf_counter() - t < 10
    grad = torch.einsum("bij,bj->bi", G, a)  # KKT: equal on the support, not smaller off it
    lam = (grad * a).sum(-1, keepdim=True)
    assert (grad >= lam * (1 - 1e-8)).all()
    assert ((grad - lam).abs() * a <= 1e-8 * lam.abs()).all()


def test_held_out_error_is_at_most_every_parts(joined):
    mse = np.asarray(joined.choice_["mse"])  # (sigmas, parts + 1): the last column is the joined machine's
    assert (mse[:, -1] <= mse[:, :-1].min(1) * (1 + 1e-6)).all()
    by = {c: np.asarray(v) for c, v in joined.choice_["mse_by_combine"].items()}
    assert np.allclose(by["convex"], mse[:, -1], rtol=1e-9)
    assert (by["affine"] <= by["convex"] * (1 + 1e-6)).all() and (by["convex"] <= by["select"] * (1 + 1e-6)).all()
    assert (np.asarray(joined.choice_["weights"]) >= 0).all()


def test_joined_beats_each_part_on_test_digits(joined, digits):
    test = digits[1400:]
    # measured 0.0326 against the best part's 0.0361 at 0.3; 0.1204 against 0.1219 (the mixture) at 1
    for s, margin in ((0.3, 0.95), (1.0, 1.0)):
        y = _noisy(test, s, seed=1)
        parts = [float(((p.denoise(y, s) - test) ** 2).mean()) for p in joined.parts_]
        mine = float(((joined.denoise(y, s) - test) ** 2).mean())
        assert mine < margin * min(parts)


def test_weights_interpolate_in_log_sigma_and_sum_to_one(joined):
    S = joined.sigmas
    grid = torch.tensor(joined.choice_["weights"], dtype=torch.float64)  # (S, P, B)
    band = joined._band_index()
    assert torch.allclose(joined.weights_at(S[6]), grid[6][:, band], atol=1e-12)
    mid = float(np.sqrt(S[6] * S[7]))
    assert torch.allclose(joined.weights_at(mid), 0.5 * (grid[6] + grid[7])[:, band], atol=1e-12)
    assert torch.allclose(joined.weights_at(1e-4), grid[0][:, band]) and torch.allclose(joined.weights_at(1e3),
                                                                                         grid[-1][:, band])
    for s in (1e-4, 0.03, 0.7, 300.0):
        assert torch.allclose(joined.weights_at(s).sum(0), torch.ones(band.numel(), dtype=torch.float64))


def test_one_part_is_that_part(digits):
    m = JoinedMachine(parts=[{"family": "gaussian"}], holdout=100).fit(digits[:600], progress=False)
    g = ScoreMachine(family="gaussian").fit(digits[:600][torch.randperm(600, generator=torch.Generator()
                                                                           .manual_seed(0))[100:]], progress=False)
    y = _noisy(digits[600:700], 0.2)
    assert torch.allclose(m.score(y, 0.2), g.score(y, 0.2), rtol=0, atol=1e-10)


def test_round_trip_and_load_model(joined, digits, tmp_path):
    path = joined.save(tmp_path / "j.wsm")
    name, again = load_model(str(path))
    assert isinstance(again, JoinedMachine) and name == joined.name
    y = _noisy(digits[1400:1450], 0.5)
    for s in (0.5, 0.07):
        assert torch.allclose(again.denoise(y, s), joined.denoise(y, s), rtol=0, atol=1e-12)


def test_per_image_sigma_matches_one_sigma_at_a_time(joined, digits):
    y = _noisy(digits[1400:1406], 0.5)
    sig = torch.tensor([0.1, 0.1, 0.5, 0.5, 2.0, 2.0])
    out = joined.denoise(y, sig)
    for i in range(6):
        assert torch.allclose(out[i : i + 1], joined.denoise(y[i : i + 1], float(sig[i])), atol=1e-12)


@pytest.mark.parametrize("params, match", [
    (dict(parts=[{"family": "nope"}]), "family"),
    (dict(parts=[]), "non-empty"),
    (dict(parts=[{"family": "mixture+local-mixture"}]), "cannot be a part"),
    (dict(combine="stack"), "combine"),
    (dict(sigmas=(0.5, 0.1)), "increasing"),
    (dict(parts=[{"family": "mixture", "components": 0}]), "components"),
])
def test_bad_configuration_is_one_line(params, match):
    with pytest.raises(WavescoreError, match=match):
        JoinedMachine(**params)


def test_too_few_images_and_unfitted(digits):
    with pytest.raises(WavescoreError, match="twice as many"):
        JoinedMachine(holdout=256).fit(digits[:300], progress=False)
    with pytest.raises(WavescoreError, match="not fitted"):
        JoinedMachine().denoise(digits[:2], 0.1)


# ---------------------------------------------------------------------------------- calibration, scheduled locality
_QUICK = {"family": "local-mixture", "components": 4, "basis": "pixel", "max_samples": 5000, "em_iterations": 2,
          "kmeans_iterations": 5}
SMALL_PARTS = [{"family": "gaussian"}, {**_QUICK, "radius": 1}, {**_QUICK, "radius": 2}]
FEW_SIGMAS = (0.05, 0.2, 1.0, 5.0)
# small and quick: 4 components, few samples and iterations, 4 grid sigmas
SCHEDULED = dict(radii=(1, 2, 3), components=4, holdout=100, sigmas=FEW_SIGMAS, max_samples=5000, em_iterations=2,
                 kmeans_iterations=5)


@pytest.fixture(scope="module")
def scheduled(digits):
    return make_machine("scheduled-local-mixture", **SCHEDULED).fit(digits[:400], progress=False)


def test_reference_none_is_todays_fit_and_a_part_as_reference_selects_it(digits):
    cfg = dict(parts=SMALL_PARTS, holdout=60, sigmas=(0.05, 1.0))
    plain = JoinedMachine(**cfg).fit(digits[:300], progress=False)
    none = JoinedMachine(**cfg).fit(digits[:300], progress=False, reference=None)
    assert none.choice_ == plain.choice_ and plain.choice_["reference"] is None  # bitwise: the same floats
    for p, combine in ((2, "convex"), (1, "select")):
        m = JoinedMachine(**cfg, combine=combine).fit(digits[:300], progress=False, reference=plain.parts_[p])
        A = np.asarray(m.choice_["weights"])  # (sigmas, parts, bands): one-hot on p everywhere
        # the parts refit identically, so part p's residual against itself is 0 (convex: up to the ridge)
        assert np.allclose(A[:, p], 1.0, atol=1e-6) and np.allclose(np.delete(A, p, axis=1), 0.0, atol=1e-6)
        assert m.choice_["reference"] == plain.parts_[p].name
        assert set(m.schedule().values()) == {p}


def test_scheduled_picks_the_best_radius_at_every_grid_sigma(scheduled, digits):
    assert scheduled.name == "scheduled-local-mixture-pixel-K4-r1-2-3"
    assert scheduled.combine == "select" and scheduled.per_band is False
    radius = scheduled.schedule("radius")
    assert list(radius) == list(FEW_SIGMAS) and set(radius.values()) <= {1, 2, 3}
    # each radius alone, as a one-part joined machine: the same split, part fit and held-out noise
    cfg = {k: v for k, v in SCHEDULED.items() if k not in ("radii", "holdout", "sigmas")}
    alone = np.array([JoinedMachine(parts=[{"family": "local-mixture", "basis": "pixel", "radius": r, **cfg}],
                                    holdout=100, sigmas=FEW_SIGMAS).fit(digits[:400], progress=False).choice_["mse"]
                      for r in (1, 2, 3)])[:, :, 0]  # (radii, sigmas)
    mine = np.asarray(scheduled.choice_["mse"])[:, -1]
    assert np.allclose(mine, alone.min(0), rtol=1e-10, atol=0)
    assert [radius[s] for s in FEW_SIGMAS] == [(1, 2, 3)[i] for i in alone.argmin(0)]
    # measured on digits: radius 1 at low noise, 3 at high noise
    assert radius[0.05] < radius[5.0]


def test_scheduled_round_trip_is_exact(scheduled, digits, tmp_path):
    name, again = load_model(str(scheduled.save(tmp_path / "s.wsm")))
    assert isinstance(again, JoinedMachine) and name == scheduled.name
    assert again.schedule("radius") == scheduled.schedule("radius") and again.choice_ == scheduled.choice_
    for p, q in zip(again.parts_, scheduled.parts_):
        assert all(torch.equal(u, v) for g, h in zip(p.params_, q.params_) for u, v in zip(g, h))
    y = _noisy(digits[400:420], 0.5)
    for s in (0.05, 0.5, 3.0):  # the same arrays; a loaded array's memory layout may change the last bit
        assert torch.allclose(again.denoise(y, s), scheduled.denoise(y, s), rtol=0, atol=1e-12)


def test_scheduled_and_reference_bad_input_is_one_line(digits):
    for radii, match in (((), "radii"), ((1, 1), "distinct"), ((1, -1), "radii"), ((1.5,), "radii")):
        with pytest.raises(WavescoreError, match=match):
            scheduled_local_mixture(radii)
    with pytest.raises(WavescoreError, match="drop radius"):
        make_machine("scheduled-local-mixture", radius=2)
    with pytest.raises(WavescoreError, match="cannot be a part"):
        JoinedMachine(parts=[{"family": "scheduled-local-mixture"}])
    with pytest.raises(WavescoreError, match="denoise"):
        JoinedMachine(parts=[{"family": "gaussian"}], holdout=100).fit(digits[:300], reference="unet")
    with pytest.raises(WavescoreError, match="not fitted"):
        make_machine("scheduled-local-mixture").schedule()


def test_scheduled_cli(tmp_path, capsys):
    """`wavescore fit --family scheduled-local-mixture --radius R` joins radii 1..R; R < 2 and
    options of other families are refused in one line."""
    from wavescore.cli import main
    from wavescore.models import load_model

    wsm = tmp_path / "s.wsm"
    assert main(["fit", "--data", "digits", "--family", "scheduled-local-mixture", "--radius", "2",
                 "--components", "4", "-o", str(wsm)]) == 0
    _, m = load_model(str(wsm))
    assert [p["radius"] for p in m.parts] == [1, 2] and set(m.schedule("radius").values()) <= {1, 2}
    for bad, msg in ((["--radius", "1"], "needs --radius R >= 2"), (["--radius", "2", "--bands", "all"], "--bands")):
        assert main(["fit", "--data", "digits", "--family", "scheduled-local-mixture", *bad, "-o",
                     str(tmp_path / "t.wsm")]) == 2
        assert msg in capsys.readouterr().err


def test_part_cache_reuses_identical_parts_and_changes_nothing(digits):
    cfg = dict(parts=SMALL_PARTS, holdout=60, sigmas=(0.05, 1.0))
    plain = JoinedMachine(**cfg).fit(digits[:300], progress=False)
    cache = {}
    first = JoinedMachine(**cfg).fit(digits[:300], progress=False, part_cache=cache)
    assert len(cache) == len(SMALL_PARTS) and first.choice_ == plain.choice_
    # a machine with one part more and a reference: only the new part is fitted, the rest reused
    more = JoinedMachine(**{**cfg, "parts": [*SMALL_PARTS, {"family": "mixture", "components": 3}]})
    more.fit(digits[:300], progress=False, part_cache=cache, reference=plain.parts_[0])
    assert len(cache) == len(SMALL_PARTS) + 1
    assert all(a is b for a, b in zip(more.parts_, first.parts_))
    # other images, another held-out split or another part setting: fitted anew, not reused
    JoinedMachine(**cfg).fit(digits[:300].flip(0), progress=False, part_cache=cache)
    JoinedMachine(**{**cfg, "seed": 1}).fit(digits[:300], progress=False, part_cache=cache)
    assert len(cache) == 3 * len(SMALL_PARTS) + 1
    y = _noisy(digits[300:340], 0.5)
    assert torch.equal(first.denoise(y, 0.5), plain.denoise(y, 0.5))


def test_parts_differing_only_in_temperature_share_one_fit(digits, tmp_path):
    from wavescore.mixture import MixtureMachine

    parts = [{"family": "gaussian"}, {"family": "mixture", "components": 3},
             {"family": "mixture", "components": 3, "temperature": 2.0}]
    j = JoinedMachine(parts=parts, holdout=60, sigmas=(0.05, 1.0)).fit(digits[:300], progress=False)
    cold, warm = j.parts_[1], j.parts_[2]
    assert warm is not cold and (cold.temperature, warm.temperature) == (1.0, 2.0)
    assert warm.means_ is cold.means_ and warm.U_ is cold.U_  # one fit, the arrays not copied
    # the shared part is exactly a tempered mixture fitted on its own (same training split)
    order = torch.randperm(300, generator=torch.Generator().manual_seed(j.seed))
    alone = MixtureMachine(components=3, temperature=2.0).fit(digits[:300][order[60:]], progress=False)
    y = _noisy(digits[300:340], 1.0)
    assert torch.equal(warm.denoise(y, 1.0), alone.denoise(y, 1.0))
    assert not torch.equal(cold.denoise(y, 1.0), warm.denoise(y, 1.0))
    # saved and loaded, the parts keep their own temperatures
    j.save(tmp_path / "j.wsm")
    back = JoinedMachine.load(tmp_path / "j.wsm")
    assert [p.temperature for p in back.parts_[1:]] == [1.0, 2.0]
    assert torch.allclose(back.denoise(y, 1.0), j.denoise(y, 1.0), rtol=0, atol=1e-12)  # as every round trip
    # the file holds the shared arrays once, and the loaded parts share them again
    with np.load(tmp_path / "j.wsm") as z:
        assert any(k.startswith("p1.") for k in z.files) and not any(k.startswith("p2.") for k in z.files)
    assert back.parts_[2].means_ is back.parts_[1].means_ and back.parts_[2] is not back.parts_[1]


def test_tempered_parts_are_scored_from_one_log_joint(digits, monkeypatch):
    """The joined score is sum_i a_i score_i whether or not tempered parts share their log joint."""
    import wavescore.mixture as mixture
    from wavescore.joined import shared_fits

    parts = [{"family": "gaussian"}, {"family": "mixture", "components": 3},
             {"family": "mixture", "components": 3, "temperature": 2.0},
             {"family": "mixture", "components": 3, "temperature": 4.0}, {"family": "mixture", "components": 4}]
    j = JoinedMachine(parts=parts, holdout=60, sigmas=(0.05, 1.0, 5.0), combine="affine").fit(digits[:300],
                                                                                  progress=False)
    assert shared_fits(j.parts_) == [0, 1, 1, 1, 4]
    x = _noisy(digits[300:340], 2.0)
    w = j.transform_.forward(x)
    a = j.weights_at(2.0)
    assert bool((a[1:4] != 0).any(1).all())  # every tempered part takes part at this sigma
    want = sum(a[i] * j.transform_.forward(m.score(x, 2.0)) for i, m in enumerate(j.parts_))
    calls = []
    real = mixture.gmm_log_joint
    monkeypatch.setattr(mixture, "gmm_log_joint", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = j.wavelet_score(w, 2.0)
    assert len(calls) == 2  # one for the three temperatures of the K = 3 fit, one for K = 4
    assert float((got - want).abs().max()) <= 1e-12 * float(want.abs().max())


def test_joined_files_check_shared_parts(digits, tmp_path):
    """A file whose shared part points anywhere but an earlier part of its class is refused;
    files of version 1 (every part with its own arrays) still load."""
    import json

    from wavescore._io import write_archive

    parts = [{"family": "gaussian"}, {"family": "mixture", "components": 3},
             {"family": "mixture", "components": 3, "temperature": 2.0}]
    j = JoinedMachine(parts=parts, holdout=60, sigmas=(0.05, 1.0)).fit(digits[:300], progress=False)
    y = _noisy(digits[300:320], 1.0)
    header, arrays = j._archive()
    for bad in (2, 0, 5, "1"):
        h = json.loads(json.dumps(header))
        h["parts"][2]["shares_fit_of"] = bad
        write_archive(tmp_path / "bad.wsm", h, arrays)
        with pytest.raises(WavescoreError, match="shares the fit"):
            JoinedMachine.load(tmp_path / "bad.wsm")
    # version 1: each part's own arrays
    h = json.loads(json.dumps(header))
    h["version"] = 1
    del h["parts"][2]["shares_fit_of"]
    old = dict(arrays, **{k.replace("p1.", "p2.", 1): v for k, v in arrays.items() if k.startswith("p1.")})
    write_archive(tmp_path / "v1.wsm", h, old)
    back = JoinedMachine.load(tmp_path / "v1.wsm")
    assert back.parts_[2].temperature == 2.0
    assert torch.allclose(back.denoise(y, 1.0), j.denoise(y, 1.0), rtol=0, atol=1e-12)


def test_a_part_fitted_on_its_own_images(digits, tmp_path):
    """A part with ``data`` is exactly that machine fitted on all of those images (here the last 500
    digits, saved as the .npz `wavescore sample` writes); the weights still come from the
    held-out training images; the name says which images; saved and loaded, nothing changes. The
    core takes the images from fit(images=); experiments.part_images loads them."""
    from wavescore.experiments import fit_models, part_images
    from wavescore.mixture import MixtureMachine

    own = tmp_path / "net-samples.npz"
    np.savez(own, samples=digits[-500:].float().numpy())
    parts = [{"family": "gaussian"}, {"family": "mixture", "components": 3},
             {"family": "mixture", "components": 3, "data": str(own)}]
    cfg = dict(parts=parts, holdout=60, sigmas=(0.05, 1.0))
    j = JoinedMachine(**cfg)
    images = part_images(j)
    assert list(images) == [str(own)] and torch.equal(images[str(own)], load_dataset(str(own)))
    j.fit(digits[:300], progress=False, images=images)
    alone = MixtureMachine(components=3).fit(load_dataset(str(own)), progress=False)
    y = _noisy(digits[300:340], 1.0)
    assert torch.equal(j.parts_[2].denoise(y, 1.0), alone.denoise(y, 1.0))
    assert not torch.allclose(j.parts_[1].denoise(y, 1.0), alone.denoise(y, 1.0), atol=1e-3)
    assert j.name == "joined(gaussian-P1+mixture-K3+mixture-K3@net-samples)"
    assert j.choice_["parts"][2] == "mixture-K3@net-samples" and j.parts_[2].n_samples_ == 500
    j.save(tmp_path / "j.wsm")
    back = JoinedMachine.load(tmp_path / "j.wsm")
    assert back.name == j.name and back.parts[2]["data"] == str(own)
    assert torch.allclose(back.denoise(y, 1.0), j.denoise(y, 1.0), rtol=0, atol=1e-12)
    # the experiment runner loads the images itself and fits the same machine
    models, _ = fit_models([dict(family="mixture+local-mixture", **cfg)], digits[:300], progress=False)
    assert torch.equal(models[j.name].denoise(y, 1.0), j.denoise(y, 1.0))
    # the part cache tells the two K = 3 mixtures apart by their images
    cache = {}
    JoinedMachine(**cfg).fit(digits[:300], progress=False, part_cache=cache, images=images)
    assert len(cache) == 3
    # the fitted machine loads without its part's images (they are fitted into its arrays)
    own.unlink()
    assert torch.equal(JoinedMachine.load(tmp_path / "j.wsm").denoise(y, 1.0), back.denoise(y, 1.0))
    # images not handed over, of another size, or a name that is not a string: one line, before any fit
    with pytest.raises(WavescoreError, match=r"pass them as fit\(\.\.\., images="):
        JoinedMachine(**cfg).fit(digits[:300], progress=False)
    with pytest.raises(WavescoreError, match=r"shape \(1, 4, 4\).*same size"):
        JoinedMachine(**cfg).fit(digits[:300], progress=False, images={str(own): torch.zeros(10, 1, 4, 4)})
    with pytest.raises(WavescoreError, match="must name its images"):
        JoinedMachine(parts=[{"family": "gaussian", "data": 3}])
