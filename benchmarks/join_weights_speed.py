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
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from wavescore._io import write_bytes_atomic, write_json
from wavescore.joined import combination_weights
from wavescore.profiling import machine_description

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
        times = {"every face": [], "active set": []}
        for _ in range(args.repeats):
            t = time.perf_counter(); a = every_face(G); times["every face"].append(time.perf_counter() - t)
            t = time.perf_counter(); b = combination_weights(G); times["active set"].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"parts": P, "bands": args.bands, "seconds": med, "all_seconds": times,
                     "speedup": med["every face"] / med["active set"], "max_weight_diff": float((a - b).abs().max()),
                     "mean_support": float((b > 0).sum(-1).double().mean())})
        print(P, {k: round(v, 4) for k, v in med.items()}, f"x{rows[-1]['speedup']:.0f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), {"command": "python benchmarks/join_weights_speed.py", "args": vars(args),
                                          "machine": machine_description(), "threads": torch.get_num_threads(),
                                          "rows": rows})
    lines = [f"Convex join weights for {args.bands} bands at one sigma, medians of {args.repeats}", "",
             "| parts P | every face (s) | active set (s) | speed-up | max weight diff | mean support |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['parts']} | {r['seconds']['every face']:.3f} | {r['seconds']['active set']:.4f} | "
              f"{r['speedup']:.0f}x | {r['max_weight_diff']:.1e} | {r['mean_support']:.1f} |" for r in rows]
    write_bytes_atomic(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
