"""Several machines joined per sigma and per wavelet band by their held-out denoising error: the
``mixture+local-mixture`` preset (issue 15; docs/method.md §13).

Each part i is a fitted machine with its own exact denoiser D_i(y, s). In the orthonormal
wavelet basis the joined denoiser takes, per band b and noise level s, an affine combination

    D(y, s)_b = sum_i a_ib(s) D_i(y, s)_b,        sum_i a_ib(s) = 1,

which is the same combination of the parts' scores (Tweedie, method.md §1). At every grid sigma
the weights minimise the held-out squared error in closed form (method.md §13): with r_i the
band's held-out residuals D_i(y) - x and G_ij = <r_i, r_j>, the weights minimise a^T G a over
the simplex (combine="convex", the default: solved exactly by an active set), or over the affine
weights, a = G^-1 1 / (1^T G^-1 1) (combine="affine", the Bates-Granger combination), or a is the
one-hot vector of the smallest diagonal entry (combine="select": the held-out choice per sigma
and band). Between grid points the weights are interpolated linearly in log sigma;
outside the grid they are the nearest end's. So the local mixture serves the fine bands and low
noise, the global mixture the coarse bands and high noise, each where its held-out error says.

The parts are fitted on the training images less ``holdout`` of them; the weights on those
held-out images with the seeded noise of fitting.noise_for. The orthonormal basis makes the
image MSE the sum of the bands' errors, so the per-band weights minimise the image's error too.
With ``fit(..., reference=model)`` the residuals are taken against the reference's denoiser
output on the same noisy images instead of the clean ones: the weights then imitate that model.

``scheduled_local_mixture`` (preset ``scheduled-local-mixture``) joins shared local mixtures of
several radii with combine="select" and one weight per sigma: the neighbourhood grows with sigma,
as ELS's patch does (method.md §13, "Scheduled locality").

A part's configuration may name its own images with ``"data"`` (a dataset name or a .npy/.npz
file): that part is fitted on all of those images instead of the training images, e.g. a mixture
fitted on a network's own samples, whose posterior mean is that network's learned distribution's
(method.md §13, "A part fitted on other images"). ``fit(..., images={name: tensor})`` hands them
over (the core loads no files: ``experiments.part_images`` loads them with ``load_dataset``). The
weights are still chosen on the held-out training images; the part's name gets ``@`` and the
name's stem.
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from . import _checks as checks
from ._io import WavescoreError, progress_bar
from .denoiser import Denoiser, check_images, check_reference, reference_name, reference_output
from .fitting import Estimator, noise_for
from .machine import WaveletScore
from .transform import WaveletTransform

__all__ = ["JoinedMachine", "JOIN_SIGMAS", "DEFAULT_PARTS", "combination_weights", "scheduled_local_mixture"]

FORMAT = "wavescore-joined-machine"
FORMAT_VERSION = 2  # 2: a part that shares another's fit stores no arrays (shares_fit_of)

JOIN_SIGMAS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 80.0)
# The Gaussian score, the global mixture (method.md §11), the local pixel-patch mixture (§12; its
# shrinkage 1e-6 for the lowest sigmas) and the own-coefficient gates (§9), which win below sigma 0.02.
DEFAULT_PARTS = ({"family": "gaussian"}, {"family": "mixture", "components": 100},
                 {"family": "local-mixture", "components": 64, "radius": 1, "basis": "pixel", "shrinkage": 1e-6},
                 {"family": "gaussian+gates", "scales": [1.0, 2.0, 4.0], "energy_scales": [], "select": False})
COMBINE = ("convex", "affine", "select")
_NOISE_SEED = 20261130  # the held-out choices' seed (joint.py and gates.py use the same)


def shared_fits(parts) -> list[int]:
    """For each part, the index of the first part whose fitted arrays it shares (itself if none):
    the shallow copies ``JoinedMachine.fit`` makes for parts that differ only in a runtime
    setting. Sharing is identity of every fitted tensor, so a part refitted alone never counts."""
    def fitted(m):
        return {k: v for k, v in vars(m).items() if k.endswith("_") and isinstance(v, torch.Tensor)}

    first = []
    for i, m in enumerate(parts):
        mine = fitted(m)
        first.append(next((j for j in range(i) if first[j] == j and type(parts[j]) is type(m) and mine
                           and fitted(parts[j]).keys() == mine.keys()
                           and all(fitted(parts[j])[k] is v for k, v in mine.items())), i))
    return first


def _simplex_qp(G: np.ndarray) -> np.ndarray:
    """argmin a^T G a over the simplex for one positive definite G (P, P), exactly, by the
    Lawson-Hanson active set on the equivalent u = argmin_{u >= 0} u^T G u - 2 1^T u, a = u / sum u
    (their KKT conditions coincide: G u = 1 + nu/2 is G a = lambda 1 + mu with a = u / sum u)."""
    P = G.shape[0]
    tol = 1e-13 * P
    u, free = np.zeros(P), np.zeros(P, dtype=bool)
    for _ in range(10 * P + 10):  # each outer step frees one index; the inner steps only bind
        grad = 1.0 - G @ u  # minus half the gradient: a bound index with grad > 0 lowers the objective
        grad[free] = -np.inf
        j = int(grad.argmax())
        if grad[j] <= tol:
            break
        free[j] = True
        while True:
            z = np.zeros(P)
            z[free] = np.linalg.solve(G[np.ix_(free, free)], np.ones(int(free.sum())))
            bad = free & (z <= 0)
            if not bad.any():
                u = z
                break
            step = np.min(u[bad] / (u[bad] - z[bad]))  # back along u -> z to the first bound hit
            u = u + step * (z - u)
            free &= u > tol
            u[~free] = 0.0
    if not u.sum() > 0:  # only if a free index's own solve was <= 0 in rounding: the best vertex
        return np.eye(P)[int(np.diag(G).argmin())]
    return u / u.sum()


def combination_weights(G: torch.Tensor, combine: str = "convex", ridge: float = 1e-9) -> torch.Tensor:
    """Weights (..., P) summing to 1 that minimise a^T G a for residual Gram matrices G (..., P, P)
    (method.md §13), with ``ridge`` x (mean diag G) on the diagonal so parts whose residuals
    coincide share the weight. "affine": G^-1 1 / 1^T G^-1 1; "convex": also a >= 0, exactly, by
    an active-set solve of the simplex QP (polynomial in P; one small solve per bound change);
    "select": one-hot at min diag G."""
    P = G.shape[-1]
    if combine == "select":
        return torch.nn.functional.one_hot(torch.diagonal(G, dim1=-2, dim2=-1).argmin(-1), P).to(G.dtype)
    scale = torch.diagonal(G, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-300)[..., None, None]
    Gr = G / scale + ridge * torch.eye(P, dtype=G.dtype)
    if combine == "affine":
        u = torch.linalg.solve(Gr, torch.ones(Gr.shape[:-1], dtype=G.dtype)[..., None])[..., 0]
        return u / u.sum(-1, keepdim=True)
    flat = Gr.reshape(-1, P, P).to(torch.float64).numpy()
    if not np.isfinite(flat).all():
        return torch.full(G.shape[:-1], float("nan"), dtype=G.dtype)
    a = np.stack([_simplex_qp(g) for g in flat]) if len(flat) else np.zeros((0, P))
    return torch.from_numpy(a).to(G.dtype).reshape(G.shape[:-1])


class JoinedMachine(Estimator, WaveletScore, Denoiser):
    """Machines joined per sigma and per wavelet band (module docstring).

    Parameters
    ----------
    parts : the machines to join, each a configuration dict for ``presets.make_machine``
        (``{"family": ..., **params}``); None: ``DEFAULT_PARTS``, the Gaussian score, the global
        mixture (K = 100), the local pixel-patch mixture (K = 64, radius 1) and the gated machine
        with own-coefficient gates.
    combine : "convex" (weights >= 0 summing to 1 that minimise the held-out error), "affine"
        (any signs: lower held-out error, but it extrapolates where parts nearly coincide) or
        "select" (the part with the smallest held-out error).
    per_band : one weight vector per wavelet band (True) or one per sigma for the whole image.
    holdout : the number of training images held out for the weights.
    sigmas : the grid of noise levels at which the weights are fitted.
    wavelet, levels : the orthonormal basis in which the bands are taken.
    seed : the held-out split.
    """

    _FILE = (FORMAT, (1, FORMAT_VERSION), "joined machine", "refit it with make_machine('mixture+local-mixture', ...)")

    def __init__(self, parts=None, combine: str = "convex", per_band: bool = True, holdout: int = 256,
                 sigmas=JOIN_SIGMAS, wavelet: str = "haar", levels: int | None = None, seed: int = 0, *,
                 max_memory: float | None = None):
        self._init_params(locals())

    def _validate(self) -> None:
        from .presets import PRESETS

        parts = [dict(p) for p in (DEFAULT_PARTS if self.parts is None else self.parts)]
        if not parts or any(not isinstance(p, dict) or p.get("family") not in PRESETS for p in parts):
            raise WavescoreError("parts must be a non-empty list of machine configurations, each a dict with a "
                                 f"'family' among {', '.join(PRESETS)}, e.g. {list(DEFAULT_PARTS)}")
        if any(PRESETS[p["family"]].machine == "joined" for p in parts):
            raise WavescoreError("a joined machine cannot be a part of another: list its parts instead")
        for i, p in enumerate(parts):
            if "data" in p:
                p["data"] = _check_part_data(p["data"], i)
        self.parts = parts
        if self.combine not in COMBINE:
            raise WavescoreError(f"combine must be one of {', '.join(COMBINE)}, got {self.combine!r}")
        if not isinstance(self.per_band, bool):
            raise WavescoreError(f"per_band must be True or False, got {self.per_band!r}")
        self.holdout = checks.whole("holdout", self.holdout, 2)
        self.seed = checks.whole("seed", self.seed, 0)
        sig = tuple(float(s) for s in self.sigmas)
        if not sig or any(not (math.isfinite(s) and s > 0) for s in sig) or list(sig) != sorted(set(sig)):
            raise WavescoreError(f"sigmas must be increasing positive numbers, got {self.sigmas!r}")
        self.sigmas = sig
        self._make_parts()  # each part validates its own configuration now, not after a long fit

    def _make_parts(self) -> list:
        from .presets import make_machine

        made = []
        for p in self.parts:
            cfg = {k: v for k, v in p.items() if k != "data"}
            if self.max_memory is not None and "max_memory" not in cfg:
                cfg["max_memory"] = self.max_memory
            made.append(make_machine(**cfg))
        return made

    @property
    def name(self) -> str:
        parts = self.parts_ if hasattr(self, "parts_") else self._make_parts()
        radii = self._scheduled_radii()
        if radii is not None:  # the scheduled local mixture: one name showing its radii
            base, r0 = parts[0].name, f"-K{parts[0].components}-r{parts[0].radius}"
            return "scheduled-" + base.replace(r0, f"-K{parts[0].components}-r{'-'.join(map(str, radii))}", 1)
        names = "+".join(self._part_names(parts))
        return f"joined({names}){'' if self.combine == 'convex' else '-' + self.combine}"

    def _part_names(self, parts=None) -> list[str]:
        """Each part's name, with ``@`` and its images' stem for a part fitted on its own ``data``."""
        parts = self.parts_ if parts is None else parts
        return [m.name + (f"@{Path(p['data']).stem}" if "data" in p else "") for p, m in zip(self.parts, parts)]

    def _scheduled_radii(self) -> list[int] | None:
        """The radii when this is a scheduled local mixture (one whole-image choice per sigma among
        local mixtures that differ only in radius), else None."""
        if self.combine != "select" or self.per_band or any(p["family"] != "local-mixture" for p in self.parts):
            return None
        rest = [{k: v for k, v in p.items() if k != "radius"} for p in self.parts]
        radii = [p.get("radius", 1) for p in self.parts]
        return radii if all(r == rest[0] for r in rest) and len(set(radii)) == len(radii) else None

    def memory_estimate(self, shape, n_images: int | None = None) -> dict:
        """The largest part's fit (they run one after another) plus the held-out residuals."""
        est = [m.memory_estimate(shape, n_images) for m in self._make_parts()]
        peak = max(e.get("total", e.get("peak_bytes", 0)) for e in est)
        D = int(np.prod([int(v) for v in shape]))
        return {"parts": est, "total": int(peak + 3 * len(self.parts) * self.holdout * D * 8), "D": D}

    # ------------------------------------------------------------------ fit
    def fit(self, data, *, progress: bool = True, reference=None, part_cache: dict | None = None,
            images: dict | None = None) -> "JoinedMachine":
        """Fit every part on the training images less ``holdout``, then the weights on those.

        ``reference``: None (default) fits the weights to the clean held-out images; a model with
        ``denoise(x, sigma)`` (a network, ELS, another machine) fits them to its denoiser output on
        the same noisy held-out images (method.md §13, "Calibration against a reference"). Only
        the weights and ``choice_["reference"]``, the reference's name, are kept.

        ``part_cache``: a dict shared by several joined fits; a part already fitted there with
        the same class, configuration, images (shape, order and first two moments) and held-out split
        is reused, not refitted (the parts of machines that differ only in their weights'
        reference or in a few parts are fitted once). The reused part is the same object. Parts that
        differ only in a runtime setting (a mixture's ``temperature``, ``batch_size``) share one fit
        with or without a cache: the second is a shallow copy with its own settings, sharing the
        first's arrays, not another fit nor another copy of them.

        ``images``: ``{name: (N, C, H, W) images}`` for every part configured with ``"data": name``
        (method.md §13, "A part fitted on other images"); ``experiments.part_images(self)`` loads them."""
        if reference is not None:
            check_reference(reference)  # before the parts' fit, not after it
        x = check_images(data, "fit", finite=True)
        shape = tuple(int(v) for v in x.shape[1:])
        own = {}  # each part's own images, checked once per name and before any part is fitted
        for i, p in enumerate(self.parts):
            if "data" in p and p["data"] not in own:
                own[p["data"]] = _part_images(images, p["data"], i, shape)
        if x.shape[0] < 2 * self.holdout:
            raise WavescoreError(f"a joined machine holds out {self.holdout} images for its weights and needs at "
                                 f"least twice as many, got {x.shape[0]}: lower holdout or fit on more images")
        t0 = time.perf_counter()
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(self.seed))
        held, train = x[order[: self.holdout]], x[order[self.holdout :]]
        parts = self._make_parts()
        data_key = (tuple(shape), x.shape[0], self.seed, self.holdout)
        if part_cache is not None:
            data_key += _fingerprint(x)
        cache = part_cache if part_cache is not None else {}
        for i, m in enumerate(progress_bar(parts, desc="fit parts", enabled=progress, leave=False)):
            params = m.get_params()
            # settings a fitted part may change (not its device: moving would touch shared arrays)
            runtime = {k: params.pop(k) for k in sorted(m._RUNTIME_PARAMS - {"device"}) if k in params}
            data = self.parts[i].get("data")
            part_key = data_key if data is None else ("data", data, *_fingerprint(own[data]))
            key = (type(m).__name__, json.dumps(params, sort_keys=True, default=str), part_key)
            if key in cache:
                base = cache[key]
                same = all(getattr(base, k) == v for k, v in runtime.items())
                parts[i] = base if same else copy.copy(base).set_params(**runtime)
                continue
            m.fit(train if data is None else own[data], progress=progress)
            cache[key] = m
        self.shape_ = shape
        self.transform_ = WaveletTransform(shape, self.wavelet, self.levels)
        self.parts_ = parts
        self.choice_ = self._choose(held, progress, reference)
        self.n_samples_ = int(x.shape[0])
        self.fit_time_ = time.perf_counter() - t0
        return self

    def _band_index(self) -> torch.Tensor:
        """(D,) the band of every coefficient (per_band) or zeros."""
        idx = torch.zeros(self.transform_.layout.size, dtype=torch.long)
        if self.per_band:
            for b, band in enumerate(self.transform_.layout.bands):
                idx[band.start : band.stop] = b
        return idx

    def _choose(self, held: torch.Tensor, progress: bool, reference=None) -> dict:
        """Per grid sigma: the parts' held-out residual Gram matrices per band, the weights
        (method.md §13) and the held-out MSE of every part and of the combination, all against
        the clean images, or against ``reference``'s output on the same noisy images."""
        x = held.to(torch.float64)
        w = self.transform_.forward(x)
        band = self._band_index()
        B, P = int(band.max()) + 1, len(self.parts_)
        weights = np.zeros((len(self.sigmas), P, B))
        mse = np.zeros((len(self.sigmas), P + 1))
        other = {c: np.zeros(len(self.sigmas)) for c in COMBINE}
        for k, s in enumerate(progress_bar(self.sigmas, desc="join weights", enabled=progress, leave=False)):
            y = x + s * noise_for(x.shape, k, seed=_NOISE_SEED)
            # the target: the clean coefficients, or the reference's denoised ones (method.md §13)
            target = w if reference is None else self.transform_.forward(reference_output(reference, y, s))
            res = torch.stack([self.transform_.forward(m.denoise(y, s).to(torch.float64)) - target
                               for m in self.parts_])
            per_coef = torch.einsum("pnd,qnd->dpq", res, res)  # (D, P, P), not the (P, P, n, D) products
            G = torch.zeros(B, P, P, dtype=torch.float64).index_add_(0, band, per_coef)
            by_rule = {c: combination_weights(G, c) for c in COMBINE}  # every rule, from the same Gram matrices
            for c, wc in by_rule.items():
                other[c][k] = float(torch.einsum("bi,bij,bj->", wc, G, wc)) / res[0].numel()
            a = by_rule[self.combine]  # (B, P)
            if not torch.isfinite(a).all():
                raise WavescoreError(f"the joined machine's weights at sigma {s} are not finite: the parts' held-out "
                                     "residuals are degenerate; hold out more images")
            weights[k] = a.T.numpy()
            joined = (a.T[:, band][:, None] * res).sum(0)
            mse[k, :P] = (res**2).mean((1, 2)).numpy()
            mse[k, P] = float((joined**2).mean())
        return {"sigmas": list(self.sigmas), "parts": self._part_names(), "weights": weights.tolist(),
                "mse": mse.tolist(), "mse_by_combine": {c: v.tolist() for c, v in other.items()},
                "n_images": int(x.shape[0]), "reference": None if reference is None else reference_name(reference),
                "bands": [b.name for b in self.transform_.layout.bands] if self.per_band else ["all"]}

    # ------------------------------------------------------------------ score
    def _require_fitted(self) -> None:
        if not hasattr(self, "choice_"):
            raise WavescoreError("this JoinedMachine is not fitted yet: call fit(data) or JoinedMachine.load(path)")

    def weights_at(self, sigma: float) -> torch.Tensor:
        """(P, D) the parts' weight of every coefficient at ``sigma``: the grid's, interpolated
        linearly in log sigma, the nearest end's outside the grid."""
        self._require_fitted()
        A = torch.tensor(self.choice_["weights"], dtype=torch.float64)  # (S, P, B)
        t = float(np.interp(math.log(sigma), np.log(self.sigmas), np.arange(len(self.sigmas))))
        k = min(int(t), len(self.sigmas) - 2) if len(self.sigmas) > 1 else 0
        f = t - k
        a = A[k] if len(self.sigmas) == 1 else (1 - f) * A[k] + f * A[k + 1]
        return a[:, self._band_index()]

    def schedule(self, param: str | None = None) -> dict:
        """{grid sigma: the part with the largest weight there} (per_band: the largest mean weight
        over coefficients): its index, or with ``param`` that part's configuration value, e.g.
        ``schedule("radius")`` for the scheduled local mixture. With combine="select" and
        per_band=False this is the part used at that sigma."""
        self._require_fitted()
        values = list(range(len(self.parts_)))
        if param is not None:  # the configured value, else the part's default for it (radius=1, ...)
            values = [p.get(param, getattr(m, param, None)) for p, m in zip(self.parts, self.parts_)]
            if any(v is None for v in values):
                raise WavescoreError(f"not every part has a setting {param!r}: call schedule() for part indices")
        return {s: values[int(self.weights_at(s).mean(1).argmax())] for s in self.sigmas}

    def wavelet_score(self, w: torch.Tensor, sigma: float) -> torch.Tensor:
        """sum_i a_i(sigma) score_i(w, sigma) per coefficient (module docstring): (N, D) -> (N, D).
        Parts sharing one fit that differ only in temperature (``fit``) are evaluated together,
        one log joint for all of them (``MixtureMachine.wavelet_scores``)."""
        self._require_fitted()
        sigma = float(sigma)
        if not sigma > 0 or not math.isfinite(sigma):
            raise WavescoreError(f"sigma must be a positive finite number, got {sigma}")
        a = self.weights_at(sigma)
        x = self.transform_.inverse(w)
        out = torch.zeros_like(w)
        first = shared_fits(self.parts_)
        for j in sorted(set(first)):
            group = [i for i, f in enumerate(first) if f == j and bool((a[i] != 0).any())]
            m = self.parts_[j]
            if len(group) > 1 and hasattr(m, "wavelet_scores"):
                wp = m.transform_.forward(x)
                scores = m.wavelet_scores(wp, sigma, tuple(self.parts_[i].temperature for i in group))
                for i, sc in zip(group, scores):
                    out += a[i] * self.transform_.forward(m.transform_.inverse(sc))
                continue
            for i in group:
                out += a[i] * self.transform_.forward(self.parts_[i].score(x, sigma).to(torch.float64))
        return out

    # ------------------------------------------------------------------ persistence
    def _archive(self) -> tuple[dict, dict]:
        """Every part's own header and arrays (prefixed ``p<i>.``) and the weights."""
        self._require_fitted()
        headers, arrays = [], {}
        first = shared_fits(self.parts_)
        for i, m in enumerate(self.parts_):
            h, a = m._archive()
            if first[i] != i:  # its arrays are part first[i]'s: stored once (a K = 100 mixture is 0.8 GB)
                h = dict(h, shares_fit_of=first[i])
                a = {}
            headers.append(h)
            arrays.update({f"p{i}.{k}": v for k, v in a.items()})
        header = {"format": FORMAT, "version": FORMAT_VERSION, "params": self.get_params(), "shape": list(self.shape_),
                  "count": self.n_samples_, "choice": self.choice_, "parts": headers,
                  "fit_time": getattr(self, "fit_time_", None)}
        return header, arrays

    @classmethod
    def _from_archive(cls, path: Path, header: dict, arr: dict, hint: str) -> "JoinedMachine":
        from .presets import machine_classes

        m = cls._from_params(path, header["params"], hint)
        m.shape_ = tuple(int(v) for v in header["shape"])
        m.transform_ = WaveletTransform(m.shape_, m.wavelet, m.levels)
        classes = machine_classes()
        if len(header["parts"]) != len(m.parts):
            raise WavescoreError(f"{path} holds {len(header['parts'])} parts for {len(m.parts)} configured: {hint}")
        m.parts_ = []
        for i, h in enumerate(header["parts"]):
            part_cls = classes.get(h.get("format"))
            if part_cls is None or part_cls is cls:
                raise WavescoreError(f"{path}: part {i} has an unknown format {h.get('format')!r}: {hint}")
            j = h.get("shares_fit_of")
            if j is not None:  # a runtime variant of an earlier part (temperature): the same arrays
                base = m.parts_[j] if isinstance(j, int) and 0 <= j < i else None
                if type(base) is not part_cls:
                    raise WavescoreError(f"{path}: part {i} shares the fit of part {j!r}, which is not an earlier "
                                         f"{part_cls.__name__}: {hint}")
                runtime = {k: v for k, v in h["params"].items() if k in base._RUNTIME_PARAMS - {"device"}}
                m.parts_.append(copy.copy(base).set_params(**runtime))
                continue
            sub = {k[len(f"p{i}."):]: v for k, v in arr.items() if k.startswith(f"p{i}.")}
            m.parts_.append(part_cls._from_archive(path, h, sub, hint))
        choice = header["choice"]
        A = np.asarray(choice["weights"], dtype=np.float64)
        B = len(m.transform_.layout.bands) if m.per_band else 1
        if A.shape != (len(m.sigmas), len(m.parts), B) or not np.isfinite(A).all():
            raise WavescoreError(f"{path} holds weights of shape {A.shape}, expected "
                                 f"{(len(m.sigmas), len(m.parts), B)} finite values: {hint}")
        m.choice_, m.n_samples_, m.fit_time_ = choice, header["count"], header.get("fit_time")
        return m


