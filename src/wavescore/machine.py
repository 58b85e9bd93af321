"""The score machine: the optimal wavelet-polynomial score, fitted from data moments.

method.md §3-5. ``fit`` is one streaming pass accumulating clean moments; the parameters
for any sigma then follow in closed form (one batched ridge solve per sigma, cached).
Conventions follow scikit-learn: constructor arguments are the configuration, ``fit``
returns self, fitted state ends in ``_`` and ``save``/``load`` round-trip it exactly.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from . import _checks as checks
from ._io import WavescoreError
from .denoiser import Denoiser, check_images, check_sigma
from .fitting import Estimator, memory_budget, stream_fit
from .features import monomial_set, monomials
from .moments import MixedMomentAccumulator, MomentAccumulator, band_standardisation, build_cross_plan, noise_plan
from .neighbourhoods import Term, build_groups, build_mixed_groups
from .presets import PRESETS, mixed_presets
from .solver import gaussian_inverse, normal_equations, ridge_solve, schur_solve
from .transform import WaveletTransform

FORMAT = "wavescore-machine"
FORMAT_VERSION = 1
# Mixed-degree presets: the global linear (Gaussian) term plus a local family's features
# of degree 2..P (issue 8); ``family="mixed"`` with ``terms=[...]`` declares any other.
MIXED_PRESETS = mixed_presets()
# Automatic choice (select=True): per sigma on this grid, the sub-family of degree <= d and
# the ridge with the lowest held-out denoising error; other sigmas use the nearest grid point.
SELECT_SIGMAS = tuple(float(s) for s in np.geomspace(0.002, 80.0, 16))
SELECT_RIDGES = (1e-6, 1e-3)


def score_images(model, x: torch.Tensor, sigma, device) -> torch.Tensor:
    """The image-domain score of a fitted wavelet-domain model (``transform_``, ``shape_``,
    ``wavelet_score``): checks the input, one ``wavelet_score`` on ``device`` per distinct
    sigma; float64 on x's device. The orthonormal inverse maps the wavelet score back."""
    check_images(x, finite=True)
    if tuple(x.shape[1:]) != model.shape_:
        raise WavescoreError(f"this machine was fitted on images of shape {model.shape_}, got {tuple(x.shape[1:])}")
    sig = check_sigma(sigma, x.shape[0])
    out = torch.empty(x.shape, dtype=torch.float64, device=x.device)
    for value in torch.unique(sig):
        sel = (sig == value).to(x.device)
        w = model.transform_.forward(x[sel].to(device=device, dtype=torch.float64))
        out[sel] = model.transform_.inverse(model.wavelet_score(w, float(value))).to(x.device)
    return out


class WaveletScore:
    """``score`` for machines computed on the CPU in float64 from ``wavelet_score`` (the gated,
    joint and mixture machines): checks, the wavelet transform and back (``score_images``)."""

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """grad_x log p_sigma(x) for images x (N, C, H, W); sigma a float or an (N,) tensor."""
        self._require_fitted()
        return score_images(self, x, sigma, "cpu")


