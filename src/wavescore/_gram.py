"""The hot path of fitting: adding a batch's feature Grams to the running sums (method.md §5).

For a group with neighbourhoods ``nbr`` (rows, m) and features phi (F per row), one batch of
standardised coefficients adds ``sum_n phi(u_n[nbr[r]]) phi(u_n[nbr[r]])^T`` to Gram ``r``
(per-position), or the sum over rows to one Gram (shared / global). Done naively, the
features come out as (n, rows, F) and the product needs two permuted copies and a batched
GEMM with the long image axis on the wrong side. Here the features are built directly in the
layout the BLAS wants, (batch, F, K) with the image axis K contiguous, so each Gram is one
``A @ A^T`` (a transposed view, no copy) accumulated in place with ``baddbmm_``:

- per-position: batch = positions, K = images of the chunk;
- pooled (shared): positions are folded into K in blocks of ``r`` (only the m-wide
  neighbourhood values are permuted, never the F-wide features), batch = position blocks,
  then one small sum over the batch;
- one global neighbourhood (gaussian): a single (F, K) @ (K, F) product.

Flops counted as useful: ``2 K F^2`` per Gram product, what one GEMM of the features costs
(:func:`gram_flops`); ``benchmarks/scale.py`` reports the rate against a plain large GEMM.
"""
from __future__ import annotations

import numpy as np
import torch

# Images x positions per batched product: long enough for the BLAS to stream, short enough
# that one (F, K) slab stays in cache.
_TARGET_K = 1024


def feature_recipe(feats, device=None) -> list[tuple[int, int, int, int]] | None:
    """The features as runs ``(start, stop, parent, var0)``: ``phi[start:stop] = phi[parent] *
    u[var0 : var0 + stop - start]``, in an order where every parent comes first.

    A monomial feature set (``Monomials``: ``phi[f] = phi[parent[f]] * u[var[f]]``) lists, for
    each parent, the variables from the parent's last one upwards, so a degree-2 set over m
    variables is m runs and each run is one broadcast multiply on contiguous slices, no
    gather. ``None`` when the feature set has no product recipe (its ``__call__`` is used)."""
    parent, var = getattr(feats, "parent", None), getattr(feats, "var", None)
    if parent is None or var is None:
        return None
    parent, var = np.asarray(parent), np.asarray(var)
    deg = np.asarray(feats.exps).sum(1)
    runs = []
    for f in sorted(range(1, feats.F), key=lambda f: (deg[f], f)):
        p, l = int(parent[f]), int(var[f])
        if runs:
            start, stop, p0, v0 = runs[-1]
            if stop == f and p0 == p and v0 + (stop - start) == l:
                runs[-1] = (start, f + 1, p0, v0)
                continue
        runs.append((f, f + 1, p, l))
    return runs


