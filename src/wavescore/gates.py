"""Gated Gaussian machine: the Gaussian score plus sigma-scaled shrinkage gates (docs/method.md §9).

Polynomial features cannot follow a point mass: a wavelet coefficient that is exactly zero
(flat background) should be set to zero when ``|y| <~ sigma`` and left alone when
``|y| >> sigma``, a dead zone whose width scales with sigma. A polynomial of fixed degree
fitted at small sigma cannot bend on that scale. The gates

    own:     f(y)_i = x_i exp(-x_i^2 / (2 c^2 s^2))                    x = y - centre
    energy:  f(y)_i = x_i exp(-sum_{m in N(i)} x_m^2 / (2 n_i c^2 s^2))  N(i): window + parent

can. Their Gaussian-noise expectations are closed forms in the clean coefficients (§9), so
the joint optimum of [global linear terms, gates] at a noise level is still one Schur solve
per coefficient from exact moments of the empirical data convolved with the noise; the
moments are accumulated in one pass for every sigma of a fixed grid; at other sigmas the
gated correction to the (exact) Gaussian denoiser is interpolated in log sigma between the
two neighbouring grid machines.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from . import _checks as checks
from ._io import WavescoreError
from .denoiser import Denoiser, check_images
from .fitting import Estimator, memory_budget, stream_fit
from .machine import WaveletScore
from .neighbourhoods import build_groups
from .solver import gaussian_inverse, schur_solve
from .transform import WaveletTransform

FORMAT = "wavescore-gated-machine"
FORMAT_VERSION = 1
SIGMA_GRID = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
SELECT_RIDGES = (1e-6, 1e-3)
MIN_OPEN = 20.0


def band_centres(layout, w: torch.Tensor, min_share: float = 0.05) -> torch.Tensor:
    """Per coefficient, the centre its gates close around: the most frequent value of its band
    when that value holds at least ``min_share`` of the band (a point mass: 0 for flat details,
    the background level for the approximation); otherwise 0 (details) or the band mean."""
    centre = torch.zeros(layout.size, dtype=torch.float64)
    lev, ori = np.asarray(layout.level), np.asarray(layout.orient)
    for key in sorted(set(zip(lev.tolist(), ori.tolist()))):
        idx = torch.as_tensor(np.nonzero((lev == key[0]) & (ori == key[1]))[0])
        vals = torch.round(w[:, idx].flatten() * 1e6) / 1e6
        uniq, counts = torch.unique(vals, return_counts=True)
        k = int(counts.argmax())
        if counts[k] >= min_share * vals.numel():
            centre[idx] = uniq[k].item()
        elif key[1] == 0:
            centre[idx] = w[:, idx].mean().item()
    return centre


def _log_e0(xsq: torch.Tensor, kappa: torch.Tensor, s2: float) -> torch.Tensor:
    """log E_z exp(-kappa (x + s z)^2 / 2) = -log(1 + s^2 kappa)/2 - kappa x^2 / (2 (1 + s^2 kappa))."""
    d = 1.0 + s2 * kappa
    return -0.5 * torch.log(d) - kappa * xsq / (2.0 * d)


class GatedMachine(Estimator, WaveletScore, Denoiser):
    """Gaussian score plus own and neighbourhood-energy gates, jointly optimal per sigma.

    Parameters
    ----------
    scales : gate widths c of the own-coefficient gates (in units of sigma).
    energy_scales : widths of the energy gates over the (2r+1)^2 window and parent.
    radius, bands : the energy neighbourhood (as in the ``parent`` family).
    sigmas : the grid whose exact moments are accumulated; between grid points the gated
        correction is interpolated in log sigma; above the grid the machine is the Gaussian score.
    ridge : Tikhonov lambda relative to the mean covariance eigenvalue (linear part) and to
        each gate's noisy second moment (gates).
    select : choose per grid sigma between the Gaussian score and the gated machine (and the
        ridge) by denoising MSE on ``holdout`` of the training images; the choice is saved.

    Computes on the CPU in float64 (inputs on another device are moved and the result moved back).
    """

    _FILE = (FORMAT, FORMAT_VERSION, "gated machine", "refit it with `wavescore fit --family gaussian+gates`")

    def __init__(self, scales=(1.0, 2.0, 4.0), energy_scales=(1.0, 2.0), radius: int = 1, bands: str = "same",
                 sigmas=SIGMA_GRID, wavelet: str = "haar", levels: int | None = None, ridge: float = 1e-6,
                 select: bool = True, holdout: float = 0.1, *, batch_size: int = 500,
                 max_memory: float | None = None):
        self._init_params(locals())

    def _validate(self) -> None:
        self.scales = tuple(float(c) for c in self.scales)
        self.energy_scales = tuple(float(c) for c in self.energy_scales)
        self.sigmas = tuple(float(s) for s in self.sigmas)
        if not self.scales and not self.energy_scales:
            raise WavescoreError("a gated machine needs at least one gate: give scales or energy_scales")
        if any(not c > 0 for c in self.scales + self.energy_scales):
            raise WavescoreError(f"gate scales must be > 0, got {self.scales + self.energy_scales}")
        s = np.asarray(self.sigmas)
        if s.size < 1 or not np.all(np.isfinite(s)) or np.any(s <= 0) or np.any(np.diff(s) <= 0):
            raise WavescoreError(f"sigmas must be positive and increasing, got {self.sigmas}")
        if any(not np.isfinite(c) for c in self.scales + self.energy_scales):
            raise WavescoreError(f"gate scales must be finite, got {self.scales + self.energy_scales}")
        checks.machine_settings(self)
        if self.bands not in ("same", "all"):
            raise WavescoreError(f"bands must be 'same' or 'all', got {self.bands!r}")
        self.radius = checks.whole("radius", self.radius, 0)
        if self.select and not 0 < checks.real("holdout", self.holdout) < 0.5:
            raise WavescoreError(f"holdout must be in (0, 0.5) with select=True, got {self.holdout}")

    @property
    def name(self) -> str:
        parts = []
        if self.scales:
            parts.append("own " + ",".join(f"{c:g}" for c in self.scales))
        if self.energy_scales:
            parts.append(f"energy-r{self.radius} " + ",".join(f"{c:g}" for c in self.energy_scales))
        return f"gaussian+gates({'; '.join(parts)})"

    @property
    def G(self) -> int:
        return len(self.scales) + len(self.energy_scales)

    # ------------------------------------------------------------------ memory
    def memory_estimate(self, shape, n_images: int | None = None) -> dict:
        """Bytes a fit needs: the gate cross sums (sigmas x D x G x D, twice with select),
        the covariance and one batch's gate temporaries."""
        C, H, W = (int(v) for v in shape)
        D, G, S = C * H * W, self.G, len(self.sigmas)
        sums = (2 if self.select else 1) * (S * G * D * D + 2 * D * D) * 8
        batch = 6 * self.batch_size * D * G * 8
        # one grid sigma's solve: K, its centred and rotated copies, the transposed layout and
        # its inv-weighted copy (~8 G D^2), the eigenbasis, and the kept Z for every sigma
        solve = (8 * G * D * D + 6 * D * D) * 8 + S * D * D * 8
        total = int(1.1 * (sums + batch + solve))  # allocator allowance, measured: see README
        return {"sums": sums, "batch": batch, "solve": solve, "total": total, "D": D}

    def _check_memory(self, shape) -> None:
        est = self.memory_estimate(shape)
        limit = memory_budget(self.max_memory)
        if est["total"] > limit:
            raise WavescoreError(
                f"{self.name} on images {tuple(shape)} needs about {est['total'] / 2**30:.1f} GiB "
                f"(D = {est['D']}: {len(self.sigmas)} sigmas x {self.G} gates x D^2 cross sums), more than "
                f"the {limit / 2**30:.1f} GiB allowed: use fewer sigmas or gates, smaller images, or max_memory=")

    # ------------------------------------------------------------------ structure
    def _setup(self, reference: torch.Tensor) -> None:
        """Structure for images like ``reference`` and the gate centres from it (shards of a
        distributed fit all take them from the same reference batch)."""
        check_images(reference)
        shape = tuple(int(s) for s in reference.shape[1:])
        self._check_memory(shape)
        self._structure(shape)
        w = self.transform_.forward(reference.detach().cpu().to(torch.float64))
        self.centre_ = band_centres(self.transform_.layout, w)

    def _structure(self, shape) -> None:
        self.shape_ = tuple(int(v) for v in shape)
        self.transform_ = WaveletTransform(self.shape_, self.wavelet, self.levels)
        self._neighbourhoods()

    # ------------------------------------------------------------------ sums (the map-reduce protocol, see machine.py)
    def begin(self, reference: torch.Tensor) -> dict:
        """Empty sums with the structure and the gate centres fixed by ``reference``."""
        self._setup(reference)
        return self._empty_sums()

    def empty_sums(self, sums: dict | None = None) -> dict:
        return self._empty_sums()

    def coefficients(self, batch: torch.Tensor) -> torch.Tensor:
        return self.transform_.forward(batch.to(torch.float64).cpu())

    def update_sums(self, sums: dict, w: torch.Tensor) -> None:
        self._update(sums, w)

    @staticmethod
    def sums_count(sums: dict) -> int:
        return sums["count"]

    def choose(self, sums: dict, x: torch.Tensor, w: torch.Tensor, *, progress: bool = True) -> dict:
        """The held-out choice on coefficients ``w`` (of images ``x``), with ``sums`` fitted on the rest."""
        return self._choose(sums, w, progress)

    def shard_state(self, sums: dict) -> dict:
        return {"shape": self.shape_, "centre": self.centre_}

    @classmethod
    def for_shard(cls, params: dict, state: dict) -> "GatedMachine":
        m = cls(**params)
        m._structure(tuple(state["shape"]))
        m.centre_ = state["centre"]
        return m

    def shard_sums(self, batches) -> dict:
        """One shard's moment sums (a worker's task in a distributed fit); needs ``_setup`` or
        ``centre_`` and the structure of the reference."""
        return self.add_batches(self._empty_sums(), batches)  # distributed.py checks the shard's shape

    def set_sums(self, sums: dict, choice: dict | None = None) -> "GatedMachine":
        """Adopt accumulated (e.g. merged) sums: solve every grid sigma; the machine is then fitted."""
        if sums["count"] < 2:
            raise WavescoreError("a gated machine needs at least 2 images")
        self._solve_all(sums, choice)
        self.n_samples_ = sums["count"]
        self.choice_ = choice
        return self

    def _neighbourhoods(self) -> None:
        lay = self.transform_.layout
        D = lay.size
        groups = build_groups(lay, "parent", self.radius, self.bands)
        m = max(g.m for g in groups)
        nbr = np.full((D, m), D, dtype=np.int64)  # D: a zero column, padding
        for g in groups:
            nbr[g.out, : g.m] = g.nbr
        self._nbr = torch.as_tensor(nbr)
        self._n = torch.as_tensor((nbr < D).sum(1), dtype=torch.float64)
        # Membership of j in N(i) \ {i}, as (i, j) pairs: the cross moments there gain a factor.
        ii, ll = np.nonzero(nbr[:, 1:] < D)
        self._pairs = (torch.as_tensor(ii), torch.as_tensor(nbr[:, 1:][ii, ll]))

    def _gate_kappas(self, s2: float):
        """Per gate, (kappa_own, kappa_nbr) as (D,) tensors: inverse squared widths 1/tau^2 on the
        own coefficient and on the other members of the neighbourhood."""
        out = []
        zero = torch.zeros_like(self._n)
        for c in self.scales:
            k = torch.full_like(self._n, 1.0 / (c * c * s2))
            out.append((k, zero))
        for c in self.energy_scales:
            k = 1.0 / (self._n * c * c * s2)
            out.append((k, k))
        return out

    # ------------------------------------------------------------------ moments
    def _others_energy(self, xsq: torch.Tensor) -> torch.Tensor:
        """sum of x_m^2 over N(i) \\ {i}, (N, D) (padding columns point at a zero)."""
        return torch.cat([xsq, xsq.new_zeros(xsq.shape[0], 1)], 1)[:, self._nbr].sum(-1) - xsq

    def _log_openness(self, xsq, sn, ko, kn, s2: float) -> torch.Tensor:
        """log prod_{m in N(i)} E_z exp(-kappa_m y_m^2 / 2): kappa ``ko`` on the own coefficient,
        ``kn`` on the n_i - 1 others (method.md §9)."""
        return _log_e0(xsq, ko, s2) + (self._n - 1) * (-0.5 * torch.log1p(s2 * kn)) - kn * sn / (2 * (1 + s2 * kn))

    def _empty_sums(self) -> dict:
        D, G, S = self.transform_.layout.size, self.G, len(self.sigmas)
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
        return {"count": 0, "x": z(D), "xx": z(D, D), "cross": z(S, D, G * D), "g": z(S, G, D), "p": z(S, G, D),
                "stein": z(S, G, D), "ff": z(S, G, G, D)}

    @staticmethod
    def merge_sums(a: dict, b: dict) -> dict:
        """Moments are sums: two shards' sums add exactly."""
        return {k: a[k] + b[k] for k in a}

    def _update(self, sums: dict, w: torch.Tensor) -> None:
        """Add a batch's exact noise-averaged moments (docs/method.md §9) for every grid sigma."""
        if not torch.isfinite(w).all():
            raise WavescoreError("the data contain NaN or inf values: clean or drop those images before fitting")
        x = w - self.centre_
        B, D = x.shape
        xsq = x * x
        sn = self._others_energy(xsq)
        sums["count"] += B
        sums["x"] += x.sum(0)
        sums["xx"].addmm_(x.T, x)
        for k, s in enumerate(self.sigmas):
            s2 = s * s
            kap = self._gate_kappas(s2)
            gates = []
            for a, (ko, kn) in enumerate(kap):
                p = torch.exp(self._log_openness(xsq, sn, ko, kn, s2))
                rho = 1.0 / (1.0 + s2 * ko)
                e2 = p * (rho * rho * xsq + s2 * rho)  # E_z[y_i^2 * exps] with y centred
                gates.append(p * rho * x)
                sums["p"][k, a] += p.sum(0)
                sums["stein"][k, a] += (p - ko * e2).sum(0)
                for b in range(a, len(kap)):
                    ko2, kn2 = ko + kap[b][0], kn + kap[b][1]
                    r2 = 1.0 / (1.0 + s2 * ko2)
                    v = (torch.exp(self._log_openness(xsq, sn, ko2, kn2, s2)) * (r2 * r2 * xsq + s2 * r2)).sum(0)
                    sums["ff"][k, a, b] += v
                    if b != a:
                        sums["ff"][k, b, a] += v
            g = torch.stack(gates, 1)  # (B, G, D)
            sums["g"][k] += g.sum(0)
            sums["cross"][k].addmm_(x.T, g.reshape(B, -1))

    # ------------------------------------------------------------------ fit
    def fit(self, data, *, progress: bool = True) -> "GatedMachine":
        """One pass over ``data`` ((N, C, H, W) tensor or an iterable of batches): fitting.stream_fit."""
        return stream_fit(self, data, progress=progress)

    # ------------------------------------------------------------------ closed form
    def _gaussian_basis(self, sums: dict):
        n = sums["count"]
        mean = sums["x"] / n  # of x = w - centre
        cov = sums["xx"] / n - torch.outer(mean, mean)
        lam, V = torch.linalg.eigh(cov)
        return mean, lam.clamp_min(0), V

    def noisy_moments(self, sums: dict, k: int) -> dict:
        """Exact moments at grid sigma k of the noisy coefficients y = x + s z under the
        empirical data (docs/method.md §9): ``K`` (D_j, G, D_i) = E[y_j f_a(y)_i] (uncentred),
        ``ef`` (G, D) = E f_a(y)_i, ``ff`` (D, G, G) = E[f_a f_b], ``stein`` (D, G) = E[d f_a / d y_i]."""
        n = sums["count"]
        s = self.sigmas[k]
        D, G = sums["x"].shape[0], self.G
        K = (sums["cross"][k] / n).reshape(D, G, D).clone()  # E[x_j gbar_a(x)_i]
        kap = self._gate_kappas(s * s)
        rho_own = torch.stack([1.0 / (1.0 + s * s * ko) for ko, _ in kap])  # (G, D)
        rho_nbr = torch.stack([1.0 / (1.0 + s * s * kn) for _, kn in kap])
        ii, jj = self._pairs
        K[jj, :, ii] *= rho_nbr[:, ii].T  # j in N(i) \ {i}: the noise of y_j is inside the gate
        ar = torch.arange(D)
        K[ar, :, ar] = K[ar, :, ar] * rho_own.T + s * s * (rho_own * sums["p"][k] / n).T
        return {"K": K, "ef": sums["g"][k] / n, "ff": (sums["ff"][k] / n).permute(2, 0, 1),
                "stein": (sums["stein"][k] / n).T, "open": sums["p"][k].T}

    def _system(self, sums: dict, k: int, basis, with_dead: bool = False) -> tuple:
        """The ridge-free parts of grid sigma k's joint system (method.md §8-9): the gates' cross
        moments in the eigenbasis KT (i, G, D), their covariance (D, G, G), Stein vector (D, G)
        and means (G, D)."""
        mean, lam, V = basis
        D, G = mean.shape[0], self.G
        mo = self.noisy_moments(sums, k)
        ef = mo["ef"]
        K = mo["K"] - mean[:, None, None] * ef[None]  # centred: Cov(y_j, f_a(y)_i)
        KT = (V.T @ K.reshape(D, G * D)).reshape(D, G, D).permute(2, 1, 0).contiguous()  # (i, G, D) eigenbasis
        cf = mo["ff"] - ef.T[:, :, None] * ef.T[:, None, :]  # (D, G, G)
        b = mo["stein"].clone()
        # A gate open on fewer than MIN_OPEN training images' worth (sum of its noise-averaged
        # openness P) is fitted to those few images: it is pinned to beta = 0 instead.
        # An energy gate over a one-member neighbourhood (the coarsest approximation) repeats
        # the own gate of the same width: also pinned.
        dead = mo["open"] < MIN_OPEN  # (D, G)
        dead[:, len(self.scales):] |= (self._n == 1)[:, None]
        if dead.any():
            KT[dead] = 0.0
            b[dead] = 0.0
            cf[dead.unsqueeze(-1) | dead.unsqueeze(-2)] = 0.0
            cf.diagonal(dim1=1, dim2=2)[dead] = 1.0
        return (KT, cf, b, ef, dead) if with_dead else (KT, cf, b, ef)

    def _solve(self, system: tuple, k: int, basis, ridge: float):
        """Joint optimum at grid sigma k: beta (D, G), Z = V^T K beta (D, D) with
        a_i = -C^{-1} (e_i + V Z[:, i]), and the constant (D,) that centres the gates."""
        s = self.sigmas[k]
        _, lam, V = basis
        KT, cf, b, ef = system
        inv = gaussian_inverse(lam, s, ridge)
        beta, zb = schur_solve(KT, cf, b, V, inv, ridge)
        const = -(beta * ef.T).sum(1)
        return beta, zb.T.contiguous(), const

    def _solve_all(self, sums: dict, choice) -> None:
        basis = self._gaussian_basis(sums)
        mean, self.lam_, self.V_ = basis
        self.mean_ = mean + self.centre_  # in w units
        D, S = self.mean_.shape[0], len(self.sigmas)
        self.beta_ = torch.zeros(S, D, self.G, dtype=torch.float64)
        self.Z_ = torch.zeros(S, D, D, dtype=torch.float64)
        self.const_ = torch.zeros(S, D, dtype=torch.float64)
        for k in range(S):
            pick = ("gated", self.ridge) if choice is None else tuple(choice["candidates"][choice["best"][k]])
            if pick[0] == "gated":
                self.beta_[k], self.Z_[k], self.const_[k] = self._solve(self._system(sums, k, basis), k, basis,
                                                                        float(pick[1]))

    def _choose(self, sums: dict, w0: torch.Tensor, progress: bool) -> dict:
        """Held-out denoising MSE per grid sigma: the Gaussian score against the gated machine
        at each ridge, with the same seeded noise (paired)."""
        from ._io import progress_bar

        basis = self._gaussian_basis(sums)
        cands = [("gaussian", self.ridge)] + [("gated", r) for r in SELECT_RIDGES]
        mse = np.zeros((len(self.sigmas), len(cands)))
        gen = torch.Generator().manual_seed(20261129)
        mean, lam, V = basis
        for k, s in enumerate(progress_bar(self.sigmas, desc="select", enabled=progress, leave=False)):
            y = w0 + s * torch.randn(w0.shape, generator=gen, dtype=torch.float64)
            u = y - self.centre_ - mean
            feats = self._features(y, s)
            system = self._system(sums, k, basis)  # shared by every ridge
            for j, (kind, r) in enumerate(cands):
                inv = gaussian_inverse(lam, s, r)
                score = -((u @ V) * inv) @ V.T
                if kind == "gated":
                    beta, Z, const = self._solve(system, k, basis, r)
                    score += -((u @ V) * inv) @ Z + (feats * beta.T).sum(1) + const
                mse[k, j] = float(((y + s * s * score - w0) ** 2).mean())
        best = mse.argmin(1)
        return {"sigmas": list(self.sigmas), "candidates": [list(c) for c in cands], "best": best.tolist(),
                "mse": mse.tolist(), "n_images": int(w0.shape[0]),
                "chosen": [f"{cands[b][0]}, ridge {cands[b][1]:g}" for b in best]}

    def _features(self, y: torch.Tensor, sigma: float) -> torch.Tensor:
        """The gates f_a(y)_i, (N, G, D)."""
        x = y - self.centre_
        xsq = x * x
        sn = self._others_energy(xsq)
        out = []
        for ko, kn in self._gate_kappas(sigma * sigma):
            out.append(x * torch.exp(-0.5 * (ko * xsq + kn * sn)))
        return torch.stack(out, 1)

    def _require_fitted(self) -> None:
        if not hasattr(self, "beta_"):
            raise WavescoreError("this GatedMachine is not fitted yet: call fit(data) or GatedMachine.load(path)")

    def _brackets(self, sigma: float) -> list[tuple[int, float]]:
        """Grid points and weights for sigma: linear in log sigma between grid points, the
        smallest one below the grid, none (the Gaussian score) above it."""
        s = np.asarray(self.sigmas)
        if sigma > s[-1] * (1 + 1e-12):
            return []
        if sigma <= s[0]:
            return [(0, 1.0)]
        k = int(np.searchsorted(s, sigma))
        if abs(sigma - s[k]) <= 1e-12 * s[k]:
            return [(k, 1.0)]
        t = (math.log(sigma) - math.log(s[k - 1])) / (math.log(s[k]) - math.log(s[k - 1]))
        return [(k - 1, 1.0 - t), (k, t)]

    def _grid_ridge(self, k: int) -> float:
        """The ridge grid sigma k was solved with (the held-out choice's, else ``ridge``)."""
        ch = self.choice_
        if ch is None:
            return float(self.ridge)
        kind, ridge = ch["candidates"][ch["best"][k]]
        return float(ridge) if kind == "gated" else float(self.ridge)

    def gaussian_score(self, w: torch.Tensor, sigma: float) -> torch.Tensor:
        """The machine's Gaussian part, -(Sigma + s^2 I)^{-1} (w - mu) (exact at any sigma, method.md §5)."""
        return -(((w - self.mean_) @ self.V_) * gaussian_inverse(self.lam_, sigma, self.ridge)) @ self.V_.T

    def _correction(self, w: torch.Tensor, k: int) -> torch.Tensor:
        """What the gated machine at grid sigma k adds to the Gaussian denoiser, s_k^2 (s_gated - s_gauss):
        at sigma_k the sum is exactly the machine the held-out choice scored, its ridge included."""
        s = self.sigmas[k]
        uv = (w - self.mean_) @ self.V_
        mean_lam = self.lam_.mean()
        inv = gaussian_inverse(self.lam_, s, self._grid_ridge(k), mean_lam)
        corr = -(uv * inv) @ self.Z_[k] + (self._features(w, s) * self.beta_[k].T).sum(1) + self.const_[k]
        if self._grid_ridge(k) != self.ridge:  # the linear part was solved with another ridge
            corr += (uv * (gaussian_inverse(self.lam_, s, self.ridge, mean_lam) - inv)) @ self.V_.T
        return s * s * corr

    def wavelet_score(self, w: torch.Tensor, sigma: float) -> torch.Tensor:
        """Score in the wavelet domain: (N, D) noisy coefficients -> (N, D), float64.

        Off the grid, the Gaussian score is exact and the gated denoiser's correction to it is
        interpolated in log sigma between the two neighbouring grid machines (each of them
        self-consistent; their parameters, which may cancel each other, are not mixed)."""
        self._require_fitted()
        sigma = float(sigma)
        if not sigma > 0 or not math.isfinite(sigma):
            raise WavescoreError(f"sigma must be a positive finite number, got {sigma}")
        out = torch.empty_like(w)
        for s0 in range(0, w.shape[0], 2000):  # the gates hold (rows, G, D) features
            wc = w[s0 : s0 + 2000]
            out[s0 : s0 + 2000] = self.gaussian_score(wc, sigma)
            for k, weight in self._brackets(sigma):
                out[s0 : s0 + 2000] += (weight / sigma**2) * self._correction(wc, k)
        return out

    # ------------------------------------------------------------------ persistence
    def _archive(self) -> tuple[dict, dict]:
        """The header and arrays of the machine file: the configuration, the Gaussian moments and the per-sigma gate solution."""
        self._require_fitted()
        header = {"format": FORMAT, "version": FORMAT_VERSION, "params": self.get_params(), "shape": list(self.shape_),
                  "count": self.n_samples_, "fit_time": getattr(self, "fit_time_", None), "choice": self.choice_}
        arrays = {"centre": self.centre_.numpy(), "mean": self.mean_.numpy(), "lam": self.lam_.numpy(),
                  "V": self.V_.numpy(), "beta": self.beta_.numpy(), "Z": self.Z_.numpy(), "const": self.const_.numpy()}
        return header, arrays

    @classmethod
    def _from_archive(cls, path: Path, header: dict, arr: dict, hint: str) -> "GatedMachine":
        m = cls._from_params(path, header["params"], hint)
        m._structure(tuple(int(v) for v in header["shape"]))
        D, S = m.transform_.layout.size, len(m.sigmas)
        names = ("centre", "mean", "lam", "V", "beta", "Z", "const")
        if any(k not in arr for k in names) or arr["Z"].shape != (S, D, D) or arr["beta"].shape != (S, D, m.G):
            raise WavescoreError(f"{path} does not match its own configuration (arrays missing or of other shapes): {hint}")
        m.centre_, m.mean_, m.lam_, m.V_ = arr["centre"], arr["mean"], arr["lam"], arr["V"]
        m.beta_, m.Z_, m.const_ = arr["beta"], arr["Z"], arr["const"]
        if (tuple(m.centre_.shape) != (D,) or tuple(m.lam_.shape) != (D,) or tuple(m.V_.shape) != (D, D)
                or any(not torch.isfinite(a).all() for a in arr.values())):
            raise WavescoreError(f"{path} does not match its own configuration (short or non-finite arrays): {hint}")
        m.n_samples_, m.choice_, m.fit_time_ = header["count"], header.get("choice"), header.get("fit_time")
        return m


def read_format(path) -> str | None:
    """The ``format`` of a .wsm file's header (None when unreadable): which class loads it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(bytes(z["header"]).decode()).get("format")
    except Exception:  # noqa: BLE001 - the loaders report the precise problem
        return None
