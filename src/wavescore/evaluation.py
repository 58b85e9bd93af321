"""Denoising error of any model with ``denoise(x, sigma)`` on fixed, seeded noise draws.

Every model sees the same noisy inputs: the noise for sigma index k is drawn from a
generator seeded with ``(seed, k)``, independent of the model and of the batch size.
PSNR uses the peak-to-peak range of images in [-1, 1]: ``10 log10(2^2 / MSE)``.
"""
from __future__ import annotations

import math
import time
from typing import Mapping, Sequence

import torch

from .fitting import noise_for  # noqa: F401 - the seeded draws live with the held-out choice

DEFAULT_SIGMAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def parse_sigmas(text: str) -> list[float]:
    from ._io import WavescoreError

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise WavescoreError(f"--sigmas must be comma-separated numbers, got {text!r}") from None
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        raise WavescoreError(f"--sigmas must be positive finite numbers, got {text!r}")
    return values


def psnr(mse: float) -> float:
    """PSNR in dB; NaN (written as null in JSON) where the MSE is not a finite number."""
    if not math.isfinite(mse):
        return float("nan")
    return 10 * math.log10(4.0 / mse) if mse > 0 else float("inf")


def evaluate_denoisers(models: Mapping[str, object], x: torch.Tensor, sigmas: Sequence[float], *, seed: int = 0,
                       batch_size: int = 1000, progress: bool = True) -> dict:
    """MSE (per pixel) and PSNR of each model's denoiser at each sigma, on the same noisy inputs.

    Returns ``{"sigmas": [...], "models": {name: {"mse": [...], "psnr": [...], "seconds": t}}}``.
    """
    from ._io import progress_bar

    x = x.to(torch.float64)
    out = {"sigmas": list(map(float, sigmas)), "n_images": int(x.shape[0]), "seed": seed, "models": {}}
    for name, model in models.items():
        t0 = time.perf_counter()
        mses = []
        for k, s in enumerate(progress_bar(sigmas, desc=f"evaluate {name}", enabled=progress, leave=False)):
            z = noise_for(x.shape, k, seed)
            sq = 0.0
            for b in range(0, x.shape[0], batch_size):
                clean = x[b : b + batch_size]
                den = model.denoise(clean + s * z[b : b + batch_size], s).to(torch.float64)
                if not torch.isfinite(den).all():
                    from ._io import WavescoreError

                    raise WavescoreError(f"model {name} returned NaN or inf at sigma {s:g}: it is broken at this "
                                         "noise level (refit it, or leave this sigma out)")
                sq += float(((den - clean) ** 2).sum())
            mses.append(sq / x.numel())
        out["models"][name] = {"mse": mses, "psnr": [psnr(m) for m in mses], "seconds": time.perf_counter() - t0}
    return out


def format_table(result: dict) -> str:
    """A plain-text table: one row per sigma, MSE per model (best in brackets)."""
    names = list(result["models"])
    head = f"{'sigma':>8} " + " ".join(f"{n[:22]:>22}" for n in names)
    lines = [head, "-" * len(head)]
    for k, s in enumerate(result["sigmas"]):
        vals = [result["models"][n]["mse"][k] for n in names]
        best = min(vals)
        cells = [(f"[{v:.3e}]" if v == best and len(vals) > 1 else f"{v:.3e}") for v in vals]
        lines.append(f"{s:>8g} " + " ".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)
