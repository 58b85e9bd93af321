"""Analytic reference denoisers (method.md §6): the empirical (memorising) denoiser and the ELS machine.

Both are posterior means under an empirical distribution, so both are a softmax-weighted
average. They share one streaming kernel: a running log-sum-exp over chunks of training
data (running max ``m``, running normaliser ``z``, running weighted sum ``acc``, all rescaled
by ``exp(m_old - m_new)`` when the max grows). Memory is O(queries x chunk) whatever the
training-set size, and the result does not depend on the chunk size (up to rounding).

Both are :class:`wavescore.denoiser.Denoiser` s: ``denoise(x, sigma)`` (x (N, C, H, W); sigma a
float or an (N,) tensor; returns x's shape and dtype), ``score`` by Tweedie, ``model(x, sigma)``
and ``shape_`` (C, H, W), the interface the samplers use.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ._io import WavescoreError, progress_bar
from .denoiser import Denoiser, check_images, check_reference, check_sigma, reference_name, reference_output
from .fitting import noise_for

__all__ = ["EmpiricalDenoiser", "ELSDenoiser", "mnist_patch_schedule", "PatchSchedule", "calibrate_els_schedule"]


# ---------------------------------------------------------------------------------- helpers
def _as_images(x, what: str) -> torch.Tensor:
    x = check_images(x, what, finite=True)
    if x.shape[0] == 0:
        raise WavescoreError(f"{what}: no images (N = 0)")
    return x


def _check_chunk(chunk_size) -> int:
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1:
        raise WavescoreError(f"chunk_size must be a positive whole number, got {chunk_size!r}")
    return int(chunk_size)


def _exp_floor(dtype: torch.dtype) -> float:
    """Floor for softmax exponents (<= 0 after subtracting the max). torch's CPU exp takes a
    slow path, some 30x slower, for results that underflow (below about -708 in float64),
    which is most candidates at small sigma. Clamping keeps it fast; a clamped weight is
    exp(floor) ~ 1e-304 (float64; ~1e-34 in float32) instead of a smaller number, far below
    rounding next to the max candidate's weight 1."""
    return math.log(torch.finfo(dtype).tiny) + 8.0


