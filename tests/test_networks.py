"""Trained denoisers: shapes, EDM preconditioning (Karras et al. 2022, Table 1), training and resume."""
import json
import math

import pytest
import torch
from torch import nn

from wavescore import WavescoreError, load_dataset
from wavescore.networks import EDMDenoiser, SmallCNN, SmallUNet, load_network, train

TINY_CNN = {"width": 8, "depth": 3}
TINY_UNET = {"base": 8, "mults": (1, 2)}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", limit=96)


def test_shapes_and_receptive_field():
    x = torch.randn(3, 2, 8, 8)
    c = torch.zeros(3)
    cnn = SmallCNN(channels=2, width=8, depth=4, kernel=5)
    assert cnn(x, c).shape == x.shape and cnn.receptive_field == 17
    assert SmallUNet(channels=2, base=8)(x, c).shape == x.shape
    n_default = sum(p.numel() for p in SmallUNet().parameters())
    assert 0.3e6 < n_default < 0.8e6
    with pytest.raises(WavescoreError, match="divisible"):
        SmallUNet(base=8)(torch.randn(1, 1, 6, 6), torch.zeros(1))


def test_cnn_is_local():
    """A pixel's output depends only on inputs within receptive_field // 2 of it."""
    torch.manual_seed(0)
    cnn = SmallCNN(width=4, depth=3, kernel=3)  # receptive field 7: radius 3
    x = torch.randn(1, 1, 16, 16, requires_grad=True)
    cnn(x, torch.zeros(1))[0, 0, 8, 8].backward()
    nz = torch.nonzero(x.grad[0, 0])
    assert nz[:, 0].min() >= 5 and nz[:, 0].max() <= 11 and nz[:, 1].min() >= 5 and nz[:, 1].max() <= 11


class _Zero(nn.Module):
    def forward(self, x, c_noise):
        return torch.zeros_like(x)


class _Echo(nn.Module):
    """Returns its input scaled by c_noise, to check c_in and c_noise."""
    def forward(self, x, c_noise):
        return x * c_noise.reshape(-1, 1, 1, 1)


def test_preconditioning_formulas():
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.5, 2.0, 80.0], dtype=torch.float64)
    sd = 0.5
    c_skip = (sd**2 / (sigma**2 + sd**2)).reshape(-1, 1, 1, 1)
    c_out = (sigma * sd / (sigma**2 + sd**2).sqrt()).reshape(-1, 1, 1, 1)
    c_in = (1 / (sigma**2 + sd**2).sqrt()).reshape(-1, 1, 1, 1)
    c_noise = (sigma.log() / 4).reshape(-1, 1, 1, 1)
    zero = EDMDenoiser(_Zero(), sigma_data=sd)
    out = zero.denoise(x, sigma)
    assert out.dtype == torch.float64  # float32 inside, caller's dtype outside
    assert torch.allclose(out, c_skip * x, rtol=1e-6, atol=1e-6)
    echo = EDMDenoiser(_Echo(), sigma_data=sd)
    assert torch.allclose(echo(x, sigma), c_skip * x + c_out * c_in * x * c_noise, rtol=1e-12)


def test_denoise_restores_training_mode_and_checks_input():
    model = EDMDenoiser(SmallCNN(width=4, depth=2), shape=(1, 8, 8))
    model.train()
    model.denoise(torch.randn(2, 1, 8, 8), 0.3, batch_size=1)
    assert model.training
    with pytest.raises(WavescoreError, match="shape"):
        model.denoise(torch.randn(2, 1, 6, 6), 0.3)
    with pytest.raises(WavescoreError, match="sigma"):
        model.denoise(torch.randn(2, 1, 8, 8), 0.0)


def test_loss_falls(digits, tmp_path):
    model = train("cnn", digits, epochs=8, batch_size=16, lr=3e-3, out=tmp_path / "cnn.pt", progress=False,
                  arch_kwargs={"width": 16, "depth": 3})
    losses = [h["loss"] for h in model.history_]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0]
    log = json.loads((tmp_path / "cnn.log.json").read_text())
    assert [e["loss"] for e in log["epochs"]] == losses
    assert model.shape_ == (1, 8, 8)


@pytest.mark.parametrize("arch,kw", [("cnn", TINY_CNN), ("unet", TINY_UNET)])
def test_resume_equals_uninterrupted(digits, tmp_path, arch, kw):
    """Train 1 epoch, then ask for 2 on the same path: it continues at epoch 2 and ends bitwise
    equal to an uninterrupted 2-epoch run (model, optimizer and the training RNG are restored)."""
    common = dict(batch_size=32, lr=1e-3, seed=3, progress=False, arch_kwargs=kw)
    first = train(arch, digits, epochs=1, out=tmp_path / "a.pt", **common)
    assert first.epoch_ == 1
    resumed = train(arch, digits, epochs=2, out=tmp_path / "a.pt", **common)
    straight = train(arch, digits, epochs=2, out=tmp_path / "b.pt", **common)
    assert resumed.epoch_ == 2 and [h["epoch"] for h in resumed.history_] == [1, 2]
    assert resumed.history_[0]["loss"] == first.history_[0]["loss"]
    assert [h["loss"] for h in resumed.history_] == [h["loss"] for h in straight.history_]
    for (k, a), (_, b) in zip(resumed.state_dict().items(), straight.state_dict().items()):
        assert torch.equal(a, b), k
    loaded = load_network(tmp_path / "a.pt")
    x = digits[:4]
    assert torch.equal(loaded.denoise(x, 0.5), straight.denoise(x, 0.5))
    # Already complete: nothing to do, the stored model comes back.
    again = train(arch, digits, epochs=2, out=tmp_path / "a.pt", **common)
    assert again.epoch_ == 2 and torch.equal(again.denoise(x, 0.5), straight.denoise(x, 0.5))


def test_resume_refuses_other_config(digits, tmp_path):
    train("cnn", digits, epochs=1, out=tmp_path / "c.pt", progress=False, arch_kwargs=TINY_CNN)
    with pytest.raises(WavescoreError, match="different configuration"):
        train("cnn", digits, epochs=2, out=tmp_path / "c.pt", progress=False, arch_kwargs=TINY_CNN, lr=1e-3)


def test_load_errors(tmp_path):
    with pytest.raises(WavescoreError, match="no such"):
        load_network(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WavescoreError, match="corrupt"):
        load_network(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(WavescoreError, match="not a wavescore network"):
        load_network(foreign)


def test_truncated_checkpoint(digits, tmp_path):
    path = tmp_path / "t.pt"
    train("cnn", digits, epochs=1, out=path, progress=False, arch_kwargs=TINY_CNN)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WavescoreError, match="corrupt"):
        load_network(path)
    with pytest.raises(WavescoreError, match="corrupt"):
        train("cnn", digits, epochs=2, out=path, progress=False, arch_kwargs=TINY_CNN)
