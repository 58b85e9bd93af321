"""Fit and denoise times of the current code against an older checkout, side by side in one run.

    git worktree add /tmp/old <commit>
    python benchmarks/old_vs_new.py --old /tmp/old/src [--repeats 3]

Each (configuration, code) pair runs in a fresh process (old and new alternate, so drift in
the machine's speed hits both), on the first N MNIST training digits; denoising times 2,000
test digits at sigma 0.05, 0.5 and 2. Medians over repeats; ratio = new / old. Writes
benchmarks/results/old_vs_new.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
NEW_SRC = HERE.parent / "src"
CONFIGS = [  # (label, constructor call, training images)
    ("gaussian-P1", "ScoreMachine(family='gaussian')", 20000),
    ("local-r1-P2", "ScoreMachine(family='local', degree=2)", 20000),
    ("parent-r1-P2", "ScoreMachine(family='parent', degree=2)", 20000),
    ("gated (select)", "GatedMachine()", 5000),
]
TASK = """
import json, time, torch, wavescore
from wavescore import ScoreMachine
from wavescore.gates import GatedMachine
x = wavescore.load_dataset("mnist", limit={n}); te = wavescore.load_dataset("mnist", "test", limit=2000).double()
z = torch.randn(te.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
t = time.perf_counter(); m = {call}.fit(x, progress=False); fit = time.perf_counter() - t
t = time.perf_counter(); mse = [float(((m.denoise(te + s * z, s) - te) ** 2).mean()) for s in (0.05, 0.5, 2.0)]
print(json.dumps({{"fit": fit, "denoise": time.perf_counter() - t, "mse": mse}}))
"""


def run(src: Path, call: str, n: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run([sys.executable, "-c", TASK.format(n=n, call=call)], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="the older checkout's src folder")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("-o", "--output", default=str(HERE / "results" / "old_vs_new"))
    args = ap.parse_args()
    rows = {}
    for label, call, n in CONFIGS:
        runs = {"old": [], "new": []}
        for _ in range(args.repeats):
            for which, src in (("old", Path(args.old)), ("new", NEW_SRC)):
                runs[which].append(run(src, call, n))
        med = {w: {k: statistics.median(r[k] for r in rs) for k in ("fit", "denoise")} for w, rs in runs.items()}
        rows[label] = {"n_train": n, "median": med, "runs": runs,
                       "fit_ratio": med["new"]["fit"] / med["old"]["fit"],
                       "denoise_ratio": med["new"]["denoise"] / med["old"]["denoise"],
                       "max_mse_rel_diff": max(abs(a - b) / a for a, b in zip(runs["old"][0]["mse"], runs["new"][0]["mse"]))}
        print(label, {k: round(v, 3) for k, v in rows[label].items() if k.endswith(("ratio", "diff"))}, flush=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "old": args.old, "repeats": args.repeats,
                                                    "rows": rows}, indent=2) + "\n")
    lines = [f"Machine: {machine}; medians of {args.repeats} fresh-process runs, old and new alternating.", "",
             "| machine | train images | fit old (s) | fit new (s) | new/old | denoise old (s) | denoise new (s) | new/old | MSE rel. diff |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, r in rows.items():
        o, w = r["median"]["old"], r["median"]["new"]
        lines.append(f"| {label} | {r['n_train']} | {o['fit']:.2f} | {w['fit']:.2f} | {r['fit_ratio']:.2f} | "
                     f"{o['denoise']:.2f} | {w['denoise']:.2f} | {r['denoise_ratio']:.2f} | {r['max_mse_rel_diff']:.1e} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
