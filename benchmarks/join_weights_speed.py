"""The joined machine's convex weights (method.md §13), two solutions of the same simplex QP:
seconds for one grid sigma's weights, one (P x P) Gram matrix per wavelet band, P parts.

    python benchmarks/join_weights_speed.py [--repeats 3] [--bands 16]

"every face": the affine optimum on all 2^P - 1 supports, the best feasible one (what
joined.combination_weights did up to the ninth session of issue 16); "active set": the
Lawson-Hanson solve it does now. Gram matrices of residuals sharing a common part (as parts'
residuals do: every part misses the same noise), seeded; medians over ``--repeats`` interleaved
runs, their ratio and the largest weight difference. Writes
benchmarks/results/join_weights_speed.{json,md}; the machine and thread count in the JSON.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from wavescore.joined import combination_weights
from wavescore.profiling import interleaved, write_timings

PARTS = [4, 8, 12, 14, 16]


def every_face(G: torch.Tensor, ridge: float = 1e-9) -> torch.Tensor:
    """The brute force: batched affine optimum on each support, kept where all weights are >= 0."""
    P = G.shape[-1]
    scale = torch.diagonal(G, dim1=-2, dim2=-1).mean(-1)[..., None, None]
    Gr = G / scale + ridge * torch.eye(P, dtype=G.dtype)
    best = torch.full(G.shape[:-1], float("nan"), dtype=G.dtype)
    best_obj = torch.full(G.shape[:-2], float("inf"), dtype=G.dtype)
    for mask in range(1, 2**P):
        idx = [i for i in range(P) if mask >> i & 1]
        sub = Gr[..., idx, :][..., :, idx]
        u = torch.linalg.solve(sub, torch.ones(sub.shape[:-1], dtype=G.dtype)[..., None])[..., 0]
        a = torch.zeros(G.shape[:-1], dtype=G.dtype)
        a[..., idx] = u / u.sum(-1, keepdim=True)
        obj = torch.einsum("...i,...ij,...j->...", a, Gr, a)
        ok = (a >= -1e-12).all(-1) & (obj < best_obj)
        best[ok], best_obj[ok] = a[ok].clamp_min(0), obj[ok]
    return best / best.sum(-1, keepdim=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bands", type=int, default=16, help="Gram matrices per call (the Haar bands of 32x32: 16)")
    ap.add_argument("-o", "--out", default="benchmarks/results/join_weights_speed")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for P in PARTS:
        r = rng.normal(size=(args.bands, 1, 2000)) + rng.normal(size=(args.bands, P, 2000)) * rng.uniform(
            0.1, 2.0, size=(args.bands, P, 1))
        G = torch.from_numpy(np.einsum("bin,bjn->bij", r, r))
        med, times, got = interleaved({"every face": lambda: every_face(G), "active set": lambda: combination_weights(G)},
                                      args.repeats)
        a, b = got["every face"], got["active set"]
        rows.append({"parts": P, "bands": args.bands, "seconds": med, "all_seconds": times,
                     "speedup": med["every face"] / med["active set"], "max_weight_diff": float((a - b).abs().max()),
                     "mean_support": float((b > 0).sum(-1).double().mean())})
        print(P, {k: round(v, 4) for k, v in med.items()}, f"x{rows[-1]['speedup']:.0f}", flush=True)
    write_timings(args.out, rows, f"Convex join weights for {args.bands} bands at one sigma, medians of {args.repeats}",
                  [("parts P", lambda r: str(r["parts"])), ("every face (s)", lambda r: f"{r['seconds']['every face']:.3f}"),
                   ("active set (s)", lambda r: f"{r['seconds']['active set']:.4f}"),
                   ("speed-up", lambda r: f"{r['speedup']:.0f}x"), ("max weight diff", lambda r: f"{r['max_weight_diff']:.1e}"),
                   ("mean support", lambda r: f"{r['mean_support']:.1f}")], args=vars(args))


if __name__ == "__main__":
    main()
