"""The local mixture's score, two evaluations of the same formula (method.md §12): seconds to
score every 3x3 / 5x5 / 7x7 pixel patch of 500 noisy MNIST test digits at sigma 1.

    python benchmarks/local_score_speed.py [--repeats 3] [--train 20000]

"projections": mixture.gmm_score(row=0), per-component projections U_k^T (y - mu_k), an
n x K x m temporary, chunked as LocalMixtureMachine did before; "quadratic form":
local_mixture.centre_score, one GEMM of the patches' degree-2 monomials against K columns. Both
on the same fitted machine and patches; medians over ``--repeats`` interleaved runs, their ratio,
and the largest difference relative to the largest score. Writes
benchmarks/results/local_score_speed.{json,md}; the machine and thread count in the JSON.
"""
from __future__ import annotations

import argparse

import torch

from wavescore.datasets import load_dataset
from wavescore.evaluation import noise_for
from wavescore.local_mixture import _CHUNK, LocalMixtureMachine, centre_score
from wavescore.mixture import gmm_score
from wavescore.profiling import interleaved, write_timings

# (components K, radius r): the joined machine's part (K = 64, 3x3) and the scheduled machine's radii
CONFIGS = [(64, 1), (16, 2), (32, 3)]


def projections(y, p, s2):
    R, K, d = p[1].shape
    step = max(1, int(_CHUNK // (R * K * d)))
    return torch.cat([gmm_score(y[:, s : s + step], p, s2, row=0) for s in range(0, y.shape[1], step)], 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train", type=int, default=20000, help="training digits per fit (the timing does not depend on it)")
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("-o", "--out", default="benchmarks/results/local_score_speed")
    args = ap.parse_args()
    train = load_dataset("mnist", "train")[: args.train].double()
    test = load_dataset("mnist", "test", limit=500).double()
    y_img = test + args.sigma * noise_for(test.shape, 0, 0)
    rows = []
    for K, r in CONFIGS:
        m = LocalMixtureMachine(components=K, radius=r, basis="pixel", shrinkage=1e-6).fit(train, progress=False)
        g, p = m.groups_[0], m.params_[0]
        d = p[1].shape[2]
        y = m.transform_.forward(y_img)[:, torch.from_numpy(g.nbr)].reshape(1, -1, d)
        med, times, got = interleaved({"projections": lambda: projections(y, p, args.sigma**2),
                                       "quadratic form": lambda: centre_score(y, p, args.sigma**2)}, args.repeats)
        a, b = got["projections"], got["quadratic form"]
        rows.append({"components": K, "radius": r, "patch": f"{2 * r + 1}x{2 * r + 1}", "patches": int(y.shape[1]),
                     "seconds": med, "all_seconds": times, "speedup": med["projections"] / med["quadratic form"],
                     "max_rel_diff": float((a - b).abs().max() / a.abs().max())})
        print(rows[-1]["patch"], f"K={K}", {k: round(v, 2) for k, v in med.items()}, f"x{rows[-1]['speedup']:.1f}", flush=True)
    write_timings(args.out, rows, f"Local mixture score, {rows[0]['patches']:,} patches (500 digits) at sigma "
                  f"{args.sigma}, medians of {args.repeats}",
                  [("patch", lambda r: r["patch"]), ("K", lambda r: str(r["components"])),
                   ("projections (s)", lambda r: f"{r['seconds']['projections']:.2f}"),
                   ("quadratic form (s)", lambda r: f"{r['seconds']['quadratic form']:.2f}"),
                   ("speed-up", lambda r: f"{r['speedup']:.1f}x"),
                   ("max diff / max score", lambda r: f"{r['max_rel_diff']:.1e}")], args=vars(args))


if __name__ == "__main__":
    main()
