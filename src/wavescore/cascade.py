"""The wavelet cascade: a global model of the coarse image and, at every finer scale, local
mixtures of the details given the coarser image (issue 15; docs/method.md §14).

With the orthonormal one-level transform a_{j-1} <-> (a_j, d_j) (d_j: the H, V, D bands),

    p(x) = p(a_J) prod_{j=1..J} p(d_j | a_j)

(Guth, Coste, De Bortoli, Mallat 2022; Kadkhodaie, Guth, Mallat, Simoncelli 2023). The coarse
model is any machine (``coarse``: a Gaussian or a global mixture, fitted on the a_J images). At
level j each detail coefficient's neighbourhood u = (its window in its own band, the same window
in the two other detail bands, the window of a_j at the same place), circular, follows a mixture
sum_k pi_k N(mu_k, Sigma_k) shared over positions (fitted as the local mixture, method.md §12).
Only the details are noisy: under noise of level s on d_j with a_j clean, component k's
conditional is N(y_d; mu_kd + B_k (a - mu_ka), C_k + s^2 I), B_k = S_da S_aa^-1,
C_k = S_dd - B_k S_ad, weighted by pi_k N(a; mu_ka, S_kaa), and the conditional score of the
centre is (method.md §14)

    score(y_d | a) = -sum_k r_k [ (C_k + s^2 I)^-1 (y_d - mu_kd - B_k (a - mu_ka)) ]_centre.

One eigendecomposition of C_k serves every sigma. Memory and time are linear in the number of
pixels: each level's mixtures have a fixed size, and scoring is chunked.

``denoise`` of a full noisy image is the coarse-to-fine plug-in estimate (method.md §14): the
coarse model denoises a_J, then each level's details are denoised given the denoised coarser
image. It is exact as sigma -> 0 and is not the posterior mean of the cascade's density at
larger sigma. The cascade's own sampler (``samplers.cascade``) instead runs one reverse
diffusion for a_J and then, per level, one for d_j given the sampled a_j.
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
from .denoiser import Denoiser, check_images, check_sigma
from .fitting import Estimator, begin_fit
from .local_mixture import LocalMixtureMachine
from .mixture import check_mixture_params
from .neighbourhoods import _window_offsets
from .transform import WaveletTransform, max_levels

__all__ = ["CascadeMachine", "conditional_params", "conditional_score"]

FORMAT = "wavescore-cascade-machine"
FORMAT_VERSION = 1
_CHUNK = 2e7  # doubles per (rows, K, d) temporary
_ORIENTS = ("h", "v", "d")


def conditional_params(params, md: int) -> dict:
    """The conditional of the first ``md`` coordinates given the rest, per component, from a
    mixture's (weights, means, lam, U) (each with a leading axis of 1, mixture.gmm_from_stats)."""
    weights, means, lam, U = (p[0] for p in params)
    S = U @ (lam[..., None] * U.transpose(-1, -2))
    Sdd, Sda, Saa = S[:, :md, :md], S[:, :md, md:], S[:, md:, md:]
    L = torch.linalg.cholesky(Saa)
    B = torch.linalg.solve(Saa, Sda.transpose(-1, -2)).transpose(-1, -2)  # S_da S_aa^-1 (Saa symmetric)
    C = Sdd - B @ Sda.transpose(-1, -2)
    lam_c, U_c = torch.linalg.eigh(0.5 * (C + C.transpose(-1, -2)))
    floor = 1e-12 * lam.amax(-1, keepdim=True)
    return {"logw": torch.log(weights), "mu_d": means[:, :md], "mu_a": means[:, md:],
            "Linv": torch.linalg.inv(L), "logdet_a": 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1),
            "B": B, "lam": lam_c.clamp_min(floor), "U": U_c}


