"""Distributed fitting on a Dask LocalCluster equals the single-process fit."""
import numpy as np
import pytest
import torch

pytest.importorskip("dask.distributed")

from wavescore import ScoreMachine, WavescoreError, load_dataset
from wavescore.distributed import fit_distributed, row_shards


def test_local_cluster_equals_single_process(tmp_path):
    x = load_dataset("digits")
    arr = np.rint((x[:, 0].numpy() + 1) * 127.5).astype(np.uint8)
    path = tmp_path / "digits.npy"
    np.save(path, arr)
    shards = row_shards(str(path), 3)
    assert [s[1:] for s in shards] == [(0, 479), (479, 958), (958, 1437)]
    cfg = dict(family="parent", degree=2, batch_size=479)
    dist = fit_distributed(ScoreMachine(**cfg), shards, workers=2, progress=False)
    single = ScoreMachine(**cfg).fit(load_dataset(str(path)), progress=False)
    assert dist.n_samples_ == single.n_samples_ == 1437
    for a, b in zip(dist.moments_.grams, single.moments_.grams):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-9)
    xs = x[:4] + 0.3 * torch.randn(4, 1, 8, 8)
    assert torch.allclose(dist.denoise(xs, 0.3), single.denoise(xs, 0.3), atol=1e-9)


def test_mismatched_shards_fail(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((10, 8, 8), dtype=np.uint8))
    np.save(tmp_path / "b.npy", np.zeros((10, 16, 16), dtype=np.uint8))
    with pytest.raises(Exception, match="every shard must share one image shape"):
        fit_distributed(ScoreMachine(family="independent"), [str(tmp_path / "a.npy"), str(tmp_path / "b.npy")],
                        workers=1, progress=False)


def test_gated_machine_on_a_local_cluster_equals_single_process(tmp_path):
    from wavescore.gates import GatedMachine

    x = load_dataset("digits")
    arr = np.rint((x[:, 0].numpy() + 1) * 127.5).astype(np.uint8)
    path = tmp_path / "digits.npy"
    np.save(path, arr)
    cfg = dict(sigmas=(0.05, 0.5), select=False, batch_size=479)
    dist = fit_distributed(GatedMachine(**cfg), row_shards(str(path), 3), workers=2, progress=False)
    single = GatedMachine(**cfg).fit(load_dataset(str(path)), progress=False)
    assert dist.n_samples_ == single.n_samples_ == 1437
    torch.testing.assert_close(dist.beta_, single.beta_, rtol=1e-8, atol=1e-9)
    # Z lives in the covariance eigenbasis, arbitrary inside degenerate eigenspaces (the
    # constant border of digits): compare K beta = V Z, which is not.
    torch.testing.assert_close(dist.V_ @ dist.Z_, single.V_ @ single.Z_, rtol=1e-8, atol=1e-9)
    xs = x[:4].double() + 0.3 * torch.randn(4, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(dist.denoise(xs, 0.3), single.denoise(xs, 0.3), rtol=1e-9, atol=1e-9)
    with pytest.raises(WavescoreError, match="select=False"):
        fit_distributed(GatedMachine(), row_shards(str(path), 3), workers=1, progress=False)
