"""Clean moments in one streaming pass, and their exact noisy counterparts (method.md §5).

Fitting a machine is accumulating, per group of coefficients, the clean feature Gram
``E[phi(u0) phi(u0)^T]`` in float64. Sums stream over batches and merge across shards
(count-weighted), so the result of ``a.merge(b)`` equals the accumulator of the union.
For any noise level the noisy Gram and the Stein vector are then linear in these clean
moments (:class:`NoisePlan`), with no noise sampling and no further pass over the data.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from math import comb
from typing import Sequence

import numpy as np
import torch

from ._io import WavescoreError
from .features import Monomials
from .neighbourhoods import Group
from .transform import Layout


def gaussian_moment(n: int) -> int:
    """E[z^n] for z ~ N(0, 1): (n-1)!! for even n, 0 for odd n."""
    if n % 2:
        return 0
    out = 1
    for k in range(n - 1, 0, -2):
        out *= k
    return out


@dataclass(frozen=True)
class NoisePlan:
    """How the moments of ``u_t = u0 + t * z`` (per-variable noise ``t_l``) follow from
    clean moments, for one feature set (method.md §5):

        E[prod_l (u0_l + t_l z_l)^s_l] = sum_{c <= s, s-c even} prod_l binom(s_l, c_l) m(s_l - c_l) t_l^(s_l - c_l) E[u0^c]

    ``sums`` are the exponents s = a + b of every feature pair (the Gram entries), and
    ``split[k]`` a feature pair whose product is ``sums[k]`` (where a clean moment is read
    from the clean Gram). Expansion entries: ``(row, col, coef, diff)``. The Stein vector
    ``b_a = E[d phi_a / d u_own]`` uses ``deriv_*``: feature a, sum index of a - e_own, a_own.
    """

    pair_index: np.ndarray  # (F, F) -> index into sums
    sums: np.ndarray  # (S, m)
    split: np.ndarray  # (S, 2)
    row: np.ndarray
    col: np.ndarray
    coef: np.ndarray
    diff: np.ndarray  # (nnz, m)
    deriv_feature: np.ndarray
    deriv_sum: np.ndarray
    deriv_coef: np.ndarray

    def noisy(self, clean: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Clean moments (n, S) -> noisy moments (n, S) at per-variable noise std t (m,)."""
        diff = torch.as_tensor(self.diff, dtype=clean.dtype, device=clean.device)
        logt = torch.log(t.to(clean.dtype))
        factor = torch.exp(diff @ logt) if diff.shape[0] else diff.new_zeros(0)
        # t^0 must be exactly 1 even where t is 0 (log t = -inf).
        factor = torch.where(diff.sum(1) == 0, torch.ones_like(factor), factor)
        vals = torch.as_tensor(self.coef, dtype=clean.dtype, device=clean.device) * factor
        rows = torch.as_tensor(self.row, device=clean.device)
        cols = torch.as_tensor(self.col, device=clean.device)
        if clean.shape[0] * len(self.row) < 2e7:
            return torch.zeros_like(clean).index_add_(1, rows, clean[:, cols] * vals)
        size = clean.shape[1]  # large: a sparse (S, S) operator instead of an (n, nnz) gather
        k = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (size, size)).coalesce()
        return torch.sparse.mm(k, clean.T).T


@lru_cache(maxsize=64)
def _plan_cached(key: bytes, F: int, m: int) -> NoisePlan:
    exps = np.frombuffer(key, dtype=np.int64).reshape(F, m)
    return _build_plan(exps)


def noise_plan(feats: Monomials) -> NoisePlan:
    return _plan_cached(feats.exps.tobytes(), feats.F, feats.m)