def _streaming_softmax_mean(queries: torch.Tensor, inv_s2: torch.Tensor,
                            chunks: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """sum_k v_k softmax_k(-||q - k||^2 / (2 s^2)) for every query row, streaming over key chunks.

    ``chunks`` yields (keys (K, D), key half-norms ||k||^2 / 2 (K,), values (K, V)).
    ``inv_s2`` is 1/s^2 per query (Q,).

    -||q - k||^2 / (2 s^2) = (q.k - ||k||^2/2) / s^2 - ||q||^2 / (2 s^2): the last term is the
    same for every key and cancels in the softmax, so it is dropped (it would only add rounding
    error; method.md §6).
    """
    q = queries.shape[0]
    m = torch.full((q,), -math.inf, dtype=queries.dtype)
    z = torch.zeros(q, dtype=queries.dtype)
    acc = None
    scale = inv_s2.to(queries.dtype)[:, None]
    floor = _exp_floor(queries.dtype)
    for keys, half_norm, values in chunks:
        logits = (queries @ keys.T - half_norm[None, :]) * scale
        new_m = torch.maximum(m, logits.max(dim=1).values)
        # Running log-sum-exp: rescale what was accumulated under the old max.
        alpha = torch.exp(m - new_m)
        w = logits.sub_(new_m[:, None]).clamp_(min=floor).exp_()
        z = z * alpha + w.sum(dim=1)
        contrib = w @ values
        acc = contrib if acc is None else acc * alpha[:, None] + contrib
        m = new_m
    if acc is None:  # pragma: no cover - constructors refuse empty training sets
        raise WavescoreError("no training data")
    return acc / z[:, None]


def _box_buffer(shape, dim: int, r: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A buffer for :func:`_box_finish`: ``shape`` with 2r + 1 more entries along ``dim``, the
    first r + 1 zero (they stay zero through :func:`_box_finish`, so a buffer can be reused),
    and the view of its interior, where the caller writes the values to be summed."""
    size = list(shape)
    size[dim] += 2 * r + 1
    buf = torch.empty(size, dtype=dtype)
    buf.narrow(dim, 0, r + 1).zero_()
    return buf, buf.narrow(dim, r + 1, shape[dim])


def _box_finish(buf: torch.Tensor, dim: int, r: int, periodic: bool, out=None) -> torch.Tensor:
    """Sum over the window [p - r, p + r] along ``dim`` for every p of the values y in the
    interior of ``buf`` (from :func:`_box_buffer`), circular (needs 2r + 1 <= n) or zero outside,
    by a cumulative sum: O(n) whatever r. The buffer is overwritten."""
    n = buf.shape[dim] - 2 * r - 1
    if periodic:  # buf[j] = y[(j - 1 - r) mod n] for 1 <= j <= n + 2r
        buf.narrow(dim, 1, r).copy_(buf.narrow(dim, n + 1, r))
        buf.narrow(dim, n + r + 1, r).copy_(buf.narrow(dim, r + 1, r))
    else:  # the first r + 1 entries are still zero
        buf.narrow(dim, n + r + 1, r).zero_()
    buf.cumsum_(dim)
    return torch.sub(buf.narrow(dim, 2 * r + 1, n), buf.narrow(dim, 0, n), out=out)


def _box_sum2d(y: torch.Tensor, r: int, periodic: bool) -> torch.Tensor:
    """The sum over each (2r + 1) x (2r + 1) window of the last two axes (see :func:`_box_finish`)."""
    if r == 0:
        return y.clone()
    bufy, inner = _box_buffer(y.shape, -2, r, y.dtype)
    inner.copy_(y)
    bufx, inner = _box_buffer(y.shape, -1, r, y.dtype)
    _box_finish(bufy, -2, r, periodic, out=inner)
    return _box_finish(bufx, -1, r, periodic)


# ---------------------------------------------------------------------------------- empirical
class EmpiricalDenoiser(Denoiser):
    """The optimal denoiser for the training set as a sum of Diracs (method.md §6).

    D(x, s) = sum_n x_n softmax_n(-||x - x_n||^2 / (2 s^2)). It memorises: at small s a
    held-out image snaps to its nearest training image.

    Parameters
    ----------
    train : (N, C, H, W) training images.
    chunk_size : training images per streamed chunk (memory O(batch x chunk_size)).
    dtype : computation dtype. float64 (default) keeps the small-sigma softmax accurate: the
        logits scale as 1/s^2, so distance rounding is amplified there.
    batch_size : test images per batch in :meth:`denoise` / :meth:`nearest`.
    """

    def __init__(self, train, *, chunk_size: int = 4096, dtype: torch.dtype = torch.float64, batch_size: int = 500):
        train = _as_images(train, "training images")
        self.chunk_size = _check_chunk(chunk_size)
        self.batch_size = _check_chunk(batch_size)
        self.dtype = dtype
        self.shape_ = tuple(int(s) for s in train.shape[1:])
        flat = train.detach().cpu().reshape(train.shape[0], -1).to(torch.float64)
        # Distances are translation invariant: centre on the mean so the dot products are small
        # (less cancellation in ||x||^2 - 2 x.x_n + ||x_n||^2, which matters in float32).
        self._mean = flat.mean(dim=0)
        self._train = (flat - self._mean).to(dtype)
        self._half_norm = 0.5 * (self._train.to(torch.float64) ** 2).sum(dim=1).to(dtype)
        self.n_train_ = flat.shape[0]

    def _check(self, x) -> torch.Tensor:
        x = _as_images(x, "images to denoise")
        if tuple(x.shape[1:]) != self.shape_:
            raise WavescoreError(f"this denoiser holds images of shape {self.shape_}, got {tuple(x.shape[1:])}")
        return x

    def _chunks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for s in range(0, self.n_train_, self.chunk_size):
            keys = self._train[s : s + self.chunk_size]
            yield keys, self._half_norm[s : s + self.chunk_size], keys

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Posterior mean E[x_0 | x_s = x] under the training set (method.md §6)."""
        x = self._check(x)
        sig = check_sigma(sigma, x.shape[0])
        flat = x.detach().cpu().reshape(x.shape[0], -1).to(torch.float64)
        out = torch.empty_like(flat)
        for s in range(0, flat.shape[0], self.batch_size):
            q = (flat[s : s + self.batch_size] - self._mean).to(self.dtype)
            inv_s2 = 1.0 / sig[s : s + self.batch_size] ** 2
            out[s : s + self.batch_size] = _streaming_softmax_mean(q, inv_s2, self._chunks()).to(torch.float64)
        return (out + self._mean).reshape(x.shape).to(device=x.device, dtype=x.dtype)

    def nearest(self, x: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (N, k) int64 and Euclidean distances (N, k) float64 of the k nearest training images.

        Candidates come from a chunked running top-k on ||x||^2 - 2 x.x_n + ||x_n||^2; the
        distances of the winners are then recomputed directly (no cancellation), and sorted.
        """
        x = self._check(x)
        if isinstance(k, bool) or int(k) != k or not 1 <= k <= self.n_train_:
            raise WavescoreError(f"k must be a whole number between 1 and {self.n_train_}, got {k!r}")
        k = int(k)
        flat = x.detach().cpu().reshape(x.shape[0], -1).to(torch.float64)
        idx_out = torch.empty((flat.shape[0], k), dtype=torch.int64)
        dist_out = torch.empty((flat.shape[0], k), dtype=torch.float64)
        for s in range(0, flat.shape[0], self.batch_size):
            q = (flat[s : s + self.batch_size] - self._mean).to(self.dtype)
            best_d = torch.full((q.shape[0], 0), math.inf, dtype=self.dtype)
            best_i = torch.empty((q.shape[0], 0), dtype=torch.int64)
            for c in range(0, self.n_train_, self.chunk_size):
                keys = self._train[c : c + self.chunk_size]
                # ||q||^2 is constant per row and does not change the ranking: omitted.
                d = 2 * self._half_norm[c : c + self.chunk_size][None, :] - 2 * q @ keys.T
                i = torch.arange(c, c + keys.shape[0]).expand(q.shape[0], -1)
                d, i = torch.cat([best_d, d], 1), torch.cat([best_i, i], 1)
                top = torch.topk(d, min(k, d.shape[1]), dim=1, largest=False)
                best_d, best_i = top.values, torch.gather(i, 1, top.indices)
            exact = ((flat[s : s + self.batch_size, None, :] - self._mean
                      - self._train[best_i].to(torch.float64)) ** 2).sum(-1).sqrt()
            order = torch.argsort(exact, dim=1, stable=True)
            idx_out[s : s + self.batch_size] = torch.gather(best_i, 1, order)
            dist_out[s : s + self.batch_size] = torch.gather(exact, 1, order)
        return idx_out, dist_out


# ---------------------------------------------------------------------------------- ELS
# (sigma upper edge, patch size). Approximate: Kamb & Ganguli (2025) calibrate the ELS patch
# size per noise level against a trained MNIST U-Net and find it grows from ~3x3 at low noise
# to ~27x27 (nearly the whole 32x32 image) at high noise. Their calibration is per DDPM time
# step; these edges are our conversion to EDM sigma of that shape, not the paper's numbers.
_MNIST_SCHEDULE = ((0.05, 3), (0.1, 5), (0.2, 7), (0.3, 9), (0.5, 11), (0.7, 13),
                   (1.0, 15), (1.5, 19), (2.5, 23), (math.inf, 27))


def mnist_patch_schedule(sigma: float) -> int:
    """Approximate ELS patch size for MNIST-like 32x32 data (Kamb & Ganguli 2025): 3 at
    sigma <= 0.05 growing piecewise to 27 for sigma > 2.5. See ``_MNIST_SCHEDULE``."""
    for edge, size in _MNIST_SCHEDULE:
        if sigma <= edge:
            return size
    return _MNIST_SCHEDULE[-1][1]  # pragma: no cover


class ELSDenoiser(Denoiser):
    """The equivariant local score (ELS) machine of Kamb & Ganguli (2025), method.md §6.

    Each output pixel p is the posterior mean of the centre pixel of its P x P neighbourhood,
    given the noisy neighbourhood x_patch(p), under the empirical distribution of ALL training
    patches of that size at ALL positions (pooling over positions = translation equivariance):

        D(x, s)[:, p] = sum_P P_centre softmax_P(-||x_patch(p) - P||^2 / (2 s^2)).

    Parameters
    ----------
    train : (N, C, H, W) training images. Patches include all channels; the output at p is all
        channels of the centre pixel.
    patch_size : an odd int, or a callable sigma -> odd int (the locality grows with noise).
        Default :func:`mnist_patch_schedule`. Sizes are clamped to the largest useful size:
        periodic: the largest odd <= min(H, W) (a bigger patch would repeat pixels);
        pad: 2 max(H, W) - 1 (every patch then sees the whole image).
    chunk_size : training patches per streamed chunk (method "box": at most this many
        (training image, displacement) pairs per block, and at most ``BOX_BLOCK`` numbers).
    wrap : "periodic" (default): circular boundaries, so the machine is exactly equivariant to
        cyclic shifts, matching the periodized wavelet transform of method.md §2 and a CNN with
        circular padding. "pad": images are padded with ``pad_value`` (default -1, the MNIST
        background in [-1, 1] scaling, like a zero-padded CNN on [0, 1] data); padded pixels are
        compared like ordinary pixels, in test and training patches alike, so border patches
        prefer training patches with background at the same places.
    dtype, batch_size : computation dtype; test images per batch (None: about 2048 query patches).
    method : how the patch distances are computed (the same output up to rounding).
        "unfold": every patch unfolded, distances by matrix products; cost per (test, training)
        image pair O((HW)^2 C P^2). "box" (method.md §6): by
        ||x_patch(p) - t_patch(q)||^2 = ||x_patch(p)||^2 + ||t_patch(q)||^2 - 2 <x_patch(p), t_patch(q)>,
        where, for each displacement q - p, the cross term over all p is a P x P box sum of the
        product image x(.) t(. + q - p), by cumulative sums; cost O((HW)^2 C) whatever P
        (wrap="pad": (H + r)(W + r) / HW times more, r = P // 2; see :meth:`_box_batch`).
        "auto" (default): "box" for P >= ``BOX_MIN_PATCH``, else "unfold".
    train_subset : keep only this many training images, a random subset drawn with ``seed``
        (None, default: all of them). Indices kept: ``train_index_``.
    seed : seed of that subset.
    max_shift : approximation, default None (exact ELS). Only training patches centred within
        k = max_shift pixels, per axis, of the output pixel (cyclic distance when periodic) enter
        its softmax: k = 0 is Kamb & Ganguli's local score (LS) machine (each position against
        the training patches at that same position only), k = None their ELS machine (every
        position); in between, a partly equivariant machine. Equals ELS exactly once the window
        covers the image (periodic: 2k + 1 >= side; pad: k >= side - 1). Box path only
        (method="auto" takes it); cost falls as (2k + 1)^2 / (H W) of ELS (table below).
    nearest_images : approximation, default None (all training images). Each test image is
        compared only with its M = nearest_images training images nearest in whole-image
        Euclidean distance (unshifted; :meth:`nearest_rows`): training images far from the
        noisy test image, whose patches would mostly carry negligible weight, are dropped. Cost
        M / N of the full set; test images are then processed one at a time.

    Measured cost (one core shared with two busy jobs; MNIST 32 x 32, sigma 0.1, box path,
    milliseconds per (test image, training image) pair; float32: max deviation ~5e-5 from float64
    on [-1, 1] images)::

        patch   exact f64   exact f32   max_shift=1   2      3      5 (f64)
        5       7.3         4.8         0.10          0.24   0.45   1.03
        13      8.2         6.0         0.13          0.27   0.50   1.16

    So 32 test images x 10,000 training images (320,000 pairs) take about 20 min exact on two
    threads (13 min float32), about 75 s with max_shift=3, and nearest_images=M scales any of
    these by M / 10,000.

    Timing the two methods (small sizes first: ELS cost grows as n_train (H W)^2; fix the thread
    count, as a busy machine makes multi-threaded timings meaningless)::

        import time, torch; from wavescore.baselines import ELSDenoiser
        torch.set_num_threads(1); g = torch.Generator().manual_seed(0)
        tr, x = torch.rand(200, 1, 16, 16, generator=g) * 2 - 1, torch.rand(2, 1, 16, 16, generator=g) * 2 - 1
        for m in ("unfold", "box"):
            els = ELSDenoiser(tr, patch_size=9, method=m); t = time.perf_counter()
            els.denoise(x.double(), 0.5); print(m, time.perf_counter() - t)
    """

    #: Smallest patch size for which method="auto" takes the box path. 1: on one core, "box"
    #: was 1.0-4x faster than "unfold" at every P tried (1 to 27; 16x16 and 32x32, both wraps).
    BOX_MIN_PATCH = 1

    def __init__(self, train, *, patch_size: int | Callable[[float], int] = mnist_patch_schedule,
                 chunk_size: int = 8192, wrap: str = "periodic", pad_value: float = -1.0,
                 dtype: torch.dtype = torch.float64, batch_size: int | None = None,
                 method: str = "auto", train_subset: int | None = None, seed: int = 0,
                 max_shift: int | None = None, nearest_images: int | None = None):
        train = _as_images(train, "training images")
        if wrap not in ("periodic", "pad"):
            raise WavescoreError(f"wrap must be 'periodic' or 'pad', got {wrap!r}")
        if method not in ("auto", "unfold", "box"):
            raise WavescoreError(f"method must be 'auto', 'unfold' or 'box', got {method!r}")
        if max_shift is not None:
            if isinstance(max_shift, bool) or not isinstance(max_shift, (int, np.integer)) or max_shift < 0:
                raise WavescoreError(f"max_shift must be None (all positions: ELS) or a whole number >= 0 of pixels "
                                     f"(0: the local score machine), got {max_shift!r}")
            if method == "unfold":
                raise WavescoreError("max_shift is computed on the box path: pass method='box' or 'auto', "
                                     "or drop max_shift")
            max_shift = int(max_shift)
        self.max_shift = max_shift
        self.nearest_images = None if nearest_images is None else _check_chunk(nearest_images)
        self.method = method
        self.train_index_ = torch.arange(train.shape[0])
        if train_subset is not None:
            keep = _check_chunk(train_subset)
            if keep < train.shape[0]:
                gen = torch.Generator().manual_seed(int(seed))
                self.train_index_ = torch.sort(torch.randperm(train.shape[0], generator=gen)[:keep]).values
                train = train[self.train_index_.to(train.device)]
        if not callable(patch_size):
            self._check_patch(patch_size)
        self.patch_size = patch_size
        self.chunk_size = _check_chunk(chunk_size)
        self.wrap = wrap
        self.pad_value = float(pad_value)
        self.dtype = dtype
        self.batch_size = None if batch_size is None else _check_chunk(batch_size)
        self.shape_ = tuple(int(s) for s in train.shape[1:])
        train = train.detach().cpu().to(torch.float64)
        # Centre on one scalar (the pixel mean; the pad value is shifted alike) so the dot
        # products are small; distances are unchanged.
        self._shift = float(train.mean())
        self._train = (train - self._shift).to(dtype)
        self.n_train_ = train.shape[0]

    @staticmethod
    def _check_patch(p) -> int:
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 1 or p % 2 == 0:
            raise WavescoreError(f"patch size must be an odd positive whole number (the patch is centred), got {p!r}")
        return int(p)

    def patch_size_for(self, sigma: float) -> int:
        """The patch size used at noise level ``sigma`` (after clamping, see the class notes)."""
        p = self._check_patch(self.patch_size(float(sigma)) if callable(self.patch_size) else self.patch_size)
        _, h, w = self.shape_
        if self.wrap == "periodic":
            cap = min(h, w) if min(h, w) % 2 else min(h, w) - 1
        else:
            cap = 2 * max(h, w) - 1
        return min(p, cap)

    def _patches(self, images: torch.Tensor, p: int) -> torch.Tensor:
        """All P x P patches at all H x W positions: (N * H * W, C * P * P), ordered (n, y, x)."""
        r = p // 2
        n, c, h, w = images.shape
        if self.wrap == "periodic":
            # Index arithmetic rather than F.pad(mode="circular"), which refuses r > size.
            iy = torch.arange(-r, h + r) % h
            ix = torch.arange(-r, w + r) % w
            padded = images[:, :, iy][:, :, :, ix]
        else:
            padded = F.pad(images, (r, r, r, r), value=self.pad_value - self._shift)
        cols = F.unfold(padded, kernel_size=p)  # (N, C*P*P, H*W), channel-major (c, ky, kx)
        return cols.transpose(1, 2).reshape(n * h * w, c * p * p)

    def _centre(self, p: int) -> torch.Tensor:
        """Column indices of the centre pixel (all channels) in a flattened (C, P, P) patch."""
        r = p // 2
        return torch.arange(self.shape_[0]) * p * p + r * p + r

    def _chunks(self, p: int, rows=None):
        hw = self.shape_[1] * self.shape_[2]
        per = max(1, math.ceil(self.chunk_size / hw))  # images unfolded at a time
        centre = self._centre(p)
        n_rows = self.n_train_ if rows is None else rows.numel()
        for s in range(0, n_rows, per):
            patches = self._patches(self._train[s : s + per] if rows is None else self._train[rows[s : s + per]], p)
            for c in range(0, patches.shape[0], self.chunk_size):
                keys = patches[c : c + self.chunk_size]
                yield keys, 0.5 * (keys * keys).sum(dim=1), keys[:, centre] + self._shift

    def _use_box(self, p: int) -> bool:
        return self.method == "box" or (self.method == "auto" and (p >= self.BOX_MIN_PATCH or self.max_shift is not None))

    def nearest_rows(self, x: torch.Tensor) -> torch.Tensor | None:
        """Per image of ``x`` (N, C, H, W), the sorted indices (N, M) (into the kept training set)
        of the M = ``nearest_images`` training images nearest in whole-image Euclidean distance
        ||x - t_n|| (no shifts); None when the option is off or M >= the training set."""
        if self.nearest_images is None or self.nearest_images >= self.n_train_:
            return None
        q = (x.detach().cpu().to(torch.float64) - self._shift).reshape(x.shape[0], -1)
        t = self._train.to(torch.float64).reshape(self.n_train_, -1)
        # ||q - t||^2 up to ||q||^2, the same for every t: ||t||^2 - 2 q.t
        d2 = (t * t).sum(1)[None] - 2 * q @ t.T
        return torch.sort(torch.topk(d2, self.nearest_images, dim=1, largest=False).indices, dim=1).values

    def _box_canvas(self, rows, r: int, origin: float, lh: int, lw: int):
        """Training images ``rows`` (a slice or index tensor) moved by ``origin`` on (lh, lw)
        canvases (nb, C, lh, lw), and the half squared norm of the P x P patch at each canvas
        position (nb, lh, lw): +inf outside the image (not a training patch: weight 0). See
        :meth:`_box_batch`."""
        _, h, w = self.shape_
        t = self._train[rows] + (self._shift - origin)
        canvas = torch.zeros((t.shape[0], t.shape[1], lh, lw), dtype=self.dtype)
        canvas[:, :, :h, :w] = t
        half = torch.full((t.shape[0], lh, lw), math.inf, dtype=self.dtype)
        half[:, :h, :w] = 0.5 * _box_sum2d((t * t).sum(1), r, self.wrap == "periodic")
        return canvas, half

    @staticmethod
    def _shifted(canvas: torch.Tensor, h: int, w: int, ys: tuple[int, int] | None = None,
                 xs: tuple[int, int] | None = None) -> torch.Tensor:
        """Cyclic shifts of canvases (..., lh, lw) as a view (..., ny, nx, h, w), no copy per shift:
        out[..., i, j, y, x] = canvas[..., (y + y0 + i) mod lh, (x + x0 + j) mod lw] for the
        shift ranges ys = (y0, ny), xs = (x0, nx) (default: all shifts, (0, lh) and (0, lw))."""
        lh, lw = canvas.shape[-2:]
        (y0, ny), (x0, nx) = ys or (0, lh), xs or (0, lw)
        # Indices reach y0 + ny - 1 + h - 1 < 3 lh (y0, ny, h <= lh): three tiles always suffice.
        ty, tx = 1 + (y0 + ny + h - 2) // lh, 1 + (x0 + nx + w - 2) // lw
        tiled = canvas.repeat(*([1] * (canvas.dim() - 2)), ty, tx)
        st = tiled.stride()
        return tiled.as_strided((*tiled.shape[:-2], ny, nx, h, w), (*st[:-2], st[-2], 1, st[-2], 1),
                                tiled.storage_offset() + y0 * st[-2] + x0)

    def _box_shifts(self, n: int, r: int) -> tuple[int, int, int]:
        """(canvas size, first shift, number of shifts) along an image axis of size n, for the
        box path: every displacement, or with ``max_shift`` = k only those with |d| <= k.

        Periodic: the canvas is the image (n); |d| <= k is cyclic distance, all n shifts once
        2k + 1 >= n. Pad: the canvas has max(r, k) zero rows after the image, so that neither a
        displacement -k <= d <= k nor a patch read wraps around into the image (q = p + d falls
        into the strip, where the half-norm is +inf, instead); all real displacements (|d| <= n - 1)
        once k >= n - 1, which is then plain ELS on the usual n + r canvas."""
        k = self.max_shift
        if self.wrap == "periodic":
            return (n, 0, n) if k is None or 2 * k + 1 >= n else (n, (n - k) % n, 2 * k + 1)
        if k is None or k >= n - 1:
            return n + r, 0, n + r
        size = n + max(r, k)
        return size, size - k, 2 * k + 1

    #: Elements (test images x candidates x pixels) per block of the box path: small enough that
    #: a block's passes run in cache (measured on one core: 2^16-2^17 best, 2^20 some 25% slower).
    BOX_BLOCK = 2**17

    def _box_batch(self, xs: torch.Tensor, sig: torch.Tensor, p: int, rows=None) -> torch.Tensor:
        """ELS output (B, C, H, W) float64 for test images xs (moved by ``self._shift``), by box
        sums (method="box", see the class notes), against the training images ``rows`` (an index
        tensor; None: all of them).

        For each displacement d, the logits of all (p, q = p + d) pairs at once: the P x P box sum
        of x(.) t(. + d) / s^2 (all channels) minus ||t_patch(q)||^2 / (2 s^2); then a streaming
        log-sum-exp over blocks of at most ``chunk_size`` (training image, displacement) pairs.

        Distances do not change when every pixel moves by one constant, so the images are moved
        by ``origin``: the pixel mean (periodic), or the pad value (pad), which makes "pad" zero
        padding. Periodic: displacements are taken mod (H, W). Pad: the images sit on canvases
        with r = P // 2 zero rows and columns after them, and d is taken mod (H + r, W + r):
        every (p, q) pair still comes once, at d = q - p mod the canvas, a training patch that
        runs off the image reads zeros there, as zero padding does, and a position q in the
        added strip has half-norm +inf. Pad costs (H + r)(W + r) / HW times periodic.
        With ``max_shift`` only the displacements of :meth:`_box_shifts` are visited.
        """
        r, periodic = p // 2, self.wrap == "periodic"
        b, c, h, w = xs.shape
        origin = self._shift if periodic else self.pad_value
        (lh, y0, ny), (lw, x0, nx) = self._box_shifts(h, r), self._box_shifts(w, r)
        n_rows = self.n_train_ if rows is None else rows.numel()
        inv_s2 = (1.0 / sig**2).to(self.dtype)
        # Scaled by 1/s^2 here, so the box sums come out as logits: -||x - t||^2 / (2 s^2) up to a
        # term in p alone (||x_patch(p)||^2, the same for every candidate, cancels in the softmax).
        xq = ((xs + (self._shift - origin)) * inv_s2.reshape(b, 1, 1, 1)).reshape(b, c, 1, 1, 1, h, w)
        neg_inv_s2 = (-inv_s2).reshape(b, 1, 1, 1, 1, 1)
        # A block: nb training images x ndy x ndx displacements, k = nb ndy ndx candidates.
        k = max(1, min(self.chunk_size, self.BOX_BLOCK // (b * h * w)))
        ndy, ndx = (ny, nx) if k >= ny * nx else (max(1, k // nx), nx) if k >= nx else (1, k)
        nb = max(1, k // (ndy * ndx))
        # The running max starts at the lowest finite number, not -inf: it stays finite while a pixel
        # has only weight-0 candidates, with no clamp per block.
        m = torch.full((b, h, w), torch.finfo(self.dtype).min, dtype=self.dtype)
        z = torch.zeros((b, h, w), dtype=self.dtype)
        acc = torch.zeros((b, c, h, w), dtype=self.dtype)
        exp_floor = _exp_floor(self.dtype)
        cand = (1, 2, 3)
        # Buffers reused by every block (fresh large tensors cost page faults): the product goes
        # into the first box buffer's interior, the logits into ``lbuf``.
        full = (b, min(nb, n_rows), ndy, ndx, h, w)
        bufs = [_box_buffer(full, dim, r, self.dtype) for dim in (-2, -1)] if r else []
        lbuf = torch.empty(full, dtype=self.dtype)
        tmp = torch.empty(full, dtype=self.dtype) if c > 1 else None

        def fit(t):  # the leading part of a buffer that fits this block
            return t.narrow(1, 0, size[1]).narrow(2, 0, size[2]).narrow(3, 0, size[3])

        for n0 in range(0, n_rows, nb):
            sel = slice(n0, n0 + nb) if rows is None else rows[n0 : n0 + nb]
            canvas, half = self._box_canvas(sel, r, origin, lh, lw)
            tv = self._shifted(canvas, h, w, (y0, ny), (x0, nx))  # (nb, C, ny, nx, h, w): t(p + d)
            hv = self._shifted(half, h, w, (y0, ny), (x0, nx))  # (nb, ny, nx, h, w): ||t_patch(p + d)||^2 / 2
            for dy0 in range(0, ny, ndy):
                for dx0 in range(0, nx, ndx):
                    vals = tv[:, :, dy0 : dy0 + ndy, dx0 : dx0 + ndx].unsqueeze(0)  # (1, nb, C, ., ., h, w)
                    size = (b, vals.shape[1], vals.shape[3], vals.shape[4])
                    logits = fit(lbuf)
                    prod = fit(bufs[0][1]) if r else logits
                    torch.mul(xq[:, 0], vals[:, :, 0], out=prod)
                    for ch in range(1, c):
                        prod.addcmul_(xq[:, ch], vals[:, :, ch])
                    if r:
                        _box_finish(fit(bufs[0][0]), -2, r, periodic, out=fit(bufs[1][1]))
                        _box_finish(fit(bufs[1][0]), -1, r, periodic, out=logits)
                    logits.addcmul_(hv[:, dy0 : dy0 + ndy, dx0 : dx0 + ndx].unsqueeze(0), neg_inv_s2)
                    # Online log-sum-exp: rescale what was summed under the old max by alpha.
                    new_m = torch.maximum(m, logits.amax(dim=cand))
                    alpha = m.sub_(new_m).exp_()
                    wgt = logits.sub_(new_m[:, None, None, None]).clamp_(min=exp_floor).exp_()
                    z.mul_(alpha).add_(wgt.sum(dim=cand))
                    acc.mul_(alpha[:, None])
                    for ch in range(c):
                        wv = wgt.mul_(vals[:, :, ch]) if c == 1 else torch.mul(wgt, vals[:, :, ch], out=fit(tmp))
                        acc[:, ch].add_(wv.sum(dim=cand))
                    m = new_m
        return (acc / z[:, None]).to(torch.float64) + origin

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The ELS machine's posterior-mean output (Kamb & Ganguli 2025; method.md §6)."""
        x = _as_images(x, "images to denoise")
        if tuple(x.shape[1:]) != self.shape_:
            raise WavescoreError(f"this denoiser holds images of shape {self.shape_}, got {tuple(x.shape[1:])}")
        n, c, h, w = x.shape
        sig = check_sigma(sigma, n)
        # The schedule is called once per distinct sigma.
        by_sigma = {v: self.patch_size_for(v) for v in set(sig.tolist())}
        sizes = torch.tensor([by_sigma[v] for v in sig.tolist()])
        xs = (x.detach().cpu().to(torch.float64) - self._shift).to(self.dtype)
        out = torch.empty((n, h * w, c), dtype=torch.float64)
        near = self.nearest_rows(x)
        # Each image has its own training subset with nearest_images, so it is its own batch.
        batch = 1 if near is not None else self.batch_size or max(1, 2048 // (h * w))
        # One pass over the training patches per patch size; sigma may still differ per image.
        for p in torch.unique(sizes).tolist():
            rows = torch.nonzero(sizes == p).flatten()
            box = self._use_box(p)
            for s in range(0, rows.numel(), batch):
                sel = rows[s : s + batch]
                keep = None if near is None else near[int(sel[0])]
                if box:
                    res = self._box_batch(xs[sel], sig[sel], p, keep)
                    out[sel] = res.reshape(sel.numel(), c, h * w).transpose(1, 2)
                    continue
                q = self._patches(xs[sel], p)
                inv_s2 = (1.0 / sig[sel] ** 2).repeat_interleave(h * w)
                res = _streaming_softmax_mean(q, inv_s2, self._chunks(p, keep))
                out[sel] = res.to(torch.float64).reshape(sel.numel(), h * w, c)
        return out.transpose(1, 2).reshape(n, c, h, w).to(device=x.device, dtype=x.dtype)



# ---------------------------------------------------------------------------------- calibration
def _odd_sizes(sizes) -> tuple[int, ...]:
    try:
        sizes = tuple(sizes)
    except TypeError:
        sizes = ()
    if not sizes or any(isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 1 or p % 2 == 0
                        for p in sizes):
        raise WavescoreError(f"sizes must be a non-empty list of odd positive whole numbers (a patch is centred), "
                             f"got {sizes!r}: e.g. (3, 5, 7, 9)")
    return tuple(int(p) for p in sizes)


def _grid_sigmas(sigmas) -> tuple[float, ...]:
    try:
        sig = tuple(float(s) for s in sigmas)
    except (TypeError, ValueError):
        sig = ()
    if not sig or any(not (math.isfinite(s) and s > 0) for s in sig) or list(sig) != sorted(set(sig)):
        raise WavescoreError(f"sigmas must be a non-empty list of increasing positive numbers, got {sigmas!r}")
    return sig


class PatchSchedule:
    """A patch size per grid sigma, used at the grid sigma nearest in log sigma: a picklable
    ``patch_size`` for :class:`ELSDenoiser` (method.md §13, "Scheduled locality").

    ``to_dict`` / ``from_dict`` give its JSON form; ``reference``, ``candidates`` and ``mse``
    (grid sigma x candidate size) record the calibration that chose it, when there was one."""

    def __init__(self, sigmas, sizes, *, reference: str | None = None, candidates=None, mse=None):
        self.sigmas = _grid_sigmas(sigmas)
        self.sizes = _odd_sizes(sizes)
        if len(self.sizes) != len(self.sigmas):
            raise WavescoreError(f"a patch schedule needs one size per grid sigma, got {len(self.sizes)} sizes for "
                                 f"{len(self.sigmas)} sigmas")
        self.reference = reference
        self.candidates = None if candidates is None else _odd_sizes(candidates)
        self.mse = None if mse is None else [[float(v) for v in row] for row in mse]
        self._log = np.log(self.sigmas)

    def __call__(self, sigma: float) -> int:
        # piecewise constant: the nearest grid sigma in log sigma (ties go to the smaller one)
        return self.sizes[int(np.argmin(np.abs(self._log - math.log(float(sigma)))))]

    def to_dict(self) -> dict:
        return {"sigmas": list(self.sigmas), "sizes": list(self.sizes), "reference": self.reference,
                "candidates": None if self.candidates is None else list(self.candidates), "mse": self.mse}

    @classmethod
    def from_dict(cls, d: dict) -> "PatchSchedule":
        if not isinstance(d, dict) or "sigmas" not in d or "sizes" not in d:
            raise WavescoreError("a patch schedule's dict form has 'sigmas' and 'sizes' (PatchSchedule.to_dict): "
                                 f"got {type(d).__name__}")
        return cls(d["sigmas"], d["sizes"], reference=d.get("reference"), candidates=d.get("candidates"),
                   mse=d.get("mse"))

    def __eq__(self, other) -> bool:
        return isinstance(other, PatchSchedule) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        pairs = ", ".join(f"{s:g}: {p}" for s, p in zip(self.sigmas, self.sizes))
        return f"PatchSchedule({{{pairs}}})"


def calibrate_els_schedule(train, reference, x, sigmas, sizes=(3, 5, 7, 9, 11, 13, 15), *, seed: int = 0,
                           progress: bool = False, **els_options) -> PatchSchedule:
    """The ELS patch size per noise level that best matches ``reference``'s denoiser (Kamb &
    Ganguli 2025 calibrate theirs against each network; method.md §13, "Scheduled locality").

    At grid sigma s_k the images ``x`` get the seeded noise ``noise_for(x.shape, k, seed)``, and
    the size chosen is the one whose ELS output (on ``train``) is nearest the reference's output on
    the same noisy images in mean squared error (equivalently, the highest R^2 against it). Sizes
    are clamped as ELSDenoiser clamps them and each effective size is tried once; ties go to the
    smaller. Cost: one ELS denoise per (sigma, size) on len(x) images, so pass a small ``x`` and a
    training subset (or ``train_subset=``, an ELSDenoiser option, like ``wrap`` and ``method``).

    Returns a :class:`PatchSchedule`: ``ELSDenoiser(train, patch_size=schedule)``."""
    reference = check_reference(reference)
    if "patch_size" in els_options:
        raise WavescoreError("calibrate_els_schedule chooses the patch size among sizes=: drop patch_size")
    sig = _grid_sigmas(sigmas)
    sizes = _odd_sizes(sizes)
    x = _as_images(x, "calibration images").detach().cpu().to(torch.float64)
    els = ELSDenoiser(train, patch_size=sizes[0], **els_options)
    if tuple(x.shape[1:]) != els.shape_:
        raise WavescoreError(f"the calibration images are {tuple(x.shape[1:])}, the training images {els.shape_}: "
                             "pass images of one shape")
    effective = []
    for p in sizes:
        els.patch_size = p
        if els.patch_size_for(1.0) not in effective:  # sizes above the cap would repeat the cap's output
            effective.append(els.patch_size_for(1.0))
    effective.sort()
    chosen, mse = [], []
    for k, s in enumerate(progress_bar(sig, desc="calibrate ELS", enabled=progress, leave=False)):
        y = x + s * noise_for(x.shape, k, seed=seed)
        target = reference_output(reference, y, s)
        row = []
        for p in effective:
            els.patch_size = p
            row.append(float(((els.denoise(y, s).to(torch.float64) - target) ** 2).mean()))
        mse.append(row)
        chosen.append(effective[int(np.argmin(row))])  # argmin: the first (smallest) size on ties
    return PatchSchedule(sig, chosen, reference=reference_name(reference), candidates=effective, mse=mse)
