"""Figures people look at: image grids and curves (matplotlib, Agg), written atomically."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ._io import WavescoreError, atomic_path


def image_grid(x: torch.Tensor, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> one uint8 image (rows x cols tiles), greyscale or RGB."""
    x = x.detach().to(torch.float64).cpu().clamp(-1, 1)
    n, c, h, w = x.shape
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    grid = np.ones((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad))
    for k in range(n):
        r, q = divmod(k, ncol)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = x[k].numpy()
    img = np.rint((grid + 1) * 127.5).astype(np.uint8)
    return img[0] if c == 1 else np.moveaxis(img, 0, -1)


IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def save_image_grid(x: torch.Tensor, path, ncol: int | None = None, scale: int = 3) -> Path:
    """Write a grid of images (nearest-neighbour upscaled by ``scale``) as PNG or JPEG, by the
    file's suffix."""
    from PIL import Image

    path = Path(path)
    fmt = IMAGE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise WavescoreError(f"{path}: image grids are written as {', '.join(IMAGE_FORMATS)}; change the suffix")
    img = Image.fromarray(image_grid(x, ncol))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)
    return path


def plot_mse_curves(result: dict, path, title: str = "denoising error", reference: str = "gaussian-P1") -> Path:
    """Test MSE against sigma for every model (``evaluate_denoisers`` output), and each
    model's MSE relative to ``reference``; shared-parameter machines dashed."""
    plt = pyplot()
    sig = result["sigmas"]
    ref = result["models"].get(reference)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for name, v in result["models"].items():
        style = "--" if "shared" in name else "-"
        axes[0].loglog(sig, v["mse"], style, label=name, lw=1.2)
        if ref:
            axes[1].semilogx(sig, [a / b for a, b in zip(v["mse"], ref["mse"])], style, lw=1.2)
    axes[0].set(xlabel="σ", ylabel="test MSE per pixel", title=title)
    axes[1].set(xlabel="σ", ylabel=f"MSE / MSE({reference})", title=f"relative to {reference}")
    axes[1].axhline(1, color="k", lw=0.8)
    axes[0].legend(fontsize=6, ncol=2)
    return save_figure(fig, path)
