"""Figures people look at: image grids and curves (matplotlib, Agg), written atomically."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ._io import atomic_path


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


def save_image_grid(x: torch.Tensor, path, ncol: int | None = None, scale: int = 3) -> Path:
    """Write a PNG grid of images (nearest-neighbour upscaled by ``scale``)."""
    from PIL import Image

    img = Image.fromarray(image_grid(x, ncol))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