def features_columns(feats, v: torch.Tensor, recipe=None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Neighbourhood values ``v`` (B, m, K) -> features (B, F, K), the feature axis in the middle
    (written into ``out`` when given)."""
    if recipe is None:
        recipe = feature_recipe(feats)
    if recipe is None:  # a feature set without a product recipe
        phi = feats(v.transpose(1, 2)).transpose(1, 2)
        return phi.contiguous() if out is None else out.copy_(phi)
    if out is None:
        out = v.new_empty(v.shape[0], feats.F, v.shape[2])
    out[:, 0] = 1.0
    for start, stop, p, v0 in recipe:
        if p == 0:  # degree 1: a copy of the variables
            out[:, start:stop] = v[:, v0 : v0 + stop - start]
        else:
            torch.mul(out[:, p : p + 1], v[:, v0 : v0 + stop - start], out=out[:, start:stop])
    return out


def slab_cost(feats, m: int, pooled: bool = False) -> int:
    """Bytes per (row, image) while a chunk is processed: the neighbourhood values (twice when
    positions are folded) and the features (features are written in place, no temporaries)."""
    return 8 * ((2 if pooled else 1) * m + feats.F)


def gram_flops(n_images: int, groups, features) -> float:
    """Useful flops of accumulating ``n_images`` images: 2 K F^2 per (row, image) Gram product."""
    return float(sum(2.0 * n_images * g.nbr.shape[0] * f.F ** 2 for g, f in zip(groups, features)))


def accumulate_group(gram: torch.Tensor, ut: torch.Tensor, nbr: np.ndarray, feats,
                     max_bytes: float = 2.5e8, workspace: torch.Tensor | None = None) -> None:
    """Add one batch to ``gram`` in place.

    ``ut`` (D, N): standardised coefficients, one column per image (contiguous rows);
    ``nbr`` (rows, m) flat indices; ``gram`` (rows, F, F) per-position or (1, F, F) pooled.
    Every chunk's neighbourhood values and features live in ``workspace`` (a flat tensor of
    at least ``max_bytes / 8`` elements, allocated here if not given): fresh pages for every
    chunk would cost more than the products (page faults), so one buffer serves them all.
    """
    rows, m = nbr.shape
    F, n = feats.F, ut.shape[1]
    dev = ut.device
    recipe = feature_recipe(feats)
    if workspace is None:
        workspace = ut.new_empty(int(max_bytes // 8))

    def take(shape, offset=0):
        nonlocal workspace
        size = int(np.prod(shape))
        if offset + size > workspace.numel():  # one position needs more than max_bytes: grow
            grown = ut.new_empty(offset + size)
            grown[:offset] = workspace[:offset]
            workspace = grown
        return workspace[offset : offset + size].view(*shape), offset + size

    if rows == 1:  # one neighbourhood for many outputs (global linear): plain (F, K) @ (K, F)
        idx = torch.as_tensor(nbr[0], device=dev)
        k = max(1, min(n, int(max_bytes // slab_cost(feats, m))))
        for s in range(0, n, k):
            chunk = ut[:, s : s + k]
            v, off = take((1, m, chunk.shape[1]))
            torch.index_select(chunk, 0, idx, out=v[0])
            phi, _ = take((1, F, chunk.shape[1]), off)
            features_columns(feats, v, recipe, out=phi)
            gram[0].addmm_(phi[0], phi[0].T)
        return
    k = min(n, _TARGET_K)  # images per product
    if gram.shape[0] == rows:  # per-position: batch = positions, K = images
        rc = max(1, int(max_bytes // (slab_cost(feats, m) * k)))  # positions per chunk
        for r0 in range(0, rows, rc):
            idx = torch.as_tensor(nbr[r0 : r0 + rc].reshape(-1), device=dev)
            nr = idx.shape[0] // m
            for s in range(0, n, k):
                chunk = ut[:, s : s + k]
                kk = chunk.shape[1]
                v, off = take((nr * m, kk))
                torch.index_select(chunk, 0, idx, out=v)
                phi, _ = take((nr, F, kk), off)
                features_columns(feats, v.view(nr, m, kk), recipe, out=phi)
                gram[r0 : r0 + nr].baddbmm_(phi, phi.transpose(1, 2))
        return
    # Pooled over positions: fold blocks of r positions into the contraction axis (K = r k).
    r = max(1, min(rows, _TARGET_K // k))
    q = -(-rows // r)
    pad = q * r - rows
    blocks = (nbr if pad == 0 else np.concatenate([nbr, nbr[:pad]])).reshape(q, r, m)  # filler zeroed below
    per_block = slab_cost(feats, m, pooled=True) * r * k + 8 * F * F
    qc = max(1, int(max_bytes // per_block))  # position blocks per chunk
    for b0 in range(0, q, qc):
        idx = torch.as_tensor(blocks[b0 : b0 + qc].reshape(-1), device=dev)
        nq = idx.shape[0] // (r * m)
        last = b0 + qc >= q
        for s in range(0, n, k):
            chunk = ut[:, s : s + k]
            kk = chunk.shape[1]
            raw, off = take((nq * r * m, kk))
            torch.index_select(chunk, 0, idx, out=raw)
            v, off = take((nq, m, r, kk), off)
            v.copy_(raw.view(nq, r, m, kk).permute(0, 2, 1, 3))
            phi, off = take((nq, F, r * kk), off)
            features_columns(feats, v.view(nq, m, r * kk), recipe, out=phi)
            if pad and last:
                phi[-1, :, (r - pad) * kk :] = 0.0  # the filler positions contribute nothing
            if nq == 1:
                gram[0].addmm_(phi[0], phi[0].T)
            else:
                part, _ = take((nq, F, F), off)
                torch.bmm(phi, phi.transpose(1, 2), out=part)
                gram[0] += part.sum(0)


def chunk_bytes(rows: int, m: int, F: int, n: int, per_position: bool, max_bytes: float = 2.5e8) -> int:
    """Bytes of workspace :func:`accumulate_group` touches for a group of ``rows`` neighbourhoods
    of ``m`` variables and ``F`` features on a batch of ``n`` images (for memory estimates)."""
    if rows == 1:
        cost = 8 * (m + F)
        return int(max(1, min(n, max_bytes // cost)) * cost)
    k = min(n, _TARGET_K)
    if per_position:
        cost = 8 * (m + F) * k
        return int(min(rows, max(1, max_bytes // cost)) * cost)
    r = max(1, min(rows, _TARGET_K // k))
    q = -(-rows // r)
    per_block = 8 * (2 * m + F) * r * k + 8 * F * F
    return int(min(q, max(1, max_bytes // per_block)) * per_block)