def _fingerprint(x: torch.Tensor) -> tuple[float, float, float]:
    """A cheap fingerprint of images and their order (the held-out split): the part cache's key."""
    xd = x.to(torch.float64).flatten(1)
    per_image = xd.sum(1)
    return (float(per_image.sum()), float((per_image * torch.arange(1.0, len(xd) + 1)).sum()), float((xd * xd).sum()))


def _check_part_data(data, i: int) -> str:
    """A part's ``data``: the name of its images (a dataset name or a path), a non-empty string."""
    if isinstance(data, Path):
        data = str(data)
    if not isinstance(data, str) or not data:
        raise WavescoreError(f"part {i}'s data must name its images (a dataset name or a .npy/.npz file, e.g. the "
                             f".npz that `wavescore sample` writes), got {data!r}")
    return data


def _part_images(images, name: str, i: int, shape: tuple) -> torch.Tensor:
    """Part i's own training images from ``fit(..., images=)``, with the training images' shape."""
    if not isinstance(images, dict) or name not in images:
        raise WavescoreError(f"part {i} is fitted on its own images {name!r}: pass them as fit(..., images={{"
                             f"{name!r}: tensor}}), e.g. images=experiments.part_images(machine)")
    x = check_images(images[name], f"part {i}'s data {name!r}", finite=True)
    if tuple(x.shape[1:]) != tuple(shape):
        raise WavescoreError(f"part {i}'s data {name!r} holds images of shape {tuple(x.shape[1:])}, the training "
                             f"images have {tuple(shape)}: give images of the same size (pad or crop them first)")
    return x


