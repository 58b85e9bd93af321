"""A Gaussian mixture over each coefficient's neighbourhood: the local density term whose noisy
score is exact at every sigma (issue 15; docs/method.md §12).

For every group of outputs (a wavelet band and channel, or the pixels of a channel) the
neighbourhoods u = w[N(i)] (method.md §3: a same-scale window, optionally with parents) follow
a mixture sum_k pi_k N(mu_k, Sigma_k), pooled over positions (``shared=True``: translation
equivariant) or one per position. Noise adds s^2 I to every covariance, so coefficient i's score
is the centre coordinate of the noisy neighbourhood marginal's score (method.md §12):

    score_i(y) = -sum_k r_k(y_N) [(Sigma_k + s^2 I)^-1 (y_N - mu_k)]_centre,
    r = softmax_k(log pi_k + log N(y_N; mu_k, Sigma_k + s^2 I)).

With K = 1 this is the local Gaussian (P = 1) machine with shared parameters (ScoreMachine
family 'local'/'parent', degree 1); with every training neighbourhood a component of zero
covariance it is the ELS machine written in the chosen basis. ``basis="pixel"`` takes pixel
patches (circular), the reference point of the issue's checks.

Fit per group: k-means++ and Lloyd iterations on at most ``max_samples`` neighbourhoods, then
``em_iterations`` soft EM steps (mixture.gmm_from_stats is the M-step; its per-component sums
merge exactly across shards: ``em_statistics``).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from . import _checks as checks
from ._io import WavescoreError, progress_bar
from .denoiser import Denoiser
from .features import monomials
from .fitting import Estimator, begin_fit
from .machine import WaveletScore
from .mixture import check_mixture_params, gmm_from_stats, gmm_log_joint, kmeans
from .neighbourhoods import Group, _window_offsets, build_groups
from .transform import PixelBasis, WaveletTransform

__all__ = ["LocalMixtureMachine", "centre_score", "em_statistics"]

FORMAT = "wavescore-local-mixture-machine"
FORMAT_VERSION = 1
_CHUNK = 2e7  # doubles per (R, rows, K, d) temporary


def centre_score(y: torch.Tensor, params, s2: float) -> torch.Tensor:
    """The centre coordinate of the noisy mixture's score (method.md §12, score_i), y (R, n, m) ->
    (R, n), equal to mixture.gmm_score(y, params, s2, row=0) to round-off.

    With P_k = (Sigma_k + s2 I)^-1 formed once per call (K m x m matrices), the log joint is a
    polynomial of degree 2 in y: log pi_k - (log det + m log 2 pi)/2 + (P_k mu_k).y - y^T P_k y / 2,
    so one GEMM of the patches' monomials (features.monomials(m, 2): 1, y_i, y_i y_j) against K
    columns of coefficients gives it, and the score is -r (P_k row 0) . y + r (P_k mu_k)_0. Nothing
    n x K x m is built, which gmm_score's per-component projections need: about 10x faster for 3x3
    patches and K = 64 (benchmarks/local_score_speed.py). The patches are centred on the mean of
    the means first, so the expanded form cancels little."""
    weights, means, lam, U = params
    R, K, m = means.shape
    centre = means.mean(1, keepdim=True)  # (R, 1, m)
    mu = means - centre
    P = (U / (lam + s2)[:, :, None, :]) @ U.transpose(-1, -2)  # (R, K, m, m)
    Pmu = (P @ mu[..., None])[..., 0]  # (R, K, m)
    phi = monomials(m, 2)
    deg = phi.exps.sum(1)
    lin, quad = np.nonzero(deg == 1)[0], np.nonzero(deg == 2)[0]
    a, b = phi.var[phi.parent[quad]], phi.var[quad]  # a degree-2 monomial is y_a y_b (a <= b)
    coef = torch.zeros(R, phi.F, K, dtype=P.dtype, device=P.device)
    coef[:, 0] = torch.log(weights) - 0.5 * (torch.log(lam + s2).sum(-1) + (mu * Pmu).sum(-1)
                                             + m * math.log(2 * math.pi))
    coef[:, lin] = Pmu[:, :, phi.var[lin]].transpose(1, 2)
    # -y^T P y / 2 puts -P_aa / 2 on y_a^2 and -P_ab on y_a y_b (a < b): the pair appears twice
    half = torch.as_tensor(np.where(a == b, 0.5, 1.0), dtype=P.dtype, device=P.device)
    coef[:, quad] = -(P[:, :, a, b] * half).transpose(1, 2)
    P0, b0 = P[:, :, 0, :], Pmu[:, :, 0]
    out = torch.empty(y.shape[:2], dtype=y.dtype, device=y.device)
    step = max(1, int(_CHUNK // (R * (phi.F + K))))
    for s in range(0, y.shape[1], step):
        ys = y[:, s : s + step] - centre
        r = torch.softmax(phi(ys) @ coef, -1)  # (R, n, K)
        out[:, s : s + step] = (r * b0[:, None]).sum(-1) - ((r @ P0) * ys).sum(-1)
    return out


def em_statistics(u: torch.Tensor, params, resp: torch.Tensor | None = None) -> dict:
    """One E-step's sufficient statistics of neighbourhoods ``u`` (R, S, d) under ``params``
    (mixture.gmm_from_stats' output; or given one-hot ``resp`` (R, S, K)): per-component
    responsibility sums (R, K), first moments (R, K, d) and second moments (R, K, d, d), with
    the mean log-likelihood. Sums over samples, so shards add exactly."""
    R, S, d = u.shape
    K = params[1].shape[1] if resp is None else resp.shape[2]
    out = {"count": torch.zeros(R, K, dtype=torch.float64), "sum": torch.zeros(R, K, d, dtype=torch.float64),
           "outer": torch.zeros(R, K, d, d, dtype=torch.float64), "loglik": torch.zeros(R, dtype=torch.float64)}
    step = max(1, int(_CHUNK // (R * K * d)))
    for s in range(0, S, step):
        us = u[:, s : s + step]
        if resp is None:
            logp = gmm_log_joint(us, params, 0.0)[0]
            out["loglik"] += torch.logsumexp(logp, -1).sum(1)
            r = torch.softmax(logp, -1)
        else:
            r = resp[:, s : s + step]
        out["count"] += r.sum(1)
        out["sum"] += r.transpose(1, 2) @ us
        ru = (r[..., None] * us[:, :, None, :]).reshape(R, us.shape[1], K * d)
        out["outer"] += (ru.transpose(1, 2) @ us).reshape(R, K, d, d)
    return out


def border_class(i: np.ndarray, n: int, border: int) -> np.ndarray:
    """Per index 0..n-1 along one axis: its distance to the near edge when under ``border``
    (0 .. border-1 from the start, -1 .. -border from the end), else ``border`` (the interior)."""
    return np.where(i < border, i, np.where(n - 1 - i < border, i - n, border))


def _pixel_groups(shape, radius: int, border: int = 0) -> list[Group]:
    """One group per channel: each pixel and its (2r+1)^2 circular window, centre first. With
    ``border`` b > 0, one group per channel and border class: the pixels within b of an edge
    grouped by their (row, column) distance to it, the interior one group (method.md §12)."""
    c, h, w = shape
    rows, cols = (a.ravel() for a in np.meshgrid(np.arange(h), np.arange(w), indexing="ij"))
    offsets = _window_offsets(SimpleNamespace(h=h, w=w), radius)
    cls = np.stack([border_class(rows, h, border), border_class(cols, w, border)], 1)
    classes = [None]  # one group of all pixels
    if border:  # the interior class first, then the border classes in order
        found = {(int(a), int(b)) for a, b in cls}
        classes = sorted(found, key=lambda k: (k != (border, border), k))
    groups = []
    for ch in range(c):
        base = ch * h * w
        nbr = np.stack([base + ((rows + dr) % h) * w + (cols + dc) % w for dr, dc in offsets], axis=1)
        for k in classes:
            keep = slice(None) if k is None else np.flatnonzero((cls == k).all(1))
            name = f"pixels/c{ch}" + ("" if k is None else f"/border{k[0]},{k[1]}")
            groups.append(Group(name, nbr[keep, 0].copy(), nbr[keep]))
    return groups


class LocalMixtureMachine(Estimator, WaveletScore, Denoiser):
    """Local Gaussian mixture score (module docstring); preset ``local-mixture``.

    Parameters
    ----------
    components : K per group (band and channel; per position with ``shared=False``).
    radius : the (2r+1)x(2r+1) same-scale window.
    neighbourhood : "local" (the window) or "parent" (the window and the coarser coefficient
        covering it; wavelet basis only).
    bands : "same" (the window in the coefficient's own orientation) or "all" (all three).
    basis : "wavelet" or "pixel" (pixel patches, circular).
    shared : True: one mixture per group, pooled over positions; False: one per position.
    border : pixel basis only: 0 (default) pools every position of a channel; b > 0 pools the
        positions within b pixels of an edge by their distance to it (one mixture per border
        class, (2b+1)^2 classes), the interior together: translation-shared away from the border,
        border-aware near it, as a zero-padded CNN sees its input (method.md §12).
    prior, shrinkage : as in MixtureMachine: covariances shrunk towards the group's pooled one
        with the weight of ``prior`` neighbourhoods, plus ``shrinkage`` x (mean variance) on the
        diagonal.
    em_iterations, kmeans_iterations, max_samples, seed : the fit: k-means then soft EM on at
        most ``max_samples`` neighbourhoods per mixture (drawn with ``seed``; all when fewer).
    """

    _FILE = (FORMAT, FORMAT_VERSION, "local mixture machine", "refit it with make_machine('local-mixture', ...)")

    def __init__(self, components: int = 16, radius: int = 1, neighbourhood: str = "local", bands: str = "same",
                 basis: str = "wavelet", shared: bool = True, prior: float = 30.0, shrinkage: float = 1e-4,
                 em_iterations: int = 5, kmeans_iterations: int = 20, max_samples: int = 200_000,
                 wavelet: str = "haar", levels: int | None = None, seed: int = 0, *, batch_size: int = 2000,
                 max_memory: float | None = None, border: int = 0):
        self._init_params(locals())

    def _validate(self) -> None:
        check_mixture_params(self)
        self.radius = checks.whole("radius", self.radius, 0)
        self.em_iterations = checks.whole("em_iterations", self.em_iterations, 0)
        self.kmeans_iterations = checks.whole("kmeans_iterations", self.kmeans_iterations, 0)
        self.max_samples = checks.whole("max_samples", self.max_samples, 1)
        if self.neighbourhood not in ("local", "parent"):
            raise WavescoreError(f"neighbourhood must be 'local' or 'parent', got {self.neighbourhood!r}")
        if self.bands not in ("same", "all"):
            raise WavescoreError(f"bands must be 'same' or 'all', got {self.bands!r}")
        if self.basis not in ("wavelet", "pixel"):
            raise WavescoreError(f"basis must be 'wavelet' or 'pixel', got {self.basis!r}")
        if self.basis == "pixel" and (self.neighbourhood != "local" or self.bands != "same"):
            raise WavescoreError("a pixel patch has no parents or orientations: basis='pixel' takes "
                                 "neighbourhood='local', bands='same'")
        if not isinstance(self.shared, bool):
            raise WavescoreError(f"shared must be True or False, got {self.shared!r}")
        self.border = checks.whole("border", self.border, 0)
        if self.border and (self.basis != "pixel" or not self.shared):
            raise WavescoreError("border= groups pixel positions by their distance to the edge: it takes "
                                 "basis='pixel' and shared=True (per-position mixtures know the border already)")

    @property
    def name(self) -> str:
        nb = "" if self.neighbourhood == "local" else "-parent"
        return (f"local-mixture-{self.basis}-K{self.components}-r{self.radius}{nb}"
                f"{'-all' if self.bands == 'all' else ''}{'' if self.shared else '-per-position'}"
                f"{f'-border{self.border}' if self.border else ''}")

    def _structure(self, shape):
        if self.basis == "pixel":
            return PixelBasis(shape), _pixel_groups(shape, self.radius, self.border)
        t = WaveletTransform(shape, self.wavelet, self.levels)
        return t, build_groups(t.layout, self.neighbourhood, self.radius, self.bands)

    def memory_estimate(self, shape, n_images: int | None = None) -> dict:
        """Bytes a fit needs: every image's coefficients (and their float64 copy), the sampled
        neighbourhoods of one group and the E-step's chunked temporaries."""
        D = int(np.prod([int(v) for v in shape]))
        m = (2 * self.radius + 1) ** 2 * (3 if self.bands == "all" else 1) + 3
        n = n_images or 60000
        rows = self.max_samples * (1 if self.shared else D)
        total = int(1.2 * (2 * n * D + 3 * rows * m + 4 * _CHUNK) * 8)
        return {"D": D, "total": total}

    # ------------------------------------------------------------------ fit
    def fit(self, data, *, progress: bool = True) -> "LocalMixtureMachine":
        """k-means then soft EM per group: ``data`` an (N, C, H, W) tensor."""
        t0 = time.perf_counter()
        x, shape = begin_fit(self, data, "lower max_samples, use fewer images or max_memory=")
        transform, groups = self._structure(shape)
        w = torch.cat([transform.forward(x[s : s + self.batch_size].to(torch.float64))
                       for s in range(0, x.shape[0], self.batch_size)])
        gen = torch.Generator().manual_seed(self.seed)
        bar = progress_bar(groups, desc=f"fit {self.name}", unit="group", enabled=progress, leave=False)
        params, loglik = self._fit_groups(w, bar, gen, "use shared=True")
        self.shape_, self.transform_, self.groups_ = shape, transform, groups
        self.params_, self.loglik_ = params, loglik
        self.n_samples_ = int(x.shape[0])
        self.fit_time_ = time.perf_counter() - t0
        return self

    def _fit_groups(self, w: torch.Tensor, groups, gen: torch.Generator, advice: str) -> tuple[list, list]:
        """Each group's mixture (k-means, then soft EM) on its sampled neighbourhoods of the
        coefficients ``w``: (params, mean log-likelihoods), one per group. The cascade fits its
        conditionals' joint mixtures here too."""
        params, loglik = [], []
        for g in groups:
            u = self._samples(w, g, gen)
            if u.shape[1] < self.components:
                raise WavescoreError(f"{self.components} components need at least as many neighbourhoods per "
                                     f"mixture; group {g.name} has {u.shape[1]}: lower components or {advice}")
            p, ll = self._fit_group(u)
            params.append(p)
            loglik.append(ll)
        return params, loglik

    def _samples(self, w: torch.Tensor, g: Group, gen: torch.Generator) -> torch.Tensor:
        """The training neighbourhoods of group ``g`` as (R, S, m): R = 1 pooled over positions
        (``shared``) or R = positions; at most ``max_samples`` per mixture, drawn without bias."""
        N, (n, m) = w.shape[0], g.nbr.shape
        nbr = torch.from_numpy(g.nbr)
        if self.shared:
            if N * n <= self.max_samples:
                return w[:, nbr].reshape(1, N * n, m)
            pick = torch.randperm(N * n, generator=gen)[: self.max_samples]
            return w[(pick // n)[:, None], nbr[pick % n]][None]
        imgs = torch.randperm(N, generator=gen)[: self.max_samples] if N > self.max_samples else slice(None)
        return w[imgs][:, nbr].permute(1, 0, 2).contiguous()

    def _fit_group(self, u: torch.Tensor):
        R, S, m = u.shape
        floor = self.shrinkage * u.var(1).mean(-1).clamp_min(1e-300)  # (R,): per mixture's mean variance
        K = self.components
        resp = torch.zeros(R, S, K, dtype=torch.float64)
        for r in range(R):
            labels = kmeans(u[r], K, self.kmeans_iterations, self.seed + r)
            resp[r, torch.arange(S), labels] = 1.0
        stats = em_statistics(u, None, resp)
        del resp
        params = gmm_from_stats(stats, self.prior, floor[:, None, None])
        ll = float("nan")
        for _ in range(self.em_iterations):
            stats = em_statistics(u, params)
            ll = float(stats["loglik"].sum() / (R * S))
            params = gmm_from_stats(stats, self.prior, floor[:, None, None])
        return params, ll

    # ------------------------------------------------------------------ score
    def _require_fitted(self) -> None:
        if not hasattr(self, "params_"):
            raise WavescoreError("this LocalMixtureMachine is not fitted yet: call fit(data) or "
                                 "LocalMixtureMachine.load(path)")

    def wavelet_score(self, w: torch.Tensor, sigma: float) -> torch.Tensor:
        """The coefficients' scores (module docstring): (N, D) -> (N, D), float64."""
        self._require_fitted()
        sigma = float(sigma)
        if not sigma > 0 or not math.isfinite(sigma):
            raise WavescoreError(f"sigma must be a positive finite number, got {sigma}")
        out = torch.zeros_like(w)
        N = w.shape[0]
        for g, p in zip(self.groups_, self.params_):
            R, _, m = p[1].shape
            y = w[:, torch.from_numpy(g.nbr)]  # (N, n, m)
            y = y.reshape(1, -1, m) if R == 1 else y.permute(1, 0, 2)
            sc = centre_score(y, p, sigma**2)
            out[:, torch.from_numpy(g.out)] = sc.reshape(N, g.n) if R == 1 else sc.T
        return out

    # ------------------------------------------------------------------ persistence
    def _archive(self) -> tuple[dict, dict]:
        self._require_fitted()
        header = {"format": FORMAT, "version": FORMAT_VERSION, "params": self.get_params(), "shape": list(self.shape_),
                  "count": self.n_samples_, "loglik": self.loglik_, "fit_time": getattr(self, "fit_time_", None)}
        arrays = {f"g{i}.{name}": a.numpy() for i, p in enumerate(self.params_)
                  for name, a in zip(("weights", "means", "lam", "U"), p)}
        return header, arrays

    @classmethod
    def _from_archive(cls, path: Path, header: dict, arr: dict, hint: str) -> "LocalMixtureMachine":
        m = cls._from_params(path, header["params"], hint)
        m.shape_ = tuple(int(v) for v in header["shape"])
        m.transform_, m.groups_ = m._structure(m.shape_)
        m.params_ = []
        for i, g in enumerate(m.groups_):
            p = tuple(arr.get(f"g{i}.{k}") for k in ("weights", "means", "lam", "U"))
            R = 1 if m.shared else g.n
            K = m.components
            want = ((R, K), (R, K, g.m), (R, K, g.m), (R, K, g.m, g.m))
            if any(a is None or tuple(a.shape) != s for a, s in zip(p, want)):
                raise WavescoreError(f"{path} does not match its own configuration (group {g.name}'s arrays are "
                                     f"missing or of other shapes): {hint}")
            if any(not torch.isfinite(a).all() for a in p) or not (p[2] > 0).all():
                raise WavescoreError(f"{path} holds non-finite or non-positive mixture arrays: {hint}")
            m.params_.append(p)
        m.n_samples_, m.loglik_, m.fit_time_ = header["count"], header["loglik"], header.get("fit_time")
        return m
