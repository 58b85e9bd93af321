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


def save_figure(fig, path, dpi: int = 110, rect=None) -> Path:
    """Write a matplotlib figure as PNG atomically and close it; ``rect`` (left, bottom, right,
    top, in figure fractions) is the part the panels fill, e.g. to leave room for a legend."""
    path = Path(path)
    fig.tight_layout(rect=rect)
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


def wrap_label(name: str, width: int = 44) -> str:
    """``name`` on lines of at most ``width`` characters (a longer piece keeps its own line),
    broken only after a "+" or at a space: a joined machine's name lists its parts."""
    pieces, line, out = [], "", []
    for ch in name:
        line += ch
        if ch in "+ ":
            pieces.append(line)
            line = ""
    pieces.append(line)
    line = ""
    for piece in pieces:
        if line and len(line) + len(piece.rstrip()) > width:
            out.append(line.rstrip())
            line = ""
        line += piece
    out.append(line.rstrip())
    return "\n".join(out)


def label_extent(labels) -> tuple[int, int]:
    """(characters in the longest line, lines in the tallest label) of multi-line labels: their
    room in a figure."""
    labels = list(labels)
    return (max((len(line) for label in labels for line in label.split("\n")), default=1),
            max((label.count("\n") + 1 for label in labels), default=1))


def labelled_rows(rows: dict, path, title: str | None = None, scale: float = 0.9) -> Path:
    """One row of images per entry of ``rows`` (name -> (k, C, H, W) in [-1, 1]), the name
    written left of its row, so a grid of several models can be read without a legend."""
    plt = pyplot()
    if not rows:
        raise WavescoreError("labelled_rows needs at least one row of images")
    k = max(len(x) for x in rows.values())
    labels = {name: wrap_label(name) for name in rows}
    width, lines = label_extent(labels.values())
    row_height = max(scale, 0.14 * lines)  # a joined machine's name takes several lines
    fig, axes = plt.subplots(len(rows), 1, squeeze=False,
                             figsize=(scale * k + 0.09 * width + 0.4, row_height * len(rows) + (0.4 if title else 0.1)))
    for ax, (name, x) in zip(axes[:, 0], rows.items()):
        img = image_grid(x, ncol=k)
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest", aspect="equal")
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_ylabel(labels[name], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def heatmap(values, row_labels, col_labels, path, title: str = "", vmin=None, vmax=None, fmt: str = ".2f") -> Path:
    """A labelled matrix with each cell's value written in it; NaN cells left blank."""
    plt = pyplot()
    m = np.ma.masked_invalid(np.asarray(values, dtype=np.float64))
    row_labels = [wrap_label(str(r)) for r in row_labels]
    width, lines = label_extent(row_labels)
    fig, ax = plt.subplots(figsize=(1.2 * len(col_labels) + 0.07 * width + 2,
                                    max(0.35, 0.16 * lines) * len(row_labels) + 1.4))
    im = ax.imshow(m, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(col_labels)), list(col_labels), rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(row_labels)), list(row_labels), fontsize=8)
    lo, hi = im.get_clim()
    blank = np.ma.getmaskarray(m)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if not blank[i, j]:
                v = float(m[i, j])
                light = (v - lo) / (hi - lo) > 0.6 if hi > lo else False  # dark text on the light end of viridis
                ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=7, color="k" if light else "w")
    fig.colorbar(im, ax=ax, fraction=0.05)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
