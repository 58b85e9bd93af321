"""Test denoising MSE of every machine family on MNIST (the score-machine results table).

    python benchmarks/families.py [--limit-test N] [-o benchmarks/results]

Fits each family at P=1, 2 (3 where it fits), per-position and shared, on the 60k MNIST
training digits (32x32), evaluates on the 10k test digits at sigmas log-spaced 0.01..10
on the same seeded noise, and writes families.json, families.md and families.png.
Results are saved after every model, and a rerun skips models already done.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from wavescore import ScoreMachine, load_dataset
from wavescore._io import write_json, write_bytes_atomic
from wavescore.evaluation import DEFAULT_SIGMAS, evaluate_denoisers

CONFIGS = [dict(family="gaussian", degree=1)]
# (family, options, degrees per-position, degrees shared). Left out for time on a 2-core
# machine: local 3x3 at P=3 shared and all-orientation windows at P=2 (F=220 and F=406
# features per coefficient: 6-20 TFLOP of moment accumulation each).
for fam, extra, per_position, shared in [
    ("independent", {}, (1, 2, 3), (1, 2, 3)),
    ("orientation", {}, (1, 2, 3), (1, 2, 3)),
    ("local", {"radius": 1}, (1, 2, 3), (1, 2)),
    ("local", {"radius": 1, "bands": "all"}, (1,), (1,)),
    ("parent", {"radius": 1}, (1, 2), (1, 2)),
]:
    for p in per_position:
        CONFIGS.append(dict(family=fam, degree=p, shared=False, **extra))
    for p in shared:
        CONFIGS.append(dict(family=fam, degree=p, shared=True, **extra))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--limit-test", type=int, default=None)
    ap.add_argument("-o", "--output", default="benchmarks/results")
    args = ap.parse_args()
    out = Path(args.output)
    stem = "families" if args.data == "mnist" else f"families-{args.data}"
    path = out / f"{stem}.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result.setdefault("sigmas", list(DEFAULT_SIGMAS))
    result.setdefault("models", {})
    result.update(data=args.data, command=" ".join(["python"] + sys.argv),
                  machine=f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    train = load_dataset(args.data, "train")
    test = load_dataset(args.data, "test", limit=args.limit_test)
    result.update(n_train=int(train.shape[0]), n_test=int(test.shape[0]))
    for cfg in CONFIGS:
        m = ScoreMachine(**cfg)
        if m.name in result["models"]:
            continue
        t0 = time.perf_counter()
        m.fit(train)
        fit_s = time.perf_counter() - t0
        ev = evaluate_denoisers({m.name: m}, test, result["sigmas"], seed=0)["models"][m.name]
        ev.update(fit_seconds=fit_s, params=cfg)
        result["models"][m.name] = ev
        print(f"{m.name:28s} fit {fit_s:6.1f}s  " + " ".join(f"{v:.2e}" for v in ev["mse"]), flush=True)
        write_json(path, result)
    write_bytes_atomic(out / f"{stem}.md", markdown_table(result).encode())
    plot(result, out / f"{stem}.png")


def markdown_table(result: dict) -> str:
    sig = result["sigmas"]
    models = result["models"]
    best = [min(v["mse"][k] for v in models.values()) for k in range(len(sig))]
    lines = ["| machine | fit (s) | " + " | ".join(f"σ={s:g}" for s in sig) + " |",
             "|---|---:|" + "---:|" * len(sig)]
    for name, v in models.items():
        cells = [(f"**{x:.2e}**" if x == best[k] else f"{x:.2e}") for k, x in enumerate(v["mse"])]
        lines.append(f"| {name} | {v['fit_seconds']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    from wavescore.plots import plot_mse_curves

    plot_mse_curves(result, path, title=f"{result['data']}: denoising error")


if __name__ == "__main__":
    main()
