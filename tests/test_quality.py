"""Sample-quality measures: closed forms, brute force, and sanity on real digits."""
import numpy as np
import torch

from wavescore import load_dataset
from wavescore.quality import frechet_distance, nearest_neighbours, sample_quality, wavelet_packet_features


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    n = 200_000
    a = rng.normal(0.0, 1.0, (n, 2))
    b = rng.normal([1.0, -2.0], [2.0, 0.5], (n, 2))
    # diagonal Gaussians: ||mu_a - mu_b||^2 + sum (s_a - s_b)^2 = 5 + 1 + 0.25
    assert abs(frechet_distance(a, b) - 6.25) < 0.05
    assert frechet_distance(a, a) < 1e-6


def test_nearest_neighbours_brute_force():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(300, 1, 4, 4, generator=g)
    x = torch.randn(17, 1, 4, 4, generator=g)
    d, i = nearest_neighbours(x, train)
    full = ((x.reshape(17, 1, -1) - train.reshape(1, 300, -1)) ** 2).mean(-1)
    assert torch.equal(i, full.argmin(1))
    assert torch.allclose(d, full.min(1).values.sqrt().double(), atol=1e-6)


def test_wavelet_packet_features_shape_and_energy():
    x = torch.randn(3, 1, 16, 16)
    f = wavelet_packet_features(x, depth=2)
    assert f.shape == (3, 16)
    # Parseval: the mean of the 16 subband energies equals the mean pixel energy
    assert np.allclose(np.exp(f).mean(1), (x.double() ** 2).mean((1, 2, 3)).numpy(), rtol=1e-4)


def test_sample_quality_on_digits(tmp_path):
    test = load_dataset("digits", "test")
    train = load_dataset("digits", "train")
    good = sample_quality(test[:100], "digits", figure=tmp_path / "nn.png", n_reference=360, progress=False)
    copies = sample_quality(train[:100], "digits", n_reference=360, progress=False)
    noise = sample_quality(torch.rand(100, 1, 8, 8) * 2 - 1, "digits", n_reference=360, progress=False)
    assert copies["nearest_train_distance"]["samples_median"] == 0.0
    assert copies["nearest_train_distance"]["samples_below_test_1pct"] == 1.0
    assert good["nearest_train_distance"]["samples_below_test_1pct"] < 0.1
    assert noise["wavelet_packet_fd"]["samples"] > 5 * good["wavelet_packet_fd"]["samples"]
    assert noise["classifier_fd"]["samples"] > 5 * good["classifier_fd"]["samples"]
    assert good["classifier_fd"]["classifier_test_accuracy"] > 0.8
    assert (tmp_path / "nn.png").exists()
