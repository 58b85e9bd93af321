"""Scale: photo tiles at 64x64 and 128x128, the accumulation kernel, and peak memory
measured against ``memory_estimate`` (issue 7)."""
import sys

import numpy as np
import pytest
import torch

from wavescore import ScoreMachine, WavescoreError, load_dataset
from wavescore import _gram, datasets
from wavescore.cli import main
from wavescore.evaluation import evaluate_denoisers
from wavescore.features import monomials

skimage = pytest.importorskip("skimage", reason="the photo-tiles datasets need scikit-image (the photos extra)")



# ----------------------------------------------------------------------------- photo tiles
@pytest.mark.parametrize("size,n_train,n_test", [(64, 2569, 691), (128, 513, 92)])
def test_photo_tiles_splits_do_not_overlap(size, n_train, n_test):
    x, y = load_dataset(f"photo-tiles-{size}", return_labels=True)
    xt, yt = load_dataset(f"photo-tiles-{size}", "test", return_labels=True)
    assert x.shape == (n_train, 1, size, size) and xt.shape == (n_test, 1, size, size)
    assert x.dtype == torch.float32 and float(x.min()) >= -1 and float(x.max()) <= 1
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0  # real photographs use the whole range
    assert set(y.tolist()) == set(range(len(datasets.PHOTOS)))  # every photograph gives train tiles
    # geometry: every train tile lies left of the cut, every test tile right of it
    for photo in datasets.photographs():
        h, w = photo.shape
        cut = int(datasets.PHOTO_TRAIN_FRACTION * w)
        assert all(c + size <= cut for _, c in datasets.tile_positions(h, w, size, "train"))
        assert all(c >= cut and c + size <= w for _, c in datasets.tile_positions(h, w, size, "test"))
    # content: no test tile is a train tile (flat dark sky makes some nearly equal, none identical)
    flat, flat_t = x.reshape(len(x), -1).double(), xt.reshape(len(xt), -1).double()
    d2 = (flat_t**2).sum(1)[:, None] + (flat**2).sum(1)[None] - 2 * flat_t @ flat.T
    assert float(d2.min()) > 0.01
    # deterministic, and the camera's top-left tile is the photograph itself scaled to [-1, 1]
    assert torch.equal(load_dataset(f"photo-tiles-{size}", limit=5), x[:5])
    cam = torch.from_numpy((skimage.data.camera()[:size, :size] / 127.5 - 1).astype(np.float32))
    camera = datasets.PHOTOS.index("camera")
    assert any(torch.equal(t[0], cam) for t in x[y == camera])


def test_photo_tiles_listed_and_clear_error_without_scikit_image(monkeypatch, capsys):
    main(["data", "list"])
    listed = capsys.readouterr().out
    assert "photo-tiles-64" in listed and "photo-tiles-128" in listed
    datasets.photographs.cache_clear()
    datasets._photo_tiles.cache_clear()
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    try:
        with pytest.raises(WavescoreError, match=r"need scikit-image.*pip install scikit-image"):
            load_dataset("photo-tiles-64")
    finally:
        datasets.photographs.cache_clear()
        datasets._photo_tiles.cache_clear()
    with pytest.raises(WavescoreError, match="unknown dataset 'photo-tiles-48'"):
        load_dataset("photo-tiles-48")


# ----------------------------------------------------------------------------- accumulation kernel
def _naive_grams(acc, w):
    """The definition: sum over images of phi phi^T per row (or pooled), via Monomials.__call__."""
    u = acc.standardise(w)
    out = []
    for g, feats, gram in zip(acc.groups, acc.features, acc.grams):
        phi = feats(u[:, torch.as_tensor(g.nbr)])  # (n, rows, F)
        full = torch.einsum("nrf,nrg->rfg", phi, phi)
        out.append(full.sum(0, keepdim=True) if gram.shape[0] == 1 else full)
    return out