def _build_plan(exps: np.ndarray) -> NoisePlan:
    F, m = exps.shape
    pair = (exps[:, None, :] + exps[None, :, :]).reshape(F * F, m)
    sums, first, inverse = np.unique(pair, axis=0, return_index=True, return_inverse=True)
    pair_index = inverse.reshape(F, F)
    split = np.stack(np.divmod(first, F), axis=1)
    lookup = {tuple(s): k for k, s in enumerate(sums)}
    rows, cols, coefs, diffs = [], [], [], []
    for k, s in enumerate(sums):
        nz = np.nonzero(s)[0]
        # every c <= s with s - c even in each variable
        choices = [range(s[l] % 2, s[l] + 1, 2) for l in nz]
        for cs in itertools.product(*choices):
            c = s.copy()
            c[nz] = cs
            d = s - c
            coef = 1
            for l in nz:
                coef *= comb(int(s[l]), int(c[l])) * gaussian_moment(int(d[l]))
            rows.append(k)
            cols.append(lookup[tuple(c)])
            coefs.append(float(coef))
            diffs.append(d)
    deriv_f = np.nonzero(exps[:, 0] > 0)[0]
    lowered = exps[deriv_f].copy()
    lowered[:, 0] -= 1
    deriv_s = np.array([lookup[tuple(e)] for e in lowered], dtype=np.int64)
    return NoisePlan(
        pair_index=pair_index,
        sums=sums,
        split=split,
        row=np.asarray(rows, dtype=np.int64),
        col=np.asarray(cols, dtype=np.int64),
        coef=np.asarray(coefs),
        diff=np.asarray(diffs, dtype=np.int64).reshape(-1, m),
        deriv_feature=deriv_f,
        deriv_sum=deriv_s,
        deriv_coef=exps[deriv_f, 0].astype(np.float64),
    )


