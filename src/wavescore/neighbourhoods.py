"""Neighbourhoods N(i): which coefficients each wavelet coefficient of the score depends on.

method.md §3 (table of families). Coefficients are grouped by (band, channel): within a
group every output has a neighbourhood of the same shape (column l of ``nbr`` lies in the
same band for every row), which is what lets a band share one parameter vector
(``shared=True``) and lets per-variable standardisation stay per band.

Channels: a neighbourhood stays inside its output's channel, except in the ``gaussian``
family, which couples every coefficient of every channel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._io import WavescoreError
from .features import monomials
from .transform import Band, Layout

FAMILIES = ("independent", "orientation", "local", "parent", "gaussian")
def _kind_all(m: int, degree: int) -> np.ndarray:
    """Every monomial of total degree <= ``degree`` over the term's m variables."""
    return monomials(m, degree).exps


def _kind_squares(m: int, degree: int) -> np.ndarray:
    """u_j^2 and u_own u_j^2 for every neighbour j (Gaussian-scale-mixture structure)."""
    rows = []
    for j in range(1, m):
        sq = np.zeros((2, m), dtype=np.int64)
        sq[:, j] = 2
        sq[1, 0] += 1
        rows.append(sq)
    return np.concatenate(rows) if rows else np.zeros((0, m), dtype=np.int64)


def _kind_own_products(m: int, degree: int) -> np.ndarray:
    """u_own u_j for every neighbour j: degree-2 interactions through the own coefficient only
    (m - 1 features where kind 'all' at degree 2 has m (m + 1) / 2). docs/architecture.md
    adds this kind as its worked example."""
    e = np.zeros((max(m - 1, 0), m), dtype=np.int64)
    e[:, 0] = 1
    e[np.arange(m - 1), np.arange(1, m)] = 1
    return e


# A term kind: (m variables, own first; degree) -> generating monomial exponents (k, m) over the
# term's neighbourhood. The set is closed downward afterwards (features.monomial_set), so a kind
# lists only its top monomials; the noise plan and the Stein vector need nothing else.
TERM_KINDS = {"all": _kind_all, "squares": _kind_squares, "own-products": _kind_own_products}


@dataclass
class Group:
    """Outputs ``out`` (n,) and their neighbourhoods ``nbr`` (n, m); ``nbr[:, 0] == out``."""

    name: str
    out: np.ndarray
    nbr: np.ndarray

    @property
    def m(self) -> int:
        return self.nbr.shape[1]

    @property
    def n(self) -> int:
        return self.out.shape[0]

    @property
    def is_global(self) -> bool:
        """One neighbourhood shared by many outputs (the gaussian family's global linear terms)."""
        return self.nbr.shape[0] == 1 and self.n > 1


def _window_offsets(band: Band, radius: int) -> list[tuple[int, int]]:
    """(2r+1)^2 offsets, reduced modulo the band size so a small band never repeats a
    coefficient; (0, 0) first."""
    seen, out = set(), []
    for dr in [0] + [d for d in range(-radius, radius + 1) if d != 0]:
        for dc in [0] + [d for d in range(-radius, radius + 1) if d != 0]:
            key = (dr % band.h, dc % band.w)
            if key not in seen:
                seen.add(key)
                out.append((dr, dc))
    out.sort(key=lambda o: (o != (0, 0)))
    return out