@pytest.mark.parametrize("cfg,n,side,max_bytes", [
    (dict(family="local", degree=2), 300, 16, 2.5e8),
    (dict(family="local", degree=2), 300, 16, 5e4),  # positions in many chunks (and one over budget)
    (dict(family="local", degree=2, shared=True), 10, 32, 2.5e8),  # folded positions with filler
    (dict(family="parent", degree=2, shared=True, bands="all"), 300, 16, 3e5),
    (dict(family="orientation", degree=3), 300, 16, 2.5e8),
    (dict(family="gaussian"), 300, 16, 1e5),
])
def test_accumulation_kernel_equals_definition(cfg, n, side, max_bytes):
    x = torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1
    m = ScoreMachine(**cfg)
    acc = m.new_accumulator(x)
    acc.max_batch_bytes = max_bytes
    w = m.transform_.forward(x.double())
    acc.update(w[: n // 2]).update(w[n // 2 :])
    for got, ref in zip(acc.grams, _naive_grams(acc, w)):
        assert got.shape == ref.shape
        assert float((got - ref).abs().max()) <= 1e-12 * float(ref.abs().max())


def test_feature_runs_cover_every_feature_once():
    for m, p in [(9, 2), (10, 3), (1, 3), (27, 1)]:
        f = monomials(m, p)
        runs = _gram.feature_recipe(f)
        covered = sorted(i for a, b, _, _ in runs for i in range(a, b))
        assert covered == list(range(1, f.F))
        v = torch.randn(3, m, 5, dtype=torch.float64)
        assert torch.allclose(_gram.features_columns(f, v), f(v.transpose(1, 2)).transpose(1, 2), atol=0)
    assert len(_gram.feature_recipe(monomials(9, 2))) == 10  # degree 1 in one run, degree 2 in nine


# ----------------------------------------------------------------------------- memory
def _check_memory(r, factor=2.5):
    assert r["measured_bytes"] > 0
    assert r["measured_bytes"] <= r["predicted_bytes"], r
    assert r["predicted_bytes"] <= factor * r["measured_bytes"], r


def test_fit_memory_measured_within_prediction():
    from wavescore.profiling import measure_fit_memory

    r = measure_fit_memory(dict(family="local", degree=2), shape=(1, 32, 32), n=1000)
    acc = ScoreMachine(family="local", degree=2).new_accumulator(torch.zeros(2, 1, 32, 32))
    assert r["moments_bytes"] == sum(g.numel() * 8 for g in acc.grams) == 8 * (4 * 9 + 3 * 4 * 15**2 + 3 * 336 * 55**2)
    _check_memory(r)


@pytest.mark.slow
@pytest.mark.parametrize("params,shape,n", [
    (dict(family="local", degree=3), (1, 32, 32), 1000),
    (dict(family="local", degree=2), (1, 128, 128), 300),
    (dict(family="parent", degree=2, shared=True), (1, 128, 128), 500),
    (dict(family="gaussian"), (1, 64, 64), 1000),
])
def test_fit_memory_measured_within_prediction_slow(params, shape, n):
    from wavescore.profiling import measure_fit_memory

    _check_memory(measure_fit_memory(params, shape=shape, n=n))


def test_memory_estimate_says_how_far_families_scale():
    gib = 2**30
    budget = 0.6 * 24 * gib  # what _check_memory allows on a 24 GiB machine
    for fam in ("local", "parent"):  # shared P=2: the batch of coefficients dominates, not the model
        for size in (64, 128):
            assert ScoreMachine(family=fam, degree=2, shared=True).memory_estimate((1, size, size))["peak_bytes"] < 2 * gib
        assert ScoreMachine(family=fam, degree=2, shared=True).memory_estimate((1, 256, 256))["peak_bytes"] < 8 * gib
        small_batch = ScoreMachine(family=fam, degree=2, shared=True, batch_size=100)
        assert small_batch.memory_estimate((1, 512, 512))["peak_bytes"] < 4 * gib
    assert ScoreMachine(family="local", degree=3).memory_estimate((1, 64, 64))["peak_bytes"] < budget
    assert ScoreMachine(family="local", degree=3).memory_estimate((1, 128, 128))["peak_bytes"] > budget
    assert ScoreMachine(family="gaussian").memory_estimate((1, 64, 64))["peak_bytes"] < budget
    m = ScoreMachine(family="gaussian", max_memory=budget)
    with pytest.raises(WavescoreError, match=r"16385 features.*GiB"):
        m.fit(torch.zeros(2, 1, 128, 128), progress=False)


# ----------------------------------------------------------------------------- 64x64 and 128x128
def _fit_and_denoise(size, n_train, n_test, sigma):
    train = load_dataset(f"photo-tiles-{size}", limit=n_train)
    test = load_dataset(f"photo-tiles-{size}", "test", limit=n_test)
    models = {m.name: m.fit(train, progress=False) for m in (
        ScoreMachine(family="independent", degree=1, shared=True),
        ScoreMachine(family="local", degree=2, radius=1, shared=True),
        ScoreMachine(family="parent", degree=2, radius=1, shared=True))}
    res = evaluate_denoisers(models, test, [sigma], progress=False)["models"]
    return {k: v["mse"][0] for k, v in res.items()}


def test_shared_p2_machines_fit_and_denoise_64x64():
    mse = _fit_and_denoise(64, 800, 48, 0.2)
    for v in mse.values():
        assert v < 0.35 * 0.2**2  # every machine removes most of the noise
    # neighbours and degree 2 help on real photographs (README: 9% at this sigma)
    assert mse["local-r1-P2-shared"] < 0.97 * mse["independent-P1-shared"]
    assert mse["parent-r1-P2-shared"] < 0.95 * mse["independent-P1-shared"]


@pytest.mark.slow
def test_shared_p2_machines_fit_and_denoise_128x128():
    mse = _fit_and_denoise(128, 513, 48, 0.2)
    for v in mse.values():
        assert v < 0.35 * 0.2**2
    assert mse["parent-r1-P2-shared"] < 0.95 * mse["independent-P1-shared"]