def _group_score(g, phi: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """theta . phi for the outputs of group ``g``: (N, rows, F) features -> (N, g.n)."""
    if g.is_global:  # one feature row shared by every output: theta is (F, outputs)
        return phi[:, 0] @ theta
    return (phi * theta).sum(-1)


class ScoreMachine(Estimator, Denoiser):
    """A wavelet score machine (method.md §3).

    Parameters
    ----------
    family : "independent" | "orientation" | "local" | "parent" | "gaussian", a mixed preset
        "gaussian+<family>" (global linear terms plus the family's local features of degree
        2..P), "gaussian+gsm" (global linear; window and parent up to degree 2; own coefficient
        up to P; squared magnitudes over the window one ring wider and its parent), or "mixed"
        with ``terms``.
    degree : P in {1, 2, 3}: all monomials of total degree <= P over the neighbourhood.
    radius : half-width r of the same-scale (2r+1)x(2r+1) window (local, parent).
    shared : False: parameters per coefficient; True: one vector per band (and channel),
        pooled over positions (translation-equivariant, CNN-like).
    bands : "same" (window in the coefficient's own orientation) or "all" (all three).
    wavelet, levels : the orthonormal transform (levels=None: as many as stay orthonormal).
    ridge : Tikhonov lambda relative to each feature's noisy second moment (Jacobi-scaled);
        for the gaussian family, relative to the mean eigenvalue of the covariance.
    terms : for ``family="mixed"``: a list of terms, each a dict ``{"family", "degree",
        "radius", "bands", "kind"}`` (see :class:`wavescore.neighbourhoods.Term`); a
        ``{"family": "gaussian"}`` term adds every coefficient linearly.
    select : choose, per sigma, the sub-family (features of degree <= d, d = 1..P) and the
        ridge by denoising error on ``holdout`` of the training images (fitted on the rest);
        the final moments use all images and the choice is saved with the machine (``choice_``).

    Channels (RGB): neighbourhoods stay within a channel and parameters are per channel;
    only the ``gaussian`` family couples channels (through the full covariance).
    """

    _FILE = (FORMAT, FORMAT_VERSION, "wavescore machine", "refit it with `wavescore fit`")

    def __init__(self, family: str = "local", degree: int = 1, radius: int = 1, shared: bool = False,
                 bands: str = "same", wavelet: str = "haar", levels: int | None = None, ridge: float = 1e-6,
                 terms: list | None = None, select: bool = False, holdout: float = 0.1, *, batch_size: int = 1000,
                 device: str = "cpu", max_memory: float | None = None):
        self._init_params(locals())

    # ------------------------------------------------------------------ configuration
    def _validate(self) -> None:
        preset = PRESETS.get(self.family)
        if preset is None or preset.machine != "score":
            cls = {"gated": "GatedMachine", "joint": "JointMachine", "mixture": "MixtureMachine"}.get(
                getattr(preset, "machine", None))
            hint = f" (the {cls}: use {cls}(...) or make_machine(family={self.family!r}))" if cls else ""
            names = [n for n, p in PRESETS.items() if p.machine == "score" and n != "mixed"]
            raise WavescoreError(f"unknown family {self.family!r}{hint}: choose one of "
                                 f"{', '.join(names)} or 'mixed' with terms=[...]")
        if (self.family == "mixed") != (self.terms is not None):
            raise WavescoreError("terms=[...] declares the features of family='mixed' (and only of it)")
        mixed = self.mixed_terms()
        if mixed is not None:
            if self.family != "mixed" and self.degree < 2:
                raise WavescoreError(f"{self.family} adds local terms of degree 2..P to the global linear "
                                     "ones: use degree=2 or 3 (degree 1 is the gaussian family)")
            if self.shared and any(t.family == "gaussian" for t in mixed):
                raise WavescoreError("global linear terms are per coefficient: shared=True applies only to "
                                     "mixed families without a gaussian term")
        if isinstance(self.degree, bool) or self.degree not in (1, 2, 3):
            raise WavescoreError(f"degree must be 1, 2 or 3, got {self.degree!r}")
        if self.family == "gaussian" and self.degree != 1:
            raise WavescoreError("the gaussian family is global and linear: use degree=1")
        checks.machine_settings(self)
        if self.bands not in ("same", "all"):
            raise WavescoreError(f"bands must be 'same' or 'all', got {self.bands!r}")
        self.radius = checks.whole("radius", self.radius, 0)
        if self.select and not 0 < checks.real("holdout", self.holdout) < 0.5:
            raise WavescoreError(f"holdout is the fraction of training images kept aside for select=True: "
                                 f"choose it in (0, 0.5), got {self.holdout}")

    def mixed_terms(self) -> list[Term] | None:
        """The terms of a mixed-degree family (None for the base families)."""
        if self.family == "mixed":
            if not isinstance(self.terms, (list, tuple)) or not self.terms:
                raise WavescoreError("family='mixed' needs a non-empty list of terms")
            return [Term.parse(t) for t in self.terms]
        terms = PRESETS[self.family].terms
        return None if terms is None else terms(self.degree, self.radius, self.bands)

    @property
    def name(self) -> str:
        """Short label, e.g. ``local-r1-P2-shared``, ``gaussian+local-r1-P3``."""
        if self.family == "mixed":
            def label(t):
                if t.family == "gaussian":
                    return "gaussian"
                r = f"-r{t.radius}" + ("all" if t.bands == "all" else "") if t.family in ("local", "parent") else ""
                return f"{t.family}{r}-" + {"squares": "sq", "own-products": "op"}.get(t.kind, f"P{t.degree}")
            return "+".join(label(t) for t in self.mixed_terms()) + ("-shared" if self.shared else "")
        if self.family in MIXED_PRESETS:
            base = self.family.split("+", 1)[1]
            r = f"-r{self.radius}" + ("all" if self.bands == "all" else "") if base in ("local", "parent", "gsm") else ""
            return f"{self.family}{r}-P{self.degree}"
        parts = [self.family]
        if self.family in ("local", "parent"):
            parts.append(f"r{self.radius}" + ("all" if self.bands == "all" else ""))
        parts.append(f"P{self.degree}")
        if self.shared and self.family != "gaussian":
            parts.append("shared")
        return "-".join(parts)

    # ------------------------------------------------------------------ structure
    def _structure_key(self, shape) -> tuple:
        return (tuple(int(v) for v in shape), self.family, self.degree, self.radius, self.bands, self.wavelet,
                self.levels, repr(self.terms))

    def _structure(self, shape: tuple[int, int, int]):
        """(transform, groups, features) for images of ``shape``; built once per configuration
        (the memory check, the accumulator and loading all need them)."""
        cache = self.__dict__.setdefault("_structures", {})
        key = self._structure_key(shape)
        if key not in cache:
            cache.clear()
            cache[key] = self._build_structure(tuple(int(v) for v in shape))
        return tuple(cache[key][:3])

    def _cross_plan(self, shape):
        """The distinct local monomials of a mixed family with a gaussian term, built once."""
        self._structure(shape)
        entry = self._structures[self._structure_key(shape)]
        if len(entry) == 3:
            _, groups, feats = entry
            entry.append(build_cross_plan(groups[1:], feats[1:], groups[0].n))
        return entry[3]

    def _build_structure(self, shape: tuple[int, int, int]) -> list:
        transform = WaveletTransform(shape, self.wavelet, self.levels)
        terms = self.mixed_terms()
        if terms is None:
            groups = build_groups(transform.layout, self.family, self.radius, self.bands)
            feats = [monomials(g.m, self.degree) for g in groups]
            return [transform, groups, feats]
        global_linear, groups, exps = build_mixed_groups(transform.layout, terms)
        feats = [monomial_set(e) for e in exps]
        if global_linear:
            glob = build_groups(transform.layout, "gaussian")
            groups, feats = glob + groups, [monomials(transform.layout.size, 1)] + feats
        return [transform, groups, feats]

    @property
    def _global_mixed(self) -> bool:
        terms = self.mixed_terms()
        return terms is not None and any(t.family == "gaussian" for t in terms)

    def _accumulator(self, shape, shift, scale) -> MomentAccumulator:
        """An empty accumulator of this configuration's moments (used by fit, load and shards)."""
        _, groups, feats = self._structure(shape)
        if self._global_mixed:
            return MixedMomentAccumulator(groups, feats, shift, scale, self._cross_plan(shape))
        return MomentAccumulator(groups, feats, shift, scale, shared=self.shared)

    def memory_estimate(self, shape, n_images: int | None = None) -> dict:
        """Peak bytes a fit (one pass, then one solve) of images of ``shape`` (C, H, W) needs,
        above what is resident before it (the data itself not counted), predicted before fitting.

        ``n_images`` (default: a full batch, ``batch_size``) only matters below one batch. The
        model, term by term (every term a buffer the code allocates; ``wavescore.profiling``
        measures the real peak and ``tests/test_scale.py`` checks measured <= predicted <= 2x):

        - pass: the moment sums, the transform of one float64 batch (input, per-level products
          and the flat output: 4.5 batch copies) and the update (coefficients, their
          standardised transpose and one chunk of features, ``_gram.chunk_bytes``);
        - solve: the sums, the clean moments, and for the largest group its noisy moments,
          noisy Gram, Jacobi-scaled and ridged copies and Cholesky factor (the global family:
          covariance, eigenvectors and the inverse, about 8 D x D);
        - then 15% and 64 MiB for the allocator (freed blocks it keeps mapped).
        """
        shape = tuple(int(s) for s in shape)
        if self.mixed_terms() is not None:
            return self._mixed_memory_estimate(shape)
        from math import comb

        from ._gram import chunk_bytes
        from .features import n_features

        transform = WaveletTransform(shape, self.wavelet, self.levels)
        groups = build_groups(transform.layout, self.family, self.radius, self.bands)
        D = transform.layout.size
        n = max(1, min(self.batch_size, n_images or self.batch_size))
        batch = n * D * 8
        total = clean = largest = chunk = plan = 0
        max_f = 0
        for g in groups:
            F = n_features(g.m, self.degree)
            rows = 1 if (self.shared or g.nbr.shape[0] == 1) else g.n
            gram = rows * F * F * 8
            total += gram
            S = F * F if self.degree == 1 else comb(g.m + 2 * self.degree, 2 * self.degree)
            clean += rows * S * 8
            global_linear = g.is_global
            # noisy Gram, scaled copy, ridge copy, Cholesky factor, solution; the noise plan's
            # dense expansion of the clean moments (<= 3 S entries per row, capped at 2e7 by moments.py)
            solve = (8 * gram) if global_linear else (5 * gram + rows * S * 8 + 2 * min(3 * rows * S, 2e7) * 8)
            largest = max(largest, solve)
            max_f = max(max_f, F)
            chunk = max(chunk, chunk_bytes(g.nbr.shape[0], g.m, F, n, rows > 1))
            if self.degree > 1:
                plan = max(plan, F * F * g.m * 8 * 2)
        # The allocator keeps much of what the transform freed mapped while the update runs,
        # so the two add up rather than overlap (measured: they do).
        pass_bytes = total + 4.5 * batch + 2 * batch + chunk
        solve_bytes = total + clean + largest + plan
        need = 1.15 * max(pass_bytes, solve_bytes) + 64 * 2**20
        return {"features": max_f, "groups": len(groups), "moments_bytes": int(total), "pass_bytes": int(pass_bytes),
                "solve_bytes": int(solve_bytes), "peak_bytes": int(need)}

    def _mixed_memory_estimate(self, shape) -> dict:
        """Mixed families: local Grams, the global Gram, the cross sums (D, Q) and, per sigma,
        their smoothed copies and the eigenbasis (solver.schur_solve); never D x D x D."""
        transform, groups, feats = self._structure(shape)
        D = transform.layout.size
        local = sum((1 if self.shared else g.n) * f.F * f.F * 8 for g, f in zip(groups, feats) if not g.is_global)
        largest = max(f.F * f.F * g.m * 8 * 2 for g, f in zip(groups, feats) if not g.is_global)
        Q = 0
        if self._global_mixed:
            Q = self._cross_plan(shape).Q
        sums = D * Q * 8  # the cross sums; the smoothed copies per sigma have the same size
        ext = D * (1 + D + Q) * 8  # the centred cross moments and their eigenbasis copy, kept after the fit
        glob = (D + 1) ** 2 * 8
        # fit: sums + one batch of distinct monomials; solve: sums, the two kept copies, one
        # smoothed copy at a time, the eigenbasis and D x D work (V, R, theta, the covariance),
        # the largest local noisy Gram and the chunks (method: docs/method.md §8).
        fit_bytes = local + glob + sums + 2.5e8 + 4.5 * self.batch_size * D * 8
        solve_bytes = local + glob + sums + 2 * ext + sums + 8 * D * D * 8 + largest + 1e8
        need = 1.15 * max(fit_bytes, solve_bytes) + 64 * 2**20
        return {"features": max(f.F for f in feats[1:] or feats) + (D if self._global_mixed else 0),
                "groups": len(groups), "distinct_monomials": Q, "moments_bytes": int(local + sums + glob),
                "peak_bytes": int(need)}

    def _check_memory(self, shape) -> None:
        est = self.memory_estimate(shape)
        budget = memory_budget(self.max_memory)
        if est["peak_bytes"] <= budget:
            return
        fits = []
        for change in ({"shared": True}, {"degree": self.degree - 1}, {"radius": self.radius - 1}):
            params = {**self.get_params(), **change}
            if params["degree"] < 1 or params["radius"] < 0 or params == self.get_params():
                continue
            try:  # not every change is valid for every family (a gaussian term is per position)
                alt = ScoreMachine(**params)
            except WavescoreError:
                continue
            if alt.memory_estimate(shape)["peak_bytes"] <= budget:
                fits.append(alt.name)
        raise WavescoreError(
            f"{self.name} on images {shape} has {est['features']} features per coefficient and needs about "
            f"{est['peak_bytes'] / 2**30:.1f} GiB, more than the {budget / 2**30:.1f} GiB allowed; "
            + (f"these fit: {', '.join(fits)}" if fits else
               ("use a lower degree, a smaller radius or fewer terms" if self._global_mixed
                else "use shared=True, a lower degree or a smaller radius"))
        )

    # ------------------------------------------------------------------ fitting
    def fit(self, data, *, progress: bool = True) -> "ScoreMachine":
        """One pass over ``data`` ((N, C, H, W) tensor or an iterable of batches): fitting.stream_fit."""
        return stream_fit(self, data, progress=progress)

    def _max_degree(self) -> int:
        return max(int(f.exps.sum(1).max()) for f in self.moments_.features)

    def _variant(self, max_degree: int, ridge: float) -> "ScoreMachine":
        """The sub-family of features of degree <= ``max_degree`` with another ridge, sharing
        this machine's moments and caches (no refit, method.md §5)."""
        key = (int(max_degree), float(ridge))
        if key in self._variants:
            return self._variants[key]
        if self._global_mixed:
            self._mixed_cache()
        out = ScoreMachine.__new__(ScoreMachine)
        out.__dict__.update(self.__dict__)
        out.ridge, out.select, out.choice_ = float(ridge), False, None
        out._theta_cache, out._variants = OrderedDict(), {}
        if max_degree < self._max_degree():
            out.keep_ = [f.exps.sum(1) <= max_degree for f in self.moments_.features]
        self._variants[key] = out
        return out

    def _choose(self, x: torch.Tensor, progress: bool = True) -> dict:
        """Held-out denoising MSE of every (degree, ridge) candidate on the sigma grid; the
        same seeded noise for every candidate, so the comparison is paired."""
        from ._io import progress_bar

        from .fitting import noise_for

        top = self._max_degree()
        cands = [(d, r) for d in sorted({1, max(1, top - 1), top}) for r in SELECT_RIDGES]
        acc = self.moments_
        w0 = self.transform_.forward(x)
        mse = np.zeros((len(SELECT_SIGMAS), len(cands)))
        for k, s in enumerate(progress_bar(SELECT_SIGMAS, desc="select", enabled=progress, leave=False)):
            # Orthonormal transform: the wavelet-domain error is the pixel error. The features of
            # the noisy coefficients are built once per chunk and shared by every candidate.
            y = x + s * noise_for(x.shape, k, seed=20261129)
            thetas = [self._variant(*c).parameters(s) for c in cands]
            for c0 in range(0, x.shape[0], 500):
                w = self.transform_.forward(y[c0 : c0 + 500])
                u = acc.standardise(w)
                phis = [feats(u[:, torch.as_tensor(g.nbr)]) for g, feats in zip(acc.groups, acc.features)]
                for j, theta_c in enumerate(thetas):
                    score = torch.zeros_like(u)
                    for g, phi, theta in zip(acc.groups, phis, theta_c):
                        score[:, torch.as_tensor(g.out)] += _group_score(g, phi, theta)
                    mse[k, j] += float(((w + s**2 * score - w0[c0 : c0 + 500]) ** 2).sum()) / w0.numel()
            for c in cands:
                self._variant(*c)._theta_cache.clear()
        best = mse.argmin(1)
        self._variants = {}
        return {"sigmas": list(SELECT_SIGMAS), "candidates": [[d, r] for d, r in cands], "best": best.tolist(),
                "mse": mse.tolist(), "n_images": int(x.shape[0]),
                "chosen": [f"P<={cands[b][0]}, ridge {cands[b][1]:g}" for b in best]}

    def new_accumulator(self, reference: torch.Tensor) -> MomentAccumulator:
        """An empty accumulator for images like ``reference``, standardised by its band statistics.

        Shards of a distributed fit must all start from the same reference batch."""
        check_images(reference)
        shape = tuple(int(s) for s in reference.shape[1:])
        self._check_memory(shape)
        self.shape_ = shape
        self.transform_ = self._structure(shape)[0]
        # Standardisation on the CPU (the same constants whatever the device, so shards agree);
        # the sums then live on ``self.device`` (MomentAccumulator.update follows the data).
        shift, scale = band_standardisation(self.transform_.layout,
                                            self.transform_.forward(reference.detach().cpu().to(torch.float64)))
        return self._accumulator(shape, shift.to(self.device), scale.to(self.device))

    # ------------------------------------------------------------------ sums (the map-reduce protocol)
    # Every machine class offers these five, so a distributed fit (distributed.py) never asks
    # which class it has: begin on a reference batch, ship ``shard_state`` to the workers, each
    # worker's ``for_shard`` machine returns ``shard_sums``, ``merge_sums`` adds them exactly and
    # ``set_sums`` solves.
    def begin(self, reference: torch.Tensor) -> MomentAccumulator:
        """Empty sums with the structure and standardisation fixed by ``reference``."""
        return self.new_accumulator(reference)

    def empty_sums(self, sums: MomentAccumulator) -> MomentAccumulator:
        return sums.empty_like()

    def coefficients(self, batch: torch.Tensor) -> torch.Tensor:
        return self.transform_.forward(batch.to(device=self.device, dtype=torch.float64))

    @staticmethod
    def update_sums(sums: MomentAccumulator, w: torch.Tensor) -> None:
        sums.update(w)

    @staticmethod
    def sums_count(sums: MomentAccumulator) -> int:
        return sums.count

    def choose(self, sums: MomentAccumulator, x: torch.Tensor, w: torch.Tensor, *, progress: bool = True) -> dict:
        """The held-out choice on images ``x`` (their coefficients ``w``), with ``sums`` fitted on the rest."""
        self.set_moments(sums)
        return self._choose(x, progress=progress)

    def shard_state(self, sums: MomentAccumulator) -> dict:
        """What a worker needs besides the parameters: the shape and the shared standardisation."""
        return {"shape": self.shape_, "shift": sums.shift.cpu(), "scale": sums.scale.cpu()}

    @classmethod
    def for_shard(cls, params: dict, state: dict) -> "ScoreMachine":
        m = cls(**params)
        m.shape_ = tuple(state["shape"])
        m.transform_ = m._structure(m.shape_)[0]
        m._shard_state = state
        return m

    def shard_sums(self, batches) -> MomentAccumulator:
        """One shard's moment sums (a worker's task; distributed.py checks the shard's shape)."""
        st = self._shard_state
        return self.add_batches(self._accumulator(self.shape_, st["shift"].to(self.device),
                                                  st["scale"].to(self.device)), batches)

    @staticmethod
    def merge_sums(a: MomentAccumulator, b: MomentAccumulator) -> MomentAccumulator:
        """Moments are sums (method.md §5): two shards' add exactly."""
        return a.merge(b)

    def set_sums(self, sums: MomentAccumulator, choice: dict | None = None) -> "ScoreMachine":
        """Adopt accumulated (e.g. merged) sums and the held-out choice: the machine is then fitted."""
        self.set_moments(sums)
        self.choice_ = choice
        return self

    def set_moments(self, acc: MomentAccumulator) -> "ScoreMachine":
        """Adopt accumulated moments (e.g. merged shards): the machine is then fitted."""
        self.moments_ = acc
        self.n_samples_ = acc.count
        self._clean = []
        for k, (g, feats) in enumerate(zip(acc.groups, acc.features)):
            gram = acc.clean_gram(k)
            if feats.degree == 1:
                self._clean.append(gram)
            else:
                split = torch.as_tensor(noise_plan(feats).split)
                self._clean.append(gram[:, split[:, 0], split[:, 1]])
        self._theta_cache: OrderedDict = OrderedDict()
        self._eig = None
        self._mix = None
        self._variants: dict = {}
        self.keep_ = None
        self.choice_ = None
        return self

    def _require_fitted(self) -> None:
        if not hasattr(self, "moments_"):
            raise WavescoreError("this ScoreMachine is not fitted yet: call fit(data) or ScoreMachine.load(path)")

    # ------------------------------------------------------------------ closed form
    def parameters(self, sigma: float) -> list[torch.Tensor]:
        """theta*(sigma) per group (method.md §4): (rows, F), or (F, D) for the global family."""
        self._require_fitted()
        sigma = float(sigma)
        if not sigma > 0 or not np.isfinite(sigma):
            raise WavescoreError(f"sigma must be a positive finite number, got {sigma}")
        if getattr(self, "choice_", None) and self.keep_ is None:
            ch = self.choice_
            j = int(np.argmin(np.abs(np.log(np.asarray(ch["sigmas"])) - np.log(sigma))))
            d, r = ch["candidates"][ch["best"][j]]
            return self._variant(d, r).parameters(sigma)
        if sigma in self._theta_cache:
            self._theta_cache.move_to_end(sigma)
            return self._theta_cache[sigma]
        acc = self.moments_
        if self._global_mixed:
            thetas = self._mixed_theta(sigma)
            self._theta_cache[sigma] = thetas
            if len(self._theta_cache) > 64:
                self._theta_cache.popitem(last=False)
            return thetas
        thetas = []
        for g, feats, clean in zip(acc.groups, acc.features, self._clean):
            cols = torch.as_tensor(g.nbr[0])
            t = sigma / acc.scale[cols]
            plan = None if feats.degree == 1 else noise_plan(feats)
            keep = None if self.keep_ is None else self.keep_[len(thetas)]
            if g.is_global:  # global linear: every output shares the neighbourhood
                if keep is not None:
                    raise WavescoreError("feature restrictions apply to neighbourhood families, not 'gaussian'")
                thetas.append(self._global_linear_theta(clean[0], sigma))
            else:
                G, b = normal_equations(clean, feats, plan, t, acc.scale[cols[0]])
                # The ridge is relative to the noise-free second moments (solver.ridge_solve).
                if plan is None:
                    c_diag = clean.diagonal(dim1=-2, dim2=-1)
                else:
                    c_diag = clean[:, torch.as_tensor(np.diagonal(plan.pair_index).copy(), device=clean.device)]
                if keep is None:
                    thetas.append(ridge_solve(G, b, self.ridge, c_diag))
                else:
                    # A sub-family's moments are a sub-block of the full Gram: one smaller solve.
                    idx = torch.as_tensor(np.nonzero(keep)[0])
                    theta = G.new_zeros(b.shape)
                    theta[:, idx] = ridge_solve(G[:, idx][:, :, idx], b[:, idx], self.ridge, c_diag[:, idx])
                    thetas.append(theta)
        self._theta_cache[sigma] = thetas
        if len(self._theta_cache) > 256:
            self._theta_cache.popitem(last=False)
        return thetas

    def clear_cache(self) -> "ScoreMachine":
        """Forget the solved parameters: the next ``parameters(sigma)`` solves afresh (timing)."""
        self._require_fitted()
        self._theta_cache.clear()
        return self

    def noisy_system(self, sigma: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per group of a family without a global linear term, the noisy Gram G (rows, F, F) and
        Stein vector b (rows, F) at ``sigma`` (method.md §4-5): the objective is
        ``theta^T G theta + 2 theta^T b + const``."""
        self._require_fitted()
        if self._global_mixed:
            raise WavescoreError("noisy_system is per group: a family with a gaussian term is solved by block elimination")
        acc = self.moments_
        out = []
        for g, feats, clean in zip(acc.groups, acc.features, self._clean):
            cols = torch.as_tensor(g.nbr[0])
            plan = None if feats.degree == 1 else noise_plan(feats)
            out.append(normal_equations(clean, feats, plan, float(sigma) / acc.scale[cols], acc.scale[cols[0]]))
        return out

    # ------------------------------------------------------------------ sub-families
    def feature_roles(self) -> list[list[str]]:
        """Per group, the role of each neighbourhood variable: "own", "orientation" (same
        position, other orientation), "neighbour" (same level, other position) or "parent"
        (coarser level, or the approximation covering the coarsest details)."""
        self._require_fitted()
        lay = self.transform_.layout
        roles = []
        for g in self.moments_.groups:
            i, row = g.out[0], g.nbr[0]
            r = []
            for l, j in enumerate(row):
                if l == 0:
                    r.append("own")
                elif lay.level[j] != lay.level[i] or (lay.orient[j] == 0) != (lay.orient[i] == 0):
                    r.append("parent")
                elif lay.row[j] == lay.row[i] and lay.col[j] == lay.col[i]:
                    r.append("orientation")
                else:
                    r.append("neighbour")
            roles.append(r)
        return roles

    def restrict(self, keep) -> "ScoreMachine":
        """A machine using only the features ``keep(exps, roles)`` marks (exps (F, m) monomial
        exponents, roles per variable). It shares this machine's moments: no refit, one
        smaller closed-form solve per sigma (method.md §5: sub-family moments are sub-blocks)."""
        self._require_fitted()
        out = ScoreMachine(**self.get_params())
        out.shape_, out.transform_ = self.shape_, self.transform_
        out.set_moments(self.moments_)
        masks = []
        for feats, roles in zip(self.moments_.features, self.feature_roles()):
            mask = np.asarray(keep(feats.exps, roles), dtype=bool)
            if mask.shape != (feats.F,):
                raise WavescoreError(f"keep must return one boolean per feature ({feats.F}), got shape {mask.shape}")
            mask[0] = True  # the constant always stays
            masks.append(mask)
        out.keep_ = masks
        return out

    def _global_linear_theta(self, clean: torch.Tensor, sigma: float) -> torch.Tensor:
        """Gaussian score -(Sigma + s^2 I)^{-1}(w - mu) (method.md §5, P=1 gaussian) as theta (F, D).

        One eigendecomposition of the clean covariance serves every sigma, so a sampler's
        steps cost a matrix product each instead of a (D+1)-sized solve.
        """
        acc = self.moments_
        if getattr(self, "_eig", None) is None:
            m = clean[0, 1:]
            cov_u = clean[1:, 1:] - torch.outer(m, m)
            cov_w = acc.scale[:, None] * cov_u * acc.scale[None, :]
            lam, vec = torch.linalg.eigh(cov_w)
            self._eig = (lam.clamp_min(0), vec, acc.shift + acc.scale * m)
        lam, vec, mu_w = self._eig
        inv = gaussian_inverse(lam, sigma, self.ridge)
        a = (vec * inv) @ vec.T  # (Sigma + s^2 I)^{-1}
        # c = -A (w - mu) with w = shift + scale * u, written over the features [1, u].
        theta = torch.empty(a.shape[0] + 1, a.shape[0], dtype=a.dtype, device=a.device)
        theta[0] = -(a @ (acc.shift - mu_w))
        theta[1:] = -(acc.scale[:, None] * a)
        return theta

    def _mixed_cache(self):
        """Once per fit: the covariance eigenbasis and the centred cross moments of every
        coefficient with [1, u, m_q], also rotated into the eigenbasis (w units)."""
        if self._mix is None:
            acc = self.moments_
            scale, shift = acc.scale, acc.shift
            clean0 = self._clean[0][0]
            ubar, euu = clean0[0, 1:], clean0[1:, 1:]
            cov_u = euu - torch.outer(ubar, ubar)
            lam, V = torch.linalg.eigh(scale[:, None] * cov_u * scale[None, :])
            # Built transposed in place (rows = [1, u, m_q]): the per-sigma sparse products read
            # contiguous rows, and no D x (D + Q) temporary beyond the two kept copies is made.
            D, Q = cov_u.shape[0], acc.cross_sum.shape[1]
            XcT = cov_u.new_empty(1 + D + Q, D)
            XcT[0] = 0.0
            XcT[1 : 1 + D] = cov_u
            XcT[1 + D :] = acc.cross_sum.T
            XcT[1 + D :] /= acc.count
            XcT[1 + D :].addr_(acc.mono_sum / acc.count, ubar, alpha=-1.0)
            self._mix = (lam.clamp_min(0), V, shift + scale * ubar, XcT, XcT @ (scale[:, None] * V))
        return self._mix

    def _mixed_theta(self, sigma: float, extra=None) -> list[torch.Tensor]:
        """Global linear plus local higher-order terms, jointly optimal (docs/method.md §8) by
        block elimination through the covariance eigenbasis (solver.schur_solve).

        Group 0's theta (D+1, D) holds the linear part of every output; each local group's
        theta holds its psi coefficients (degree >= 2) and the constant that centres them.

        ``extra`` joins further features of every output into the same solve (method.md §10):
        ``extra.block(k, rows, out, psi, e_psi)`` gives, for rows ``rows`` (outputs ``out``) of
        local group k, their
        rotated cross moments with the global terms (rows, E, D), their covariance with the
        psi features (rows, F, E), their own covariance (rows, E, E) and Stein vector (rows, E);
        ``extra.keep(out, beta)`` receives their coefficients.
        """
        acc = self.moments_
        D = acc.shift.shape[0]
        scale, shift = acc.scale, acc.shift
        lam, V, mu_w, XcT, YT = self._mixed_cache()
        t_all = sigma / scale
        smooth = acc.cross.smoothing(t_all).t().coalesce()
        KuT = torch.sparse.mm(smooth, XcT)  # (Q, D): E[(u_j - ubar_j) E_z m_q(u + t z)], clean part
        inv = gaussian_inverse(lam, sigma, self.ridge)
        R = torch.zeros(D, D, dtype=torch.float64, device=V.device)
        thetas: list = [None]
        blocks = []
        for k, (g, feats, clean) in enumerate(zip(acc.groups[1:], acc.features[1:], self._clean[1:])):
            cols = torch.as_tensor(g.nbr[0])
            G, b = normal_equations(clean, feats, noise_plan(feats), t_all[cols], scale[cols[0]])
            deg = feats.exps.sum(1)
            keep = np.ones(feats.F, dtype=bool) if self.keep_ is None else self.keep_[k + 1]
            psi = torch.as_tensor(np.nonzero((deg >= 2) & keep)[0])
            theta = G.new_zeros(g.n, feats.F)
            thetas.append(theta)
            if len(psi) == 0 and extra is None:
                continue
            lin = torch.as_tensor([int(np.nonzero((feats.exps == np.eye(1, feats.m, l, dtype=np.int64)).all(1))[0][0])
                                   for l in range(feats.m)])
            q = torch.as_tensor(acc.cross.feature_q[k])[:, psi]
            nbr = torch.as_tensor(g.nbr)
            e_psi = G[:, 0, psi]
            c_psi = G[:, psi][:, :, psi] - e_psi[:, :, None] * e_psi[:, None, :]
            sc = scale[nbr][..., None]
            # Window rows: the true noisy cross moments (they gain the Stein term t^2 E[d psi / d u_j]).
            k_true = sc * (G[:, lin][:, :, psi] - G[:, 0, lin][:, :, None] * e_psi[:, None, :])
            delta = k_true - sc * KuT[q[:, None, :], nbr[:, :, None]]
            blocks.append((k + 1, g, theta, psi, q, nbr, e_psi, c_psi, b[:, psi], delta))
        del KuT  # only its window entries were needed: free it before the eigenbasis copy
        YqT = torch.sparse.mm(smooth, YT)  # (Q, D): the smoothed cross moments in the eigenbasis, w units
        for k, g, theta, psi, q, nbr, e_psi, c_psi, b_psi, delta in blocks:
            # ~16 MB blocks: large enough for the batched products, small enough that the
            # allocator reuses them instead of mapping fresh pages every chunk.
            chunk = max(1, int(1.6e7 // (8 * D * max(1, len(psi)))))
            F = len(psi)
            for s in range(0, g.n, chunk):
                rows = slice(s, s + chunk)
                out = torch.as_tensor(g.out[rows])
                KT = YqT[q[rows]] + delta[rows].transpose(1, 2) @ V[nbr[rows]]  # (rows, F, D)
                c, b_all = c_psi[rows], b_psi[rows]
                if extra is not None:  # the joined features: a bordered system, one solve
                    KT_e, cross, c_e, b_e = extra.block(k, rows, out, psi, e_psi[rows])
                    KT = torch.cat([KT, KT_e], 1)
                    c = torch.cat([torch.cat([c, cross], 2), torch.cat([cross.transpose(1, 2), c_e], 2)], 1)
                    b_all = torch.cat([b_all, b_e], 1)
                beta, zb = schur_solve(KT, c, b_all, V[out], inv, self.ridge)
                R[:, out] = zb.T
                if extra is not None:
                    extra.keep(out, beta[:, F:])
                    beta = beta[:, :F]
                theta[rows, psi] = beta
                theta[rows, 0] = -(beta * e_psi[rows]).sum(1)
        del YqT
        a_cols = -(V * inv) @ (V.T + R)  # column i: a_i = -C^{-1}(e_i + K_i beta_i)
        theta0 = torch.empty(D + 1, D, dtype=torch.float64, device=V.device)
        theta0[0] = (shift - mu_w) @ a_cols
        theta0[1:] = scale[:, None] * a_cols
        thetas[0] = theta0
        return thetas

    def wavelet_score(self, w: torch.Tensor, sigma: float) -> torch.Tensor:
        """Score in the wavelet domain: (N, D) noisy coefficients -> (N, D), float64."""
        return self.score_with(w, self.parameters(sigma))

    def score_with(self, w: torch.Tensor, thetas) -> torch.Tensor:
        """Wavelet-domain score theta . phi(w) of every output for given parameters ``thetas``
        (one per group, as ``parameters`` returns them: e.g. interpolated between sigmas)."""
        acc = self.moments_
        u = acc.standardise(w)
        out = torch.zeros_like(u)
        for g, feats, theta in zip(acc.groups, acc.features, thetas):
            nbr = torch.as_tensor(g.nbr)
            # ~100 MB of features per chunk: (rows, m) gathered inputs and (rows, F) monomials per image
            step = max(1, int(1e8 // (nbr.shape[0] * (nbr.shape[1] + feats.F) * 8)))
            for s in range(0, u.shape[0], step):
                phi = feats(u[s : s + step][:, nbr])
                # += : in a mixed family the global and the local terms add up per output.
                out[s : s + step, torch.as_tensor(g.out)] += _group_score(g, phi, theta)
        return out

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """grad_x log p_sigma(x) for images x (N, C, H, W); sigma a float or an (N,) tensor."""
        self._require_fitted()
        self._place()  # computed on self.device, returned on x's device
        return score_images(self, x, sigma, self.device).to(x.dtype)

    def to(self, device) -> "ScoreMachine":
        """Compute on ``device`` from now on ("cpu", "cuda", "cuda:1"); fitted moments move there.

        Returns self. Scores and denoised images come back on the device of their input."""
        self.device = str(device)
        if hasattr(self, "moments_"):
            self._place()
        return self

    def _place(self) -> None:
        """Move the fitted moments and derived state to ``self.device`` if they are elsewhere."""
        dev = torch.empty(0, device=self.device).device  # "cuda" -> "cuda:0"
        acc = self.moments_
        if acc.shift.device == dev:
            return
        for key, val in list(vars(acc).items()):
            if isinstance(val, torch.Tensor):
                setattr(acc, key, val.to(dev))
            elif isinstance(val, list) and val and all(isinstance(t, torch.Tensor) for t in val):
                setattr(acc, key, [t.to(dev) for t in val])
        self._clean = [c.to(dev) for c in self._clean]
        self._theta_cache = OrderedDict()  # solved on the old device: solve again
        self._eig = None
        for key in ("_mix", "_variants"):
            if hasattr(self, key):
                setattr(self, key, None if key == "_mix" else {})

    # ------------------------------------------------------------------ persistence
    def _archive(self) -> tuple[dict, dict]:
        """The header and arrays of the machine file: the configuration and clean moments (everything needed for any sigma)."""
        self._require_fitted()
        acc = self.moments_
        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "params": self.get_params(),
            "shape": list(self.shape_),
            "count": acc.count,
            "groups": len(acc.grams),
            "fit_time": getattr(self, "fit_time_", None),
            "choice": getattr(self, "choice_", None),
        }
        arrays = {k: v.numpy() for k, v in acc.state_dict().items() if k != "count"}  # the count is in the header
        return header, arrays

    @classmethod
    def _from_archive(cls, path: Path, header: dict, arrays: dict, hint: str) -> "ScoreMachine":
        params = dict(header["params"])
        params["device"] = checks.load_device(params.get("device", "cpu"))  # fitted on a GPU, loaded without one
        machine = cls._from_params(path, params, hint)
        shape = tuple(int(v) for v in header["shape"])
        machine.shape_ = shape
        machine.transform_, groups, _ = machine._structure(shape)
        if int(header["groups"]) != len(groups):
            raise WavescoreError(f"{path} does not match its own configuration ({header['groups']} moment groups): {hint}")
        try:
            D = machine.transform_.layout.size  # placeholders of the right shape; the file's values replace them
            acc = machine._accumulator(shape, torch.zeros(D, dtype=torch.float64), torch.ones(D, dtype=torch.float64))
            if "cross_sum" in arrays and not hasattr(acc, "cross_sum"):
                raise WavescoreError("cross moments for a family without a global linear term")
            acc.load_state_dict({**arrays, "count": int(header["count"])})
        except KeyError as exc:
            raise WavescoreError(f"{path} is corrupt or truncated (missing {exc}): {hint}") from None
        except WavescoreError as exc:
            raise WavescoreError(f"{path} does not match its own configuration ({exc}): {hint}") from None
        machine.set_moments(acc)
        machine.fit_time_ = header.get("fit_time")
        ch = header.get("choice")
        if ch is not None and not (
                isinstance(ch, dict) and all(k in ch for k in ("sigmas", "candidates", "best"))
                and len(ch["best"]) == len(ch["sigmas"]) > 0
                and all(isinstance(b, int) and 0 <= b < len(ch["candidates"]) for b in ch["best"])):
            raise WavescoreError(f"{path} holds a malformed held-out choice: {hint}")
        machine.choice_ = ch
        return machine
