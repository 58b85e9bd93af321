"""Mimicry measures: R² closed cases and an end-to-end comparison on digits."""
import torch

from wavescore import ScoreMachine, load_dataset
from wavescore.compare import compare_models, r2


class _MeanOnly:
    """Predicts the same image whatever the input: the R² baseline."""

    def __init__(self, img):
        self.img = img

    def denoise(self, x, sigma):
        return self.img.expand_as(x).to(x.dtype)


def test_r2_closed_cases():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(50, 1, 4, 4, generator=g, dtype=torch.float64)
    assert r2(ref, ref) == 1.0
    assert abs(r2(ref.mean(0, keepdim=True).expand_as(ref), ref)) < 1e-12  # the mean-only baseline scores 0
    noisy = ref + 0.5 * torch.randn(ref.shape, generator=g, dtype=torch.float64)
    expected = 1 - ((noisy - ref) ** 2).sum() / ((ref - ref.mean(0)) ** 2).sum()
    assert abs(r2(noisy, ref) - float(expected)) < 1e-9


def test_compare_end_to_end_on_digits():
    train, test = load_dataset("digits"), load_dataset("digits", "test")
    a = ScoreMachine(family="local", degree=2).fit(train, progress=False)
    b = ScoreMachine(family="gaussian").fit(train, progress=False)
    models = {"local": a, "local-copy": a, "gaussian": b, "mean": _MeanOnly(train.mean(0, keepdim=True))}
    res = compare_models(models, ["local"], train[:200], test[:200], [0.1, 1.0], n_samples=6, steps=4, progress=False)
    same = res["r2"]["local"]["local-copy"]
    assert same["denoiser"] == [1.0, 1.0] and same["score"] == [1.0, 1.0]
    assert res["samples"]["correlation"]["local"]["local-copy"]["mean"] > 1 - 1e-9
    g = res["r2"]["local"]["gaussian"]
    assert all(0.0 < v < 1.0 for v in g["denoiser"])
    # the machines beat doing nothing: test MSE below sigma^2
    for name in ("local", "gaussian"):
        mse = res["models"][name]["mse_test"]
        assert mse[0] < 0.1**2 and mse[1] < 1.0
