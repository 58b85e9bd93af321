"""Polynomial features phi_i(w): all monomials of total degree <= P over a neighbourhood.

method.md §3. A feature set is a matrix of exponents (F, m), constant first, closed under
lowering any exponent (downward closed), which is what makes every moment the solver
needs an entry of the clean feature Gram (method.md §5).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import comb

import numpy as np
import torch

from ._io import WavescoreError


def n_features(m: int, degree: int) -> int:
    """binomial(m + P, P): the number of monomials of degree <= P in m variables."""
    return comb(m + degree, degree)


@dataclass(frozen=True)
class Monomials:
    """Exponents (F, m) in degree order, with a recipe to evaluate them by one product each:
    ``phi[f] = phi[parent[f]] * u[var[f]]`` (feature 0 is the constant 1)."""

    exps: np.ndarray
    parent: np.ndarray
    var: np.ndarray

    @property
    def F(self) -> int:
        return self.exps.shape[0]

    @property
    def m(self) -> int:
        return self.exps.shape[1]

    @property
    def degree(self) -> int:
        return int(self.exps.sum(1).max())

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        """u (..., m) -> phi (..., F)."""
        out = u.new_empty(*u.shape[:-1], self.F)
        out[..., 0] = 1.0
        parent = torch.as_tensor(self.parent, device=u.device)
        var = torch.as_tensor(self.var, device=u.device)
        deg = self.exps.sum(1)
        for d in range(1, self.degree + 1):
            sel = np.nonzero(deg == d)[0]
            lo, hi = int(sel[0]), int(sel[-1]) + 1  # degree blocks are contiguous
            out[..., lo:hi] = out[..., parent[lo:hi]] * u[..., var[lo:hi]]
        return out


def monomial_set(exps) -> Monomials:
    """The smallest downward-closed set of monomials containing ``exps`` (k, m), constant
    first, in degree order: a mixed-degree feature set (e.g. degree 3 over some variables,
    degree 1 over others) that the noise plan and Stein vector handle like a full one."""
    exps = np.asarray(exps, dtype=np.int64)
    if exps.ndim != 2 or exps.shape[1] < 1 or (exps < 0).any():
        raise WavescoreError(f"monomial exponents must be a non-negative (k, m) array, got shape {exps.shape}")
    m = exps.shape[1]
    closed = {tuple(e) for e in exps} | {(0,) * m}
    frontier = list(closed)
    while frontier:
        e = frontier.pop()
        for l in np.nonzero(e)[0]:
            f = list(e)
            f[l] -= 1
            f = tuple(f)
            if f not in closed:
                closed.add(f)
                frontier.append(f)
    ordered = sorted(closed, key=lambda e: (sum(e), tuple(-v for v in e)))
    index = {e: k for k, e in enumerate(ordered)}
    parent, var = [0], [0]
    for e in ordered[1:]:
        last = max(l for l in range(m) if e[l] > 0)  # remove one unit of the last variable used
        f = list(e)
        f[last] -= 1
        parent.append(index[tuple(f)])
        var.append(last)
    return Monomials(np.array(ordered, dtype=np.int64).reshape(-1, m), np.asarray(parent), np.asarray(var))


@lru_cache(maxsize=64)
def monomials(m: int, degree: int) -> Monomials:
    """All monomials of total degree <= ``degree`` in ``m`` variables."""
    if degree < 0 or m < 1:
        raise WavescoreError(f"need m >= 1 variables and degree >= 0, got m={m}, degree={degree}")
    exps = [np.zeros(m, dtype=np.int64)]
    parent, var = [0], [0]
    index = {tuple(exps[0]): 0}
    prev = [0]
    for _ in range(degree):
        cur = []
        for p in prev:
            e = exps[p]
            # Multiply only by variables at or after the last one used: each monomial once.
            last = max((l for l in range(m) if e[l] > 0), default=0)
            for l in range(last, m):
                f = e.copy()
                f[l] += 1
                key = tuple(f)
                if key not in index:
                    index[key] = len(exps)
                    exps.append(f)
                    parent.append(p)
                    var.append(l)
                    cur.append(index[key])
        prev = cur
    return Monomials(np.stack(exps), np.asarray(parent), np.asarray(var))
