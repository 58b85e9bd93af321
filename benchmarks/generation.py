"""Samples and offline sample quality for each machine family and the trained networks.

    python benchmarks/generation.py [--n 256] [--nets benchmarks/checkpoints/unet.pt ...]

Every model starts from the same initial noise (seed 0) through EDM's Heun sampler
(18 steps); writes one grid per model, generation.json and generation.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from wavescore import ScoreMachine, WavescoreError, load_dataset
from wavescore._io import write_bytes_atomic, write_json
from wavescore.plots import save_image_grid
from wavescore.quality import sample_quality
from wavescore.samplers import sample

MACHINES = [
    dict(family="gaussian"),
    dict(family="independent", degree=3),
    dict(family="orientation", degree=2),
    dict(family="local", degree=2),
    dict(family="local", degree=1, radius=3, shared=True),
    dict(family="parent", degree=2),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--nets", nargs="*", default=[])
    ap.add_argument("-o", "--output", default="benchmarks/results/generation")
    args = ap.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    train = load_dataset(args.data, "train")
    models = {}
    for cfg in MACHINES:
        m = ScoreMachine(**cfg)
        models[m.name] = m.fit(train)
    for path in args.nets:
        from wavescore.networks import load_network

        models[Path(path).stem] = load_network(path)
    shape = tuple(train.shape[1:])
    noise = torch.randn((args.n, *shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = {"command": " ".join(["python"] + sys.argv), "n": args.n, "steps": args.steps, "sampler": "heun",
              "models": {}}
    for name, m in models.items():
        t0 = time.perf_counter()
        try:
            x = sample(m, args.n, steps=args.steps, shape=shape, noise=noise)
        except WavescoreError as exc:  # e.g. a cubic score whose trajectory diverges
            result["models"][name] = {"diverged": str(exc)}
            print(name, "diverged:", exc, flush=True)
            write_json(out / "generation.json", result)
            continue
        secs = time.perf_counter() - t0
        save_image_grid(x[:64], out / f"{name}.png", ncol=16)
        q = sample_quality(x, args.data, figure=out / f"{name}_nearest.png")
        q["nearest_train_distance"].pop("per_sample")
        q["sample_seconds"] = secs
        result["models"][name] = q
        print(name, f"{secs:.1f}s", q["classifier_fd"].get("samples"), q["wavelet_packet_fd"]["samples"], flush=True)
        write_json(out / "generation.json", result)
    write_bytes_atomic(out / "generation.md", table(result).encode())


def table(result: dict) -> str:
    lines = ["| model | classifier FD | wavelet-packet FD | median NN dist (test: ref) | memorised | classes |",
             "|---|---:|---:|---:|---:|---|"]
    for name, q in result["models"].items():
        if "diverged" in q:
            lines.append(f"| {name} | diverged | | | | |")
            continue
        nn, wp, clf = q["nearest_train_distance"], q["wavelet_packet_fd"], q["classifier_fd"]
        lines.append(f"| {name} | {clf['samples']:.1f} (ref {clf['test_reference']:.1f}) | {wp['samples']:.2f} "
                     f"(ref {wp['test_reference']:.2f}) | {nn['samples_median']:.3f} ({nn['test_median']:.3f}) | "
                     f"{100 * nn['samples_below_test_1pct']:.1f}% | {clf['class_histogram']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
