"""The orthonormal, periodized, separable 2D discrete wavelet transform (method.md §2).

``w = W x`` with ``W`` orthogonal, so noise stays white in the wavelet domain and the pixel
score is ``W^T`` of the wavelet score. The transform is a pair of small dense analysis
matrices per level (one per image axis), built from the filter taps of any orthogonal
wavelet PyWavelets knows; it runs in torch (autograd, float32/float64, CPU or GPU) and
matches ``pywt.wavedec2(..., mode="periodization")`` coefficient by coefficient.

Flat layout of ``forward``'s output (N, C*H*W): bands from coarse to fine,
``[a_J, h_J, v_J, d_J, h_{J-1}, ..., d_1]``; inside a band the block is (C, h, w) in
row-major order. Level 1 is the finest. Orientation names follow PyWavelets: ``h`` is
pywt's cH (high-pass along rows, axis 0), ``v`` its cV, ``d`` its cD.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from ._io import WavescoreError

ORIENTATIONS = ("a", "h", "v", "d")


def analysis_matrix(wavelet: str, n: int) -> np.ndarray:
    """The n x n one-level periodized analysis matrix ``[Lo; Hi]`` (rows: n/2 low, n/2 high).

    ``c[k] = sum_j f[j] x[(2k + L/2 - j) mod n]`` reproduces pywt's periodization mode;
    the periodized filter bank of an orthogonal wavelet is orthogonal for every even n.
    """
    import pywt

    wav = pywt.Wavelet(wavelet)
    lo, hi = np.asarray(wav.dec_lo, dtype=np.float64), np.asarray(wav.dec_hi, dtype=np.float64)
    taps = len(lo)
    mat = np.zeros((n, n))
    for k in range(n // 2):
        for j in range(taps):
            col = (2 * k + taps // 2 - j) % n
            mat[k, col] += lo[j]
            mat[n // 2 + k, col] += hi[j]
    # Published taps (e.g. sym4) are orthogonal only to ~1e-13; snapping to the nearest
    # orthogonal matrix (polar factor) makes the inverse exact to round-off while moving
    # each coefficient by less than that.
    u, _, vt = np.linalg.svd(mat)
    return u @ vt


def max_levels(h: int, w: int) -> int:
    """Most levels for which every level stays orthonormal: both sides halve to an integer."""
    levels = 0
    while h % 2 == 0 and w % 2 == 0 and h >= 2 and w >= 2:
        h, w, levels = h // 2, w // 2, levels + 1
    return levels


@dataclass(frozen=True)
class Band:
    """One subband over all channels: flat indices ``start:stop`` hold a (C, h, w) block."""

    level: int
    orient: str
    start: int
    stop: int
    channels: int
    h: int
    w: int

    @property
    def name(self) -> str:
        return f"{self.orient}{self.level}"

    def channel_slice(self, c: int) -> slice:
        n = self.h * self.w
        return slice(self.start + c * n, self.start + (c + 1) * n)

    @property
    def size(self) -> int:
        return self.stop - self.start


class Layout:
    """Where every flat coefficient lives: channel, level, orientation and position.

    ``channel``, ``level``, ``orient`` (0..3 for a, h, v, d), ``row`` and ``col`` are int64
    arrays of length D; :meth:`index` maps back. Neighbourhood questions (spatial
    neighbours, orientation partners, parents, children) are answered here so that the
    neighbourhood module never re-derives the layout.
    """

    def __init__(self, channels: int, height: int, width: int, levels: int):
        self.channels, self.height, self.width, self.levels = channels, height, width, levels
        bands: list[Band] = []
        start = 0
        hj, wj = height >> levels, width >> levels
        bands.append(Band(levels, "a", start, start + channels * hj * wj, channels, hj, wj))
        start = bands[-1].stop
        for level in range(levels, 0, -1):
            hj, wj = height >> level, width >> level
            for o in "hvd":
                bands.append(Band(level, o, start, start + channels * hj * wj, channels, hj, wj))
                start = bands[-1].stop
        self.bands: tuple[Band, ...] = tuple(bands)
        self.size = start
        self._by_key = {(b.level, b.orient): b for b in bands}

        chan, lev, ori, row, col = (np.empty(self.size, dtype=np.int64) for _ in range(5))
        for b in bands:
            c, r, q = np.meshgrid(np.arange(channels), np.arange(b.h), np.arange(b.w), indexing="ij")
            sl = slice(b.start, b.stop)
            chan[sl], row[sl], col[sl] = c.ravel(), r.ravel(), q.ravel()
            lev[sl], ori[sl] = b.level, ORIENTATIONS.index(b.orient)
        self.channel, self.level, self.orient, self.row, self.col = chan, lev, ori, row, col

    def __repr__(self) -> str:
        return f"Layout(channels={self.channels}, height={self.height}, width={self.width}, levels={self.levels})"

    def band(self, level: int, orient: str) -> Band:
        try:
            return self._by_key[(level, orient)]
        except KeyError:
            raise WavescoreError(
                f"no band ({level}, {orient!r}): levels run 1..{self.levels}, orientations h/v/d "
                f"at every level and 'a' only at level {self.levels}"
            ) from None

    def band_of(self, i: int) -> Band:
        return self.band(int(self.level[i]), ORIENTATIONS[int(self.orient[i])])

    def index(self, channel, level: int, orient: str, row, col):
        """Flat index (or array of indices) of a coefficient; rows/cols wrap periodically."""
        b = self.band(level, orient)
        return b.start + (np.asarray(channel) * b.h + np.mod(row, b.h)) * b.w + np.mod(col, b.w)

    def neighbours(self, i: int, radius: int = 1) -> np.ndarray:
        """Same-band (2r+1)^2 window around ``i`` (periodic), duplicates removed, ``i`` first."""
        b, c, r, q = self.band_of(i), self.channel[i], self.row[i], self.col[i]
        offs = np.arange(-radius, radius + 1)
        dr, dc = np.meshgrid(offs, offs, indexing="ij")
        idx = self.index(c, b.level, b.orient, r + dr.ravel(), q + dc.ravel())
        return _unique_first(np.concatenate([[i], idx]))

    def orientation_partners(self, i: int) -> np.ndarray:
        """The h, v, d coefficients at the same level, channel and position (``i`` first)."""
        b = self.band_of(i)
        if b.orient == "a":
            return np.array([i])
        idx = [self.index(self.channel[i], b.level, o, self.row[i], self.col[i]) for o in "hvd"]
        return _unique_first(np.concatenate([[i], idx]))

    def parent(self, i: int, orient: str | None = None) -> int | None:
        """The coefficient one level coarser covering ``i``'s position (same orientation unless
        ``orient`` is given). At the coarsest detail level the covering coefficient is the
        approximation at the same position; the approximation itself has no parent."""
        b = self.band_of(i)
        if b.orient == "a":
            return None
        o = orient or b.orient
        if b.level == self.levels:
            return int(self.index(self.channel[i], self.levels, "a", self.row[i], self.col[i]))
        return int(self.index(self.channel[i], b.level + 1, o, self.row[i] // 2, self.col[i] // 2))

    def children(self, i: int) -> np.ndarray:
        """The four coefficients one level finer (same orientation) whose parent is ``i``."""
        b = self.band_of(i)
        if b.orient == "a" or b.level == 1:
            return np.array([], dtype=np.int64)
        r, q = 2 * self.row[i] + np.array([0, 0, 1, 1]), 2 * self.col[i] + np.array([0, 1, 0, 1])
        return self.index(self.channel[i], b.level - 1, b.orient, r, q)


def _unique_first(idx: np.ndarray) -> np.ndarray:
    _, first = np.unique(idx, return_index=True)
    return idx[np.sort(first)]


class WaveletTransform:
    """Orthonormal periodized separable 2D DWT of images of shape ``(C, H, W)``.

    ``forward(x)``: (N, C, H, W) -> (N, D) flat coefficients, ``inverse(w)`` maps back exactly.
    ``levels=None`` takes the most levels that stay orthonormal (both sides halve evenly).
    """

    def __init__(self, shape, wavelet: str = "haar", levels: int | None = None):
        import pywt

        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise WavescoreError(f"shape must be (C, H, W) with positive sizes, got {shape}")
        try:
            wav = pywt.Wavelet(wavelet)
        except (ValueError, TypeError):  # TypeError: an empty name
            raise WavescoreError(
                f"unknown wavelet {wavelet!r}: use an orthogonal wavelet PyWavelets knows "
                "(haar, dbN, symN, coifN)"
            ) from None
        if not wav.orthogonal:
            raise WavescoreError(f"wavelet {wavelet!r} is not orthogonal: use haar, dbN, symN or coifN")
        c, h, w = shape
        most = max_levels(h, w)
        if levels is None:
            levels = most
        if levels < 1 or levels > most:
            raise WavescoreError(
                f"a {h}x{w} image cannot take {levels} orthonormal levels: each level halves both "
                f"sides, so at most {most} fit; pad the images (e.g. load_dataset(..., pad_to=32)) "
                f"or ask for levels <= {most}"
                if levels >= 1
                else f"levels must be >= 1, got {levels}"
            )
        self.shape, self.wavelet, self.levels = shape, wavelet, int(levels)
        self.layout = Layout(c, h, w, self.levels)
        self.size = c * h * w
        # Per level: (rows matrix, cols matrix) in float64, cast lazily per dtype/device.
        self._mats64 = [
            (torch.from_numpy(analysis_matrix(wavelet, h >> j)), torch.from_numpy(analysis_matrix(wavelet, w >> j)))
            for j in range(self.levels)
        ]
        self._cache: dict = {}

    def __repr__(self) -> str:
        return f"WaveletTransform(shape={self.shape}, wavelet={self.wavelet!r}, levels={self.levels})"

    def _mats(self, like: torch.Tensor):
        key = (like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = [(a.to(like.device, like.dtype), b.to(like.device, like.dtype)) for a, b in self._mats64]
        return self._cache[key]

    def _check(self, x: torch.Tensor, what: str, tail: tuple) -> None:
        if not isinstance(x, torch.Tensor):
            raise WavescoreError(f"{what} must be a torch tensor, got {type(x).__name__}")
        if x.dim() != len(tail) + 1 or tuple(x.shape[1:]) != tail:
            raise WavescoreError(
                f"{what} must have shape (N, {', '.join(map(str, tail))}) for this transform, got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise WavescoreError(f"{what} must be a float tensor, got {x.dtype}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, D) coefficients in the flat layout."""
        self._check(x, "images", self.shape)
        details = []
        cur = x
        for a_rows, a_cols in self._mats(x):
            y = a_rows @ cur @ a_cols.T
            h2, w2 = y.shape[-2] // 2, y.shape[-1] // 2
            details.append((y[..., h2:, :w2], y[..., :h2, w2:], y[..., h2:, w2:]))
            cur = y[..., :h2, :w2]
        parts = [cur.flatten(1)]
        for hb, vb, db in reversed(details):
            parts += [hb.flatten(1), vb.flatten(1), db.flatten(1)]
        return torch.cat(parts, dim=1)

    __call__ = forward

    def inverse(self, w: torch.Tensor) -> torch.Tensor:
        """(N, D) coefficients -> (N, C, H, W) images; exact inverse of :meth:`forward`."""
        self._check(w, "coefficients", (self.size,))
        bands = self.to_bands(w)
        cur = bands["a"]
        mats = self._mats(w)
        for level in range(self.levels, 0, -1):
            a_rows, a_cols = mats[level - 1]
            top = torch.cat([cur, bands[f"v{level}"]], dim=-1)
            bottom = torch.cat([bands[f"h{level}"], bands[f"d{level}"]], dim=-1)
            cur = a_rows.T @ torch.cat([top, bottom], dim=-2) @ a_cols
        return cur

    def to_bands(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat coefficients -> {"a": (N, C, h, w), "h3": ..., ...} (views, no copies)."""
        n = w.shape[0]
        out = {}
        for b in self.layout.bands:
            key = "a" if b.orient == "a" else b.name
            out[key] = w[:, b.start : b.stop].reshape(n, b.channels, b.h, b.w)
        return out

    @cached_property
    def matrix(self) -> torch.Tensor:
        """The dense D x D float64 matrix of ``forward`` (for tests and small images)."""
        eye = torch.eye(self.size, dtype=torch.float64).reshape(self.size, *self.shape)
        return self.forward(eye).T.contiguous()


class PixelBasis:
    """The identity basis: pixels as the coefficients, in flat (C, H, W) order, with the same
    ``forward``/``inverse`` as :class:`WaveletTransform`. The local mixture's pixel-patch
    variant (the reference point of issue 15's checks) runs through the wavelet code with it."""

    def __init__(self, shape):
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise WavescoreError(f"shape must be (C, H, W) with positive sizes, got {shape}")
        self.shape, self.size = shape, int(np.prod(shape))

    def __repr__(self) -> str:
        return f"PixelBasis(shape={self.shape})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != self.shape:
            raise WavescoreError(f"images must have shape (N, {', '.join(map(str, self.shape))}), "
                                 f"got {tuple(getattr(x, 'shape', ()))}")
        return x.reshape(x.shape[0], self.size)

    __call__ = forward

    def inverse(self, w: torch.Tensor) -> torch.Tensor:
        return w.reshape(w.shape[0], *self.shape)