def scheduled_local_mixture(radii=(1, 2, 3), *, holdout: int = 256, sigmas=JOIN_SIGMAS, wavelet: str = "haar",
                            levels: int | None = None, seed: int = 0, max_memory: float | None = None,
                            components: int = 64, basis: str = "pixel", **local) -> JoinedMachine:
    """Shared local mixtures (method.md §12) of each radius, joined with combine="select" and
    one weight per sigma (per_band=False): at each grid sigma the radius of least held-out error,
    so the neighbourhood grows with the noise as ELS's patch does (method.md §13, "Scheduled
    locality"). ``schedule("radius")`` reports the radius per grid sigma; ``fit(...,
    reference=model)`` chooses it against another model's denoiser instead of the clean images.
    ``local``: the other LocalMixtureMachine settings (shrinkage, em_iterations, ...), one for all
    radii. Preset ``scheduled-local-mixture``."""
    try:
        radii = [r for r in radii]
    except TypeError:
        radii = []
    if not radii or any(isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 0 for r in radii) \
            or len(set(radii)) != len(radii):
        raise WavescoreError(f"radii must be a non-empty list of distinct whole numbers >= 0, got {radii!r}: "
                             "e.g. radii=(1, 2, 3)")
    if "radius" in local or "shared" in local:
        raise WavescoreError("a scheduled local mixture sets each part's radius from radii= and shares every "
                             "mixture over positions: drop radius= and shared=")
    part = {"family": "local-mixture", "components": components, "basis": basis, "wavelet": wavelet,
            "levels": levels, "seed": seed, **local}
    parts = [{**part, "radius": int(r)} for r in sorted(radii)]
    return JoinedMachine(parts=parts, combine="select", per_band=False, holdout=holdout, sigmas=sigmas,
                         wavelet=wavelet, levels=levels, seed=seed, max_memory=max_memory)
