"""ELS at MNIST scale (issue 16 item 2): seconds to denoise 32 test digits at one sigma, and
how far each approximation moves from exact ELS.

    python benchmarks/els_speed.py [--n 32] [--sigma 0.1]

ELSDenoiser (Kamb & Ganguli 2025; method.md §6) with its MNIST patch-size schedule on the same
seeded noisy test digits, in each configuration of RUNS (training digits, method, max_shift,
nearest_images, dtype). The issue's target: 32 digits against 10,000 training digits in under
2 minutes. Every approximation is also run against the same ``--fidelity-train`` digits as an
exact run, and its R^2 against that exact output is reported. Writes
benchmarks/results/els_speed.{json,md}; the machine and thread count in the JSON.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from wavescore._io import write_bytes_atomic, write_json
from wavescore.baselines import ELSDenoiser
from wavescore.compare import r2
from wavescore.datasets import load_dataset
from wavescore.evaluation import noise_for
from wavescore.profiling import machine_description

# (label, ELSDenoiser options); train_subset None = --train
RUNS = [
    ("exact", {}),
    ("exact float32", {"dtype": torch.float32}),
    ("max_shift=5", {"max_shift": 5}),
    ("max_shift=5 float32", {"max_shift": 5, "dtype": torch.float32}),
    ("max_shift=3", {"max_shift": 3}),
    ("nearest 10% of images", {"nearest_images": 0.1}),  # a fraction: 50 of 500, 1,000 of 10,000
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--sigma", type=float, default=0.1)
    ap.add_argument("--fidelity-train", type=int, default=500, help="training digits of the fidelity check")
    ap.add_argument("--skip", nargs="*", default=["exact", "exact float32"],
                    help="labels not timed at --train (the exact path takes ~20 min there; timed at fidelity size)")
    ap.add_argument("-o", "--output", default="benchmarks/results")
    args = ap.parse_args()
    train = load_dataset("mnist", "train")
    test = load_dataset("mnist", "test", limit=args.n).double()
    s = args.sigma
    x = test + s * noise_for(test.shape, 0, 0)
    rows, exact_small = [], None
    for label, opts in RUNS:
        row = {"label": label, "options": {k: str(v) for k, v in opts.items()}}
        for size in (args.fidelity_train, args.train):
            if size == args.train and label in args.skip:
                continue
            opts_n = dict(opts)
            if "nearest_images" in opts_n:
                opts_n["nearest_images"] = max(1, round(opts_n["nearest_images"] * size))
            els = ELSDenoiser(train, train_subset=size, **opts_n)
            t0 = time.perf_counter()
            out = els.denoise(x, s).double()
            secs = time.perf_counter() - t0
            row[f"train_{size}"] = {"seconds": secs, "patch": els.patch_size_for(s),
                                    "mse": float(((out - test) ** 2).mean())}
            if size == args.fidelity_train:
                if label == "exact":
                    exact_small = out
                row["r2_vs_exact"] = r2(out, exact_small)
            print(label, size, row[f"train_{size}"], row.get("r2_vs_exact"), flush=True)
        rows.append(row)
    result = {"command": " ".join(["python"] + sys.argv), "machine": machine_description(),
              "threads": torch.get_num_threads(), "sigma": s, "n": args.n, "train": args.train,
              "fidelity_train": args.fidelity_train, "rows": rows}
    out = Path(args.output)
    write_json(out / "els_speed.json", result)
    f, t = args.fidelity_train, args.train
    lines = [f"| configuration | s, {f} train | s, {t} train (measured or x{t // f} extrapolated) | "
             f"R² vs exact ({f} train) | MSE vs clean ({t} train) |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        big = r.get(f"train_{t}")
        tb = f"{big['seconds']:.1f}" if big else f"~{r[f'train_{f}']['seconds'] * t / f:.0f}"
        lines.append(f"| {r['label']} | {r[f'train_{f}']['seconds']:.1f} | {tb} | {r['r2_vs_exact']:.4f} | "
                     f"{big['mse'] if big else float('nan'):.3e} |")
    write_bytes_atomic(out / "els_speed.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
