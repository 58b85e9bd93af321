"""Samples and offline sample quality for each machine family and the trained networks.

    python benchmarks/generation.py [--n 256] [--nets benchmarks/checkpoints/unet.pt ...]

Every model starts from the same initial noise (seed 0) through EDM's Heun sampler
(18 steps); writes one grid per model, generation.json and generation.md.
"""
from __future__ import annotations

import argparse

from wavescore.experiments import run_samples

MACHINES = [
    dict(family="gaussian"),
    dict(family="independent", degree=3),
    dict(family="orientation", degree=2),
    dict(family="local", degree=2),
    dict(family="local", degree=1, radius=3, shared=True),
    dict(family="parent", degree=2),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--nets", nargs="*", default=[])
    ap.add_argument("-o", "--output", default="benchmarks/results/generation")
    args = ap.parse_args()
    run_samples(MACHINES, args.data, args.output, n=args.n, steps=args.steps, nets=args.nets)


if __name__ == "__main__":
    main()
