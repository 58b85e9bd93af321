"""Sample quality, fully offline (no downloaded weights).

1. Memorisation vs novelty: each sample's distance to its nearest training image, against
   the same distance for held-out test images (a test image is novel by construction).
2. A Frechet distance in the feature space of a small classifier trained here on the
   dataset (its test accuracy reported), and that classifier's class histogram of the samples.
3. A weight-free Frechet distance on wavelet-packet statistics (per-subband log energies
   of a depth-3 Haar packet tree).

Each Frechet distance is reported beside a reference: the same distance between as many
held-out test images and the training set, the value a perfect sampler would get.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._io import WavescoreError, atomic_path, cache_dir
from .transform import WaveletTransform


# ------------------------------------------------------------------------------ neighbours
def nearest_neighbours(x: torch.Tensor, train: torch.Tensor):
    """(RMS-per-pixel distance, index) of each image's nearest training image."""
    from .baselines import EmpiricalDenoiser

    idx, dist = EmpiricalDenoiser(train).nearest(x.to(train.dtype), k=1)
    return dist[:, 0] / math.sqrt(x[0].numel()), idx[:, 0]


# ------------------------------------------------------------------------------ Frechet
def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^{1/2}) between Gaussian fits (Heusel et al. 2017)."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    # A tiny jitter keeps sqrtm defined when a feature is constant (singular covariance).
    eps = 1e-10 * max(np.trace(ca), np.trace(cb), 1e-12) * np.eye(len(ca))
    covmean = linalg.sqrtm((ca + eps) @ (cb + eps))
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * covmean))


def wavelet_packet_features(x: torch.Tensor, depth: int | None = None) -> np.ndarray:
    """Log mean energy of every subband of a Haar packet tree: (N, C * 4^depth).

    ``depth=None`` goes as deep as keeps every subband at least 4x4 (at most 3): a log
    energy of one or two coefficients is too heavy-tailed for a Gaussian (Frechet) fit."""
    x = x.to(torch.float64)
    n, c, h, w = x.shape
    most = max(0, int(math.log2(math.gcd(h, w))) - 2)
    depth = min(3, most) if depth is None else min(depth, int(math.log2(math.gcd(h, w))))
    bands = [x]
    for level in range(depth):
        t = WaveletTransform((c, h >> level, w >> level), "haar", 1)
        nxt = []
        for band in bands:
            parts = t.to_bands(t.forward(band))
            nxt += [parts["a"], parts["h1"], parts["v1"], parts["d1"]]
        bands = nxt
    energy = torch.stack([(b**2).mean((-1, -2)) for b in bands], -1)  # (N, C, 4^depth)
    return torch.log(energy + 1e-6).reshape(n, -1).numpy()


# ------------------------------------------------------------------------------ classifier
class SmallClassifier(nn.Module):
    """Two conv blocks and a 128-d feature layer; features() feeds the Frechet distance."""

    def __init__(self, channels: int = 1, classes: int = 10, side: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (side // 4) ** 2, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


def _batched(fn, x, batch=1000):
    with torch.no_grad():
        return torch.cat([fn(x[b : b + batch].float()) for b in range(0, len(x), batch)])


def train_classifier(data: str, *, epochs: int = 2, seed: int = 0, progress: bool = True) -> tuple[SmallClassifier, dict]:
    """Train (or load from the cache) the dataset's feature classifier; returns it and its report."""
    from ._io import progress_bar

    from .datasets import load_dataset

    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(data))
    path = cache_dir() / f"classifier-{safe}-e{epochs}-s{seed}.pt"
    x, y = load_dataset(data, "train", return_labels=True)
    if (y < 0).all():
        raise WavescoreError(f"{data} has no labels: the classifier Frechet distance needs a labelled dataset")
    classes = int(y.max()) + 1
    model = SmallClassifier(x.shape[1], classes, x.shape[-1])
    if path.exists():
        try:
            state = torch.load(path, weights_only=True)
            model.load_state_dict(state["model"])
            return model.eval(), {k: v for k, v in state.items() if k != "model"}
        except Exception:  # a broken cache entry is retrained, not fatal
            path.unlink()
    torch.manual_seed(seed)
    # Small sets (digits) need more passes: at least 400 optimiser steps in all.
    epochs = max(epochs, math.ceil(400 / math.ceil(len(x) / 128)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(len(x))
        for b in progress_bar(range(0, len(x), 128), desc=f"classifier epoch {epoch + 1}/{epochs}", enabled=progress,
                      leave=False):
            idx = perm[b : b + 128]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    xt, yt = load_dataset(data, "test", return_labels=True)
    acc = float((_batched(model, xt).argmax(1) == yt).float().mean())
    report = {"test_accuracy": acc, "epochs": epochs, "seed": seed, "train_seconds": time.perf_counter() - t0}
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), **report}, tmp)
    return model, report


# ------------------------------------------------------------------------------ report
def sample_quality(samples: torch.Tensor, data: str = "mnist", *, figure=None, n_reference: int = 10000,
                   progress: bool = True) -> dict:
    """All three measures for ``samples`` (N, C, H, W) against ``data``; optional figure of
    samples beside their nearest training images."""
    from .datasets import load_dataset

    samples = samples.to(torch.float32).clamp(-1, 1)
    train = load_dataset(data, "train")
    test = load_dataset(data, "test", limit=n_reference)
    if samples.shape[1:] != train.shape[1:]:
        raise WavescoreError(f"samples have shape {tuple(samples.shape[1:])}, {data} images {tuple(train.shape[1:])}")
    n = len(samples)
    out: dict = {"n_samples": n, "data": str(data)}

    d_s, i_s = nearest_neighbours(samples, train)
    d_t, _ = nearest_neighbours(test[:max(n, 1000)], train)
    thresh = float(torch.quantile(d_t, 0.01))
    out["nearest_train_distance"] = {
        "samples_median": float(d_s.median()), "test_median": float(d_t.median()),
        "samples_below_test_1pct": float((d_s < thresh).float().mean()),
        "test_1pct": thresh,
        "per_sample": d_s.tolist(),
    }

    ref = test[:n] if len(test) >= 2 * n else test[: len(test) // 2]
    pool = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n_reference]]
    wp_pool = wavelet_packet_features(pool)
    out["wavelet_packet_fd"] = {"samples": frechet_distance(wavelet_packet_features(samples), wp_pool),
                                "test_reference": frechet_distance(wavelet_packet_features(ref), wp_pool),
                                "n_reference_images": len(ref)}
    try:
        clf, report = train_classifier(data, progress=progress)
    except WavescoreError as exc:
        out["classifier_fd"] = {"skipped": str(exc)}
    else:
        feat_pool = _batched(clf.features, pool).numpy()
        logits = _batched(clf, samples)
        out["classifier_fd"] = {
            "samples": frechet_distance(_batched(clf.features, samples).numpy(), feat_pool),
            "test_reference": frechet_distance(_batched(clf.features, ref).numpy(), feat_pool),
            "classifier_test_accuracy": report["test_accuracy"],
            "class_histogram": torch.bincount(logits.argmax(1), minlength=logits.shape[1]).tolist(),
            "mean_max_probability": float(logits.softmax(1).max(1).values.mean()),
        }
    if figure is not None:
        from .plots import save_image_grid

        k = min(n, 16)
        pairs = torch.stack([samples[:k], train[i_s[:k]]], 1).reshape(2 * k, *samples.shape[1:])
        save_image_grid(pairs, Path(figure), ncol=8)
        out["figure"] = str(figure)
    return out