def build_groups(layout: Layout, family: str, radius: int = 1, bands: str = "same") -> list[Group]:
    """One :class:`Group` per (band, channel) for the named family (``gaussian``: one group)."""
    if family not in FAMILIES:
        raise WavescoreError(f"unknown family {family!r}: choose one of {', '.join(FAMILIES)}")
    if bands not in ("same", "all"):
        raise WavescoreError(f"bands must be 'same' or 'all', got {bands!r}")
    if radius < 0:
        raise WavescoreError(f"radius must be >= 0, got {radius}")
    if family == "gaussian":
        all_idx = np.arange(layout.size)
        return [Group("global", all_idx, all_idx[None, :])]
    groups = []
    for band in layout.bands:
        for c in range(layout.channels):
            rows, cols = np.meshgrid(np.arange(band.h), np.arange(band.w), indexing="ij")
            rows, cols = rows.ravel(), cols.ravel()
            out = layout.index(c, band.level, band.orient, rows, cols)
            columns = [out]
            own_and_partners = [band.orient] + [o for o in "hvd" if o != band.orient]
            if family == "orientation" and band.orient != "a":
                columns += [layout.index(c, band.level, o, rows, cols) for o in own_and_partners[1:]]
            if family in ("local", "parent"):
                window_bands = own_and_partners if (bands == "all" and band.orient != "a") else [band.orient]
                for o in window_bands:
                    for dr, dc in _window_offsets(band, radius):
                        if o == band.orient and (dr, dc) == (0, 0):
                            continue
                        columns.append(layout.index(c, band.level, o, rows + dr, cols + dc))
            if family == "parent" and band.orient != "a":
                if band.level == layout.levels:
                    # The coarsest details are covered by the approximation at the same position.
                    columns.append(layout.index(c, band.level, "a", rows, cols))
                else:
                    parent_bands = own_and_partners if bands == "all" else [band.orient]
                    for o in parent_bands:
                        columns.append(layout.index(c, band.level + 1, o, rows // 2, cols // 2))
            groups.append(Group(f"{band.name}/c{c}", np.asarray(out), np.stack(columns, axis=1)))
    return groups


@dataclass(frozen=True)
class Term:
    """One term of a mixed-degree family: a neighbourhood and the monomials taken over it.

    ``kind="all"``: every monomial of total degree <= ``degree`` over the neighbourhood.
    ``kind="squares"``: the squared magnitudes u_j^2 of the neighbours and their products
    with the own coefficient, u_own u_j^2: the variance-predicting structure of
    Gaussian-scale-mixture wavelet denoisers (the own coefficient is shrunk by an amount set
    by the local energy). A ``gaussian`` term is the global linear term (degree 1 over every
    coefficient); the machine solves it by block elimination (solver.schur_solve).
    """

    family: str
    degree: int = 1
    radius: int = 1
    bands: str = "same"
    kind: str = "all"

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise WavescoreError(f"unknown term family {self.family!r}: choose one of {', '.join(FAMILIES)}")
        if self.kind not in TERM_KINDS:
            raise WavescoreError(f"unknown term kind {self.kind!r}: choose one of {', '.join(TERM_KINDS)}")
        if self.degree not in (1, 2, 3):
            raise WavescoreError(f"a term's degree must be 1, 2 or 3, got {self.degree!r}")
        if self.family == "gaussian" and (self.degree != 1 or self.kind != "all"):
            raise WavescoreError("a gaussian term is the global linear term: degree=1, kind='all'")
        if self.kind != "all" and self.family == "independent":
            raise WavescoreError(f"a {self.kind} term needs neighbours: use family 'orientation', 'local' or 'parent'")

    @classmethod
    def parse(cls, spec) -> "Term":
        if isinstance(spec, Term):
            return spec
        if not isinstance(spec, dict):
            raise WavescoreError(f"a term is a dict like {{'family': 'local', 'degree': 3, 'radius': 1}}, got {spec!r}")
        unknown = set(spec) - {"family", "degree", "radius", "bands", "kind"}
        if unknown or "family" not in spec:
            raise WavescoreError(f"a term needs 'family' and may set degree, radius, bands, kind; got {sorted(spec)}")
        return cls(**spec)


def build_mixed_groups(layout: Layout, terms) -> tuple[bool, list[Group], list[np.ndarray]]:
    """Local groups of a mixed-degree family and, per group, the generating monomial
    exponents (k, m) over the union of the terms' neighbourhoods (to be closed downward).

    Returns ``(global_linear, groups, exps)``; ``global_linear`` is True when a gaussian
    term is present (every coefficient then also enters linearly).
    """
    terms = [Term.parse(t) for t in terms]
    if not terms:
        raise WavescoreError("a mixed family needs at least one term")
    global_linear = any(t.family == "gaussian" for t in terms)
    local = [t for t in terms if t.family != "gaussian"]
    if not local:
        raise WavescoreError("a mixed family needs a local term beside the gaussian one (or use family='gaussian')")
    per_term = [build_groups(layout, t.family, t.radius, t.bands) for t in local]
    groups, exps = [], []
    for k in range(len(per_term[0])):
        columns, key_to_col, term_cols = [], {}, []
        for gs in per_term:
            g = gs[k]
            cols = []
            for l in range(g.m):
                key = g.nbr[:, l].tobytes()
                if key not in key_to_col:
                    key_to_col[key] = len(columns)
                    columns.append(g.nbr[:, l])
                cols.append(key_to_col[key])
            term_cols.append(cols)
        m = len(columns)
        gen = [np.zeros((1, m), dtype=np.int64)]  # the constant: a band too small for neighbours keeps just it
        for t, cols in zip(local, term_cols):
            sub = TERM_KINDS[t.kind](len(cols), t.degree)
            e = np.zeros((sub.shape[0], m), dtype=np.int64)
            e[:, cols] = sub
            gen.append(e)
        groups.append(Group(per_term[0][k].name, per_term[0][k].out, np.stack(columns, axis=1)))
        exps.append(np.concatenate(gen, axis=0))
    return global_linear, groups, exps
