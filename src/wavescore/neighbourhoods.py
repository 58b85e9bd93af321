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
from .transform import Band, Layout

FAMILIES = ("independent", "orientation", "local", "parent", "gaussian")


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