def conditional_score(yd: torch.Tensor, a: torch.Tensor, cp: dict, s2: float) -> torch.Tensor:
    """The centre coordinate's conditional score (module docstring): neighbourhoods yd (n, md)
    noisy and a (n, ma) clean -> (n,), responsibilities in log-sum-exp."""
    da = a[:, None, :] - cp["mu_a"][None]  # (n, K, ma)
    za = torch.einsum("kij,nkj->nki", cp["Linv"], da)
    la = -0.5 * (za * za).sum(-1) - 0.5 * cp["logdet_a"]
    e = yd[:, None, :] - cp["mu_d"][None] - torch.einsum("kij,nkj->nki", cp["B"], da)
    var = cp["lam"] + s2  # (K, md)
    p = torch.einsum("kji,nkj->nki", cp["U"], e) / var  # (C + s^2)^-1 e in the eigenbasis
    ld = -0.5 * (p * p * var).sum(-1) - 0.5 * torch.log(var).sum(-1)
    r = torch.softmax(cp["logw"] + la + ld, -1)
    return -(r * (p * cp["U"][:, 0, :][None]).sum(-1)).sum(-1)


class _Level:
    """One level's one-level transform of a_{j-1}, its groups and index sets."""

    def __init__(self, shape, wavelet: str, radius: int):
        self.t = WaveletTransform(shape, wavelet, 1)
        bands = {b.orient: b for b in self.t.layout.bands}
        self.a_slice = slice(bands["a"].start, bands["a"].stop)
        self.d_slice = slice(bands["h"].start, self.t.size)
        a = bands["a"]
        self.a_shape = (a.channels, a.h, a.w)
        offsets = _window_offsets(SimpleNamespace(h=a.h, w=a.w), radius)
        rows, cols = (v.ravel() for v in np.meshgrid(np.arange(a.h), np.arange(a.w), indexing="ij"))
        self.groups = []
        for o in _ORIENTS:
            order = [o] + [q for q in _ORIENTS if q != o] + ["a"]
            for c in range(a.channels):
                win = [bands[q].start + c * a.h * a.w + ((rows + dr) % a.h) * a.w + (cols + dc) % a.w
                       for q in order for dr, dc in offsets]
                nbr = np.stack(win, axis=1)
                self.groups.append(SimpleNamespace(name=f"{o}/c{c}", out=nbr[:, 0].copy(), nbr=nbr,
                                                   md=3 * len(offsets)))


