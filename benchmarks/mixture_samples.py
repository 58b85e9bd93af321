"""Samples and offline sample quality of the mixture machines (issue 15) beside the U-Net.

    python benchmarks/mixture_samples.py --nets benchmarks/checkpoints/unet.pt

The global mixture (K = 100, 300), the local pixel mixture (K = 64, r = 1) and the joined machine
(method.md §13) through the same protocol as benchmarks/generation.py: the same initial noise
(seed 0), EDM's Heun sampler (18 steps), 256 samples; classifier and wavelet-packet Frechet
distances, class histogram, memorised share. Writes to benchmarks/results/mixture_samples[-DATA].
"""
from __future__ import annotations

import argparse

from wavescore.experiments import run_samples

MACHINES = [
    dict(family="mixture", components=100),
    dict(family="mixture", components=300),
    dict(family="local-mixture", basis="pixel", components=64, radius=1),
    dict(family="mixture+local-mixture"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--nets", nargs="*", default=[])
    ap.add_argument("-o", "--output", default=None)
    args = ap.parse_args()
    out = args.output or "benchmarks/results/mixture_samples" + ("" if args.data == "mnist" else f"-{args.data}")
    run_samples(MACHINES, args.data, out, n=args.n, steps=args.steps, nets=args.nets)


if __name__ == "__main__":
    main()