def band_standardisation(layout: Layout, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (band, channel) mean and std of a batch of coefficients, broadcast to (D,).

    Only conditioning: polynomial features of degree <= P span the same space under any
    per-variable affine map, so the optimum does not depend on these constants. Per band
    (not per coefficient) keeps a shared parameter vector translation-equivariant.
    """
    w = w.to(torch.float64)
    shift = torch.zeros(layout.size, dtype=torch.float64)
    scale = torch.ones(layout.size, dtype=torch.float64)
    for b in layout.bands:
        for c in range(layout.channels):
            sl = b.channel_slice(c)
            block = w[:, sl]
            mu, sd = block.mean(), block.std(unbiased=False)
            shift[sl] = mu
            scale[sl] = sd if sd > 1e-8 * (1 + mu.abs()) else 1.0
    return shift, scale


class MomentAccumulator:
    """Streaming float64 sums of the clean feature Gram per group.

    ``shared=False``: one (F, F) Gram per output coefficient; ``shared=True``: one per
    group, pooled over positions. A group whose neighbourhood has one row for many outputs
    (the global Gaussian family) keeps a single Gram either way.
    """

    def __init__(self, groups: Sequence[Group], features: Sequence[Monomials], shift: torch.Tensor,
                 scale: torch.Tensor, shared: bool = False, max_batch_bytes: float = 2.5e8):
        if len(groups) != len(features):
            raise ValueError("one feature set per group")
        self.groups, self.features = list(groups), list(features)
        self.shift, self.scale = shift.to(torch.float64), scale.to(torch.float64)
        self.shared = bool(shared)
        self.max_batch_bytes = max_batch_bytes
        self.count = 0
        self.grams = [torch.zeros(self._rows(g), f.F, f.F, dtype=torch.float64) for g, f in zip(groups, features)]

    def _rows(self, g: Group) -> int:
        return 1 if (self.shared or g.nbr.shape[0] == 1) else g.n

    def standardise(self, w: torch.Tensor) -> torch.Tensor:
        return (w.to(torch.float64) - self.shift.to(w.device)) / self.scale.to(w.device)

    def update(self, w: torch.Tensor) -> "MomentAccumulator":
        """Add a batch of clean coefficients (N, D)."""
        if not torch.isfinite(w).all():
            raise WavescoreError("the data contain NaN or inf values: clean or drop those images before fitting")
        from ._gram import accumulate_group

        # One column per image, (D, N): every product below is then a (F, K) @ (K, F) GEMM
        # on the device of the data (the sums follow the data there; see _gram.py).
        ut = self.standardise(w).T.contiguous()
        workspace = ut.new_empty(int(self.max_batch_bytes // 8))  # one buffer for every chunk
        for k, (g, feats) in enumerate(zip(self.groups, self.features)):
            if self.grams[k].device != ut.device:
                self.grams[k] = self.grams[k].to(ut.device)
            accumulate_group(self.grams[k], ut, g.nbr, feats, self.max_batch_bytes, workspace)
        self.count += int(w.shape[0])
        return self

    def _check_compatible(self, other: "MomentAccumulator") -> None:
        same = (
            self.shared == other.shared
            and len(self.grams) == len(other.grams)
            and all(a.shape == b.shape for a, b in zip(self.grams, other.grams))
            and torch.equal(self.shift, other.shift)
            and torch.equal(self.scale, other.scale)
        )
        if not same:
            raise WavescoreError(
                "cannot merge moment accumulators of different machines: they must share the family, "
                "degree, image shape and standardisation (create shards with the same reference batch)"
            )

    def merge(self, other: "MomentAccumulator") -> "MomentAccumulator":
        """A new accumulator holding the moments of both datasets."""
        self._check_compatible(other)
        out = self.empty_like()
        out.count = self.count + other.count
        out.grams = [a + b for a, b in zip(self.grams, other.grams)]
        return out

    __add__ = merge

    def state_dict(self) -> dict:
        """The sums as named CPU tensors (what a machine file stores): count, standardisation, Grams."""
        out = {"count": torch.tensor(self.count), "shift": self.shift.cpu(), "scale": self.scale.cpu()}
        out.update({f"gram{k}": g.cpu() for k, g in enumerate(self.grams)})
        return out

    def load_state_dict(self, state: dict) -> "MomentAccumulator":
        """Adopt sums written by :meth:`state_dict`, checked against this accumulator's structure."""
        grams = [state[f"gram{k}"] for k in range(len(self.grams))]  # KeyError: a missing array
        if [tuple(g.shape) for g in grams] != [tuple(g.shape) for g in self.grams]:
            raise WavescoreError("moment shapes differ from the configuration's")
        if tuple(state["shift"].shape) != tuple(self.shift.shape) or tuple(state["scale"].shape) != tuple(self.scale.shape):
            raise WavescoreError(f"standardisation of {tuple(state['shift'].shape)} values for "
                                 f"{tuple(self.shift.shape)} coefficients")
        if any(not torch.isfinite(t).all() for t in [state["shift"], state["scale"], *grams]):
            raise WavescoreError("NaN or inf moments")
        self.grams, self.count = grams, int(state["count"])
        self.shift, self.scale = state["shift"].to(torch.float64), state["scale"].to(torch.float64)
        return self

    def empty_like(self) -> "MomentAccumulator":
        out = type(self).__new__(type(self))
        out.groups, out.features, out.shared = self.groups, self.features, self.shared
        out.shift, out.scale, out.max_batch_bytes = self.shift, self.scale, self.max_batch_bytes
        out.count = 0
        out.grams = [torch.zeros_like(gm) for gm in self.grams]
        return out

    def clean_gram(self, k: int) -> torch.Tensor:
        """Mean clean Gram of group k: (rows, F, F)."""
        if self.count == 0:
            raise WavescoreError("no data has been accumulated: call fit with at least one image")
        g = self.groups[k]
        pooled = self.shared and g.nbr.shape[0] > 1
        return self.grams[k] / (self.count * (g.n if pooled else 1))


@dataclass(frozen=True)
class CrossPlan:
    """Cross moments between the global linear terms and the local higher-order features
    of a mixed-degree family (docs/method.md §8: §5 applied to E[u_j psi(u)] for every j).

    Each local feature of degree >= 2 of every output is a monomial of global coefficient
    indices; windows overlap, so ``idx`` (Q, P) holds each distinct monomial once (padded
    with D, a column of ones) and ``feature_q[k]`` (n, F) maps group k's features to it (-1
    below degree 2). Smoothing: ``E_z[m_q(u + t z)] = sum coef * prod t_var^pow * m_c(u)``
    with c in the extended index [1, u_1..u_D, m_1..m_Q] (``s_*`` arrays, one entry per term).
    """

    idx: np.ndarray
    feature_q: list
    s_row: np.ndarray  # extended index c
    s_col: np.ndarray  # q
    s_coef: np.ndarray
    s_var: np.ndarray  # (nnz, slots), D where unused
    s_pow: np.ndarray  # (nnz, slots)

    @property
    def Q(self) -> int:
        return self.idx.shape[0]

    def smoothing(self, t: torch.Tensor) -> torch.Tensor:
        """Sparse (1 + D + Q, Q) matrix of E_z[m_q(u + t z)] over clean monomials, t (D,)."""
        D, dev = t.shape[0], t.device
        text = torch.cat([t.to(torch.float64), t.new_ones(1, dtype=torch.float64)])
        factor = torch.as_tensor(self.s_coef, device=dev).clone()
        for slot in range(self.s_var.shape[1]):
            factor *= text[torch.as_tensor(self.s_var[:, slot], device=dev)] ** torch.as_tensor(self.s_pow[:, slot], device=dev)
        ind = torch.as_tensor(np.stack([self.s_row, self.s_col]), device=dev)
        return torch.sparse_coo_tensor(ind, factor, (1 + D + self.Q, self.Q), check_invariants=False).coalesce()

    def evaluate(self, u: torch.Tensor) -> torch.Tensor:
        """The distinct monomials of a batch: u (N, D) -> (N, Q)."""
        ext = torch.cat([u, u.new_ones(u.shape[0], 1)], dim=1)
        out = ext[:, torch.as_tensor(self.idx[:, 0], device=u.device)]
        for p in range(1, self.idx.shape[1]):
            out = out * ext[:, torch.as_tensor(self.idx[:, p], device=u.device)]
        return out


def build_cross_plan(groups: Sequence[Group], features: Sequence[Monomials], D: int) -> CrossPlan:
    degree = max(int(f.exps.sum(1).max()) for f in features)
    keys, owners = [], []
    for g, feats in zip(groups, features):
        deg = feats.exps.sum(1)
        high = np.nonzero(deg >= 2)[0]
        # Each feature's variables with multiplicity, as global indices sorted per row.
        k = np.full((g.n, len(high), degree), D, dtype=np.int64)
        for j, f in enumerate(high):
            pos = np.repeat(np.arange(feats.m), feats.exps[f])
            k[:, j, : len(pos)] = g.nbr[:, pos]
        keys.append(np.sort(k, axis=2).reshape(-1, degree))
        owners.append((g.n, feats.F, high))
    allkeys = np.concatenate(keys, axis=0) if keys else np.zeros((0, degree), dtype=np.int64)
    idx, inverse = np.unique(allkeys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    feature_q, start = [], 0
    for n, F, high in owners:
        fq = np.full((n, F), -1, dtype=np.int64)
        fq[:, high] = inverse[start : start + n * len(high)].reshape(n, len(high))
        start += n * len(high)
        feature_q.append(fq)
    lookup = {tuple(r): q for q, r in enumerate(idx.tolist())}
    slots = max(1, degree // 2)
    rows, cols, coefs, svar, spow = [], [], [], [], []
    for q, r in enumerate(idx.tolist()):
        vars_ = [v for v in r if v < D]
        mult = {v: vars_.count(v) for v in dict.fromkeys(vars_)}
        choices = [[(v, 2 * j) for j in range(mult[v] // 2 + 1)] for v in mult]
        for pick in itertools.product(*choices):
            coef, rem, var, pw = 1.0, [], [], []
            for v, removed in pick:
                coef *= comb(mult[v], removed) * gaussian_moment(removed)
                rem += [v] * (mult[v] - removed)
                if removed:
                    var.append(v)
                    pw.append(removed)
            rem.sort()
            if len(rem) == 0:
                c = 0
            elif len(rem) == 1:
                c = 1 + rem[0]
            else:
                c = 1 + D + lookup[tuple(rem + [D] * (degree - len(rem)))]
            rows.append(c)
            cols.append(q)
            coefs.append(coef)
            svar.append(var + [D] * (slots - len(var)))
            spow.append(pw + [0] * (slots - len(pw)))
    return CrossPlan(idx=idx, feature_q=feature_q, s_row=np.asarray(rows, dtype=np.int64),
                     s_col=np.asarray(cols, dtype=np.int64), s_coef=np.asarray(coefs, dtype=np.float64),
                     s_var=np.asarray(svar, dtype=np.int64).reshape(-1, slots),
                     s_pow=np.asarray(spow, dtype=np.int64).reshape(-1, slots))


class MixedMomentAccumulator(MomentAccumulator):
    """Moments of a mixed-degree family: the global Gram of [1, u] (group 0), the local
    feature Grams, and the cross sums ``sum_n u_j m_q(u)`` (D, Q) with ``sum_n m_q(u)`` (Q,)
    that the block elimination needs (solver.schur_solve). All are sums: ``merge`` is exact."""

    def __init__(self, groups, features, shift, scale, cross: CrossPlan, shared: bool = False,
                 max_batch_bytes: float = 2.5e8):
        super().__init__(groups, features, shift, scale, shared=shared, max_batch_bytes=max_batch_bytes)
        self.cross = cross
        D = shift.shape[0]
        self.cross_sum = torch.zeros(D, cross.Q, dtype=torch.float64)
        self.mono_sum = torch.zeros(cross.Q, dtype=torch.float64)

    def update(self, w: torch.Tensor) -> "MixedMomentAccumulator":
        super().update(w)
        u = self.standardise(w)
        if self.cross_sum.device != u.device:  # the sums follow the data, like the Grams
            self.cross_sum, self.mono_sum = self.cross_sum.to(u.device), self.mono_sum.to(u.device)
        step = max(1, int(self.max_batch_bytes // (8 * max(1, self.cross.Q))))
        for s in range(0, u.shape[0], step):
            ub = u[s : s + step]
            mono = self.cross.evaluate(ub)
            self.cross_sum.addmm_(ub.T, mono)
            self.mono_sum += mono.sum(0)
        return self

    def _check_compatible(self, other) -> None:
        super()._check_compatible(other)
        if not isinstance(other, MixedMomentAccumulator) or other.cross_sum.shape != self.cross_sum.shape:
            raise WavescoreError("cannot merge moments of a mixed family with those of another family")

    def merge(self, other) -> "MixedMomentAccumulator":
        out = super().merge(other)
        out.cross_sum = self.cross_sum + other.cross_sum
        out.mono_sum = self.mono_sum + other.mono_sum
        return out

    __add__ = merge

    def state_dict(self) -> dict:
        return {**super().state_dict(), "cross_sum": self.cross_sum.cpu(), "mono_sum": self.mono_sum.cpu()}

    def load_state_dict(self, state: dict) -> "MixedMomentAccumulator":
        cross, mono = state["cross_sum"], state["mono_sum"]
        if tuple(cross.shape) != tuple(self.cross_sum.shape) or tuple(mono.shape) != tuple(self.mono_sum.shape):
            raise WavescoreError("cross-moment shapes differ from the configuration's")
        if not (torch.isfinite(cross).all() and torch.isfinite(mono).all()):
            raise WavescoreError("NaN or inf moments")
        super().load_state_dict(state)
        self.cross_sum, self.mono_sum = cross, mono
        return self

    def empty_like(self) -> "MixedMomentAccumulator":
        out = super().empty_like()
        out.cross = self.cross
        out.cross_sum = torch.zeros_like(self.cross_sum)
        out.mono_sum = torch.zeros_like(self.mono_sum)
        return out