class CascadeMachine(Estimator, Denoiser):
    """The wavelet cascade (module docstring); preset ``cascade``.

    Parameters
    ----------
    coarse : the model of the coarsest image a_J, a configuration for ``presets.make_machine``
        (default a global mixture of 100 components; ``{"family": "gaussian"}`` the Gaussian).
    components, radius : each level's conditional mixtures: K components over (2r+1)^2 windows
        of the three detail bands and of a_j (K = 1: local Gaussian conditionals).
    levels : J (None: as many as the image allows); wavelet: the orthonormal one-level step.
    prior, shrinkage, em_iterations, kmeans_iterations, max_samples, seed : the conditional
        mixtures' fit, as in LocalMixtureMachine.
    """

    _FILE = (FORMAT, FORMAT_VERSION, "cascade machine", "refit it with make_machine('cascade', ...)")
    coarse_to_fine = True  # samplers.sample draws from it with samplers.cascade by default

    def __init__(self, coarse=None, components: int = 16, radius: int = 1, levels: int | None = None,
                 wavelet: str = "haar", prior: float = 30.0, shrinkage: float = 1e-4, em_iterations: int = 5,
                 kmeans_iterations: int = 20, max_samples: int = 200_000, seed: int = 0, *, batch_size: int = 2000,
                 max_memory: float | None = None):
        self._init_params(locals())

    def _validate(self) -> None:
        check_mixture_params(self)
        self.coarse = dict({"family": "mixture", "components": 100} if self.coarse is None else self.coarse)
        if self.coarse.get("family") in ("cascade", "mixture+local-mixture"):
            raise WavescoreError(f"the cascade's coarse model is one machine (gaussian, mixture, ...), "
                                 f"not {self.coarse.get('family')!r}")
        self.radius = checks.whole("radius", self.radius, 0)
        if self.levels is not None:
            self.levels = checks.whole("levels", self.levels, 1)
        for name in ("em_iterations", "kmeans_iterations"):
            setattr(self, name, checks.whole(name, getattr(self, name), 0))
        self.max_samples = checks.whole("max_samples", self.max_samples, 1)
        self._local()
        self._make_coarse()

    def _local(self) -> LocalMixtureMachine:
        """The conditional mixtures' fit settings (LocalMixtureMachine._fit_group does the fit)."""
        return LocalMixtureMachine(components=self.components, prior=self.prior, shrinkage=self.shrinkage,
                                   em_iterations=self.em_iterations, kmeans_iterations=self.kmeans_iterations,
                                   seed=self.seed)

    def _make_coarse(self):
        from .presets import make_machine

        return make_machine(**self.coarse)

    @property
    def name(self) -> str:
        coarse = (self.coarse_ if hasattr(self, "coarse_") else self._make_coarse()).name
        return f"cascade({coarse}; K{self.components}-r{self.radius})"

    def _structure(self, shape) -> list[_Level]:
        c, h, w = shape
        most = max_levels(h, w) - 1  # the coarse model's own transform needs one level of a_J
        if most < 1:
            raise WavescoreError(f"a {h}x{w} image is too small for a cascade: it needs two orthonormal levels (one "
                                 "for the cascade, one for the coarse model's basis); pad the images")
        J = self.levels
        if J is None:  # as many levels as keep the coarse image at least 8 pixels a side
            J = max(1, min(most, int(math.log2(max(1, min(h, w) // 8)))))
        if J > most:
            raise WavescoreError(f"a {h}x{w} image allows at most {most} cascade levels (each halves both sides, and "
                                 f"the coarse model needs one more), got levels={J}: lower levels or pad the images")
        return [_Level((c, h >> j, w >> j), self.wavelet, self.radius) for j in range(J)]

    def memory_estimate(self, shape, n_images: int | None = None) -> dict:
        """Bytes a fit needs: every image (and one level's coefficients), one group's sampled
        neighbourhoods and the E-step's temporaries; the coarse model's fit on the small a_J."""
        c, h, w = (int(v) for v in shape)
        D, n = c * h * w, n_images or 60000
        m = 4 * (2 * self.radius + 1) ** 2
        total = int(1.2 * (3 * n * D + 3 * self.max_samples * m + 4 * _CHUNK) * 8)
        J = len(self._structure((c, h, w)))
        coarse = self._make_coarse().memory_estimate((c, h >> J, w >> J), n)
        return {"D": D, "total": max(total, coarse.get("total", coarse.get("peak_bytes", 0)))}

    # ------------------------------------------------------------------ the pyramid
    def analyse(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (N, C, H, W) -> (a_J images, [d_1 ... d_J] flat details), float64."""
        a, details = x.to(torch.float64), []
        for lv in self.levels_:
            v = lv.t.forward(a)
            details.append(v[:, lv.d_slice])
            a = v[:, lv.a_slice].reshape(-1, *lv.a_shape)
        return a, details

    def synthesise_level(self, j: int, a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """(a_j images, d_j flat) -> a_{j-1} images (j counts from 0 = finest)."""
        lv = self.levels_[j]
        return lv.t.inverse(torch.cat([a.reshape(a.shape[0], -1), d], 1))

    # ------------------------------------------------------------------ fit
    def fit(self, data, *, progress: bool = True) -> "CascadeMachine":
        """The coarse model on the a_J images, then each level's conditional mixtures."""
        t0 = time.perf_counter()
        x, shape = begin_fit(self, data, "lower max_samples, use fewer images or max_memory=")
        levels = self._structure(shape)
        local = self._local()
        gen = torch.Generator().manual_seed(self.seed)
        params, loglik = [], []
        a = x.to(torch.float64)
        bar = progress_bar(total=sum(len(lv.groups) for lv in levels), desc=f"fit {self.name}", unit="group",
                           enabled=progress, leave=False)
        for lv in levels:
            v = torch.cat([lv.t.forward(a[s : s + self.batch_size]) for s in range(0, a.shape[0], self.batch_size)])
            level_params, level_ll = local._fit_groups(v, lv.groups, gen, "use fewer levels")
            params.append(level_params)
            loglik.append(level_ll)
            bar.update(len(lv.groups))
            a = v[:, lv.a_slice].reshape(-1, *lv.a_shape)
        bar.close()
        coarse = self._make_coarse()
        coarse.fit(a.to(x.dtype), progress=progress)
        self._adopt(shape, coarse, params, levels)
        self.loglik_ = loglik
        self.n_samples_ = int(x.shape[0])
        self.fit_time_ = time.perf_counter() - t0
        return self

    def _adopt(self, shape, coarse, params, levels) -> None:
        self.shape_ = shape
        self.levels_ = levels
        self.coarse_ = coarse
        self.params_ = params
        self.cond_ = [[conditional_params(p, g.md) for p, g in zip(lp, lv.groups)]
                      for lp, lv in zip(params, self.levels_)]

    # ------------------------------------------------------------------ scores and the denoiser
    def _require_fitted(self) -> None:
        if not hasattr(self, "cond_"):
            raise WavescoreError("this CascadeMachine is not fitted yet: call fit(data) or CascadeMachine.load(path)")

    def conditional_score(self, j: int, d: torch.Tensor, a: torch.Tensor, sigma: float) -> torch.Tensor:
        """grad_d log p_sigma(d_j | a_j) per coefficient: noisy flat details d (N, Dd), clean a_j
        images (N, C, h, w) -> (N, Dd), float64 (module docstring)."""
        self._require_fitted()
        lv = self.levels_[j]
        v = torch.cat([a.reshape(a.shape[0], -1).to(torch.float64), d.to(torch.float64)], 1)
        out = torch.zeros_like(v)
        N = v.shape[0]
        for g, cp in zip(lv.groups, self.cond_[j]):
            u = v[:, torch.from_numpy(g.nbr)].reshape(-1, g.nbr.shape[1])  # (N n, m)
            K = cp["logw"].shape[0]
            step = max(1, int(_CHUNK // (K * g.nbr.shape[1])))
            sc = torch.cat([conditional_score(u[s : s + step, : g.md], u[s : s + step, g.md :], cp, sigma**2)
                            for s in range(0, u.shape[0], step)])
            out[:, torch.from_numpy(g.out)] = sc.reshape(N, -1)
        return out[:, lv.d_slice]

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The coarse-to-fine plug-in denoiser (module docstring, method.md §14)."""
        self._require_fitted()
        x = check_images(x, shape=self.shape_, finite=True)
        sig = check_sigma(sigma, x.shape[0])
        out = torch.empty(x.shape, dtype=torch.float64)
        for value in torch.unique(sig):
            sel = sig == value
            s = float(value)
            a, details = self.analyse(x[sel])
            a = self.coarse_.denoise(a, s).to(torch.float64)
            for j in reversed(range(len(self.levels_))):
                d = details[j] + s * s * self.conditional_score(j, details[j], a, s)
                a = self.synthesise_level(j, a, d)
            out[sel] = a
        return out.to(x.dtype)

    def level_errors(self, x: torch.Tensor, sigmas, *, seed: int = 0) -> dict:
        """Per level and sigma, the mean squared error of denoising d_j given the clean a_j
        (noise on the details only: what each conditional was built for), beside the error
        of returning the noisy details (sigma^2): which scale's conditional does how much."""
        self._require_fitted()
        x = check_images(x, shape=self.shape_, finite=True)
        _, details = self.analyse(x)
        a = x.to(torch.float64)
        clean_a = []
        for lv in self.levels_:  # a_1 .. a_J: the clean conditioning of each level
            a = lv.t.forward(a)[:, lv.a_slice].reshape(-1, *lv.a_shape)
            clean_a.append(a)
        gen = torch.Generator().manual_seed(seed)
        out = {"sigmas": [float(s) for s in sigmas], "levels": {}}
        for j, (d, a) in enumerate(zip(details, clean_a)):
            z = torch.randn(d.shape, generator=gen, dtype=torch.float64)
            errs = []
            for s in out["sigmas"]:
                y = d + s * z
                est = y + s * s * self.conditional_score(j, y, a, s)
                errs.append(float(((est - d) ** 2).mean()))
            out["levels"][f"level {j + 1} ({self.levels_[j].a_shape[1]}x{self.levels_[j].a_shape[2]})"] = errs
        return out

    def level_denoiser(self, j: int, a: torch.Tensor) -> "_ConditionalDenoiser":
        """A model with ``denoise(d, sigma)`` for level j's details given clean a_j: what the
        cascade sampler runs its per-level reverse diffusion with."""
        return _ConditionalDenoiser(self, j, a)

    # ------------------------------------------------------------------ persistence
    def _archive(self) -> tuple[dict, dict]:
        """The coarse model's own header and arrays (prefixed ``coarse.``) and every level's
        joint mixtures (the conditionals are recomputed on load)."""
        self._require_fitted()
        ch, ca = self.coarse_._archive()
        arrays = {f"coarse.{k}": v for k, v in ca.items()}
        for j, lp in enumerate(self.params_):
            for i, p in enumerate(lp):
                arrays.update({f"l{j}.g{i}.{name}": t.numpy() for name, t in zip(("weights", "means", "lam", "U"), p)})
        header = {"format": FORMAT, "version": FORMAT_VERSION, "params": self.get_params(), "shape": list(self.shape_),
                  "count": self.n_samples_, "coarse": ch, "loglik": self.loglik_,
                  "fit_time": getattr(self, "fit_time_", None)}
        return header, arrays

    @classmethod
    def _from_archive(cls, path: Path, header: dict, arr: dict, hint: str) -> "CascadeMachine":
        from .presets import machine_classes

        m = cls._from_params(path, header["params"], hint)
        shape = tuple(int(v) for v in header["shape"])
        ch = header["coarse"]
        coarse_cls = machine_classes().get(ch.get("format"))
        if coarse_cls is None or coarse_cls is cls:
            raise WavescoreError(f"{path}: its coarse model has an unknown format {ch.get('format')!r}: {hint}")
        coarse = coarse_cls._from_archive(path, ch, {k[7:]: v for k, v in arr.items() if k.startswith("coarse.")},
                                          hint)
        levels = m._structure(shape)
        params = []
        for j, lv in enumerate(levels):
            lp = []
            for i, g in enumerate(lv.groups):
                p = tuple(arr.get(f"l{j}.g{i}.{k}") for k in ("weights", "means", "lam", "U"))
                K, md = m.components, g.nbr.shape[1]
                want = ((1, K), (1, K, md), (1, K, md), (1, K, md, md))
                if any(t is None or tuple(t.shape) != s for t, s in zip(p, want)):
                    raise WavescoreError(f"{path} does not match its own configuration (level {j + 1} group {g.name}'s "
                                         f"arrays are missing or of other shapes): {hint}")
                if any(not torch.isfinite(t).all() for t in p) or not (p[2] > 0).all():
                    raise WavescoreError(f"{path} holds non-finite or non-positive mixture arrays: {hint}")
                lp.append(p)
            params.append(lp)
        m._adopt(shape, coarse, params, levels)
        m.loglik_, m.n_samples_, m.fit_time_ = header["loglik"], header["count"], header.get("fit_time")
        return m


class _ConditionalDenoiser(Denoiser):
    """Level j's details given clean a_j, as images (N, 1, 1, Dd) for the samplers."""

    def __init__(self, machine: CascadeMachine, j: int, a: torch.Tensor):
        self.machine, self.j, self.a = machine, j, a
        lv = machine.levels_[j]
        self.shape_ = (1, 1, lv.t.size - (lv.a_slice.stop - lv.a_slice.start))

    def denoise(self, d: torch.Tensor, sigma) -> torch.Tensor:
        s = float(sigma)
        if not (s > 0 and math.isfinite(s)):
            raise WavescoreError(f"sigma must be a positive finite number, got {sigma}")
        flat = d.reshape(d.shape[0], -1).to(torch.float64)
        out = flat + s * s * self.machine.conditional_score(self.j, flat, self.a, s)
        return out.reshape(d.shape).to(d.dtype)
