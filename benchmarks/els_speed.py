"""ELS at MNIST scale (issue 16 item 2): seconds to denoise 32 test digits at one sigma.

    python benchmarks/els_speed.py [--train 10000] [--n 32] [--sigmas 0.1 1]

ELSDenoiser (Kamb & Ganguli 2025; method.md §6) against ``--train`` training digits, its MNIST
patch-size schedule, the box-filter path (method="box": each displacement's cross term is a box
filter of a product image, so the cost per image pair does not grow with the patch) against the
unfold path, on the same seeded noisy digits; the two outputs must agree. Medians over
``--repeats`` runs, on this machine. Writes benchmarks/results/els_speed.{json,md}.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


from wavescore._io import write_bytes_atomic, write_json
from wavescore.baselines import ELSDenoiser
from wavescore.datasets import load_dataset
from wavescore.evaluation import noise_for
from wavescore.profiling import machine_description


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 1.0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--unfold-train", type=int, default=250, help="training digits for the unfold path's timing")
    ap.add_argument("-o", "--output", default="benchmarks/results")
    args = ap.parse_args()
    train = load_dataset("mnist", "train")
    test = load_dataset("mnist", "test", limit=args.n).double()
    rows = []
    for k, s in enumerate(args.sigmas):
        x = test + s * noise_for(test.shape, k, 0)
        row = {"sigma": s, "n": args.n}
        for method, n_train in (("box", args.train), ("unfold", args.unfold_train), ("box", args.unfold_train)):
            els = ELSDenoiser(train, train_subset=n_train, method=method)
            times, out = [], None
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = els.denoise(x, s)
                times.append(time.perf_counter() - t0)
            key = f"{method}_{n_train}"
            row[key] = {"seconds": statistics.median(times), "patch": els.patch_size_for(s),
                        "mse": float(((out - test) ** 2).mean())}
            row.setdefault("_outputs", {})[key] = out
            print(s, key, row[key], flush=True)
        outs = row.pop("_outputs")
        row["box_vs_unfold_max_abs"] = float((outs[f"box_{args.unfold_train}"] - outs[f"unfold_{args.unfold_train}"])
                                             .abs().max())
        rows.append(row)
    result = {"command": " ".join(["python"] + sys.argv), "machine": machine_description(), "rows": rows}
    out = Path(args.output)
    write_json(out / "els_speed.json", result)
    u = args.unfold_train
    lines = [f"| sigma | patch | box, {args.train} train (s) | box, {u} train (s) | unfold, {u} train (s) | "
             "unfold / box | max abs diff |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b, bu, uu = r[f"box_{args.train}"], r[f"box_{u}"], r[f"unfold_{u}"]
        lines.append(f"| {r['sigma']:g} | {b['patch']} | {b['seconds']:.1f} | {bu['seconds']:.1f} | "
                     f"{uu['seconds']:.1f} | {uu['seconds'] / bu['seconds']:.1f} | {r['box_vs_unfold_max_abs']:.1e} |")
    write_bytes_atomic(out / "els_speed.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
