"""Samples and offline sample quality for each machine family and the trained networks.

    python benchmarks/generation.py [--n 256] [--nets benchmarks/checkpoints/unet.pt ...]

Every model starts from the same initial noise (seed 0) through EDM's Heun sampler
(18 steps); writes one grid per model, generation.json and generation.md.
"""
from __future__ import annotations

from wavescore.experiments import samples_main

MACHINES = [
    dict(family="gaussian"),
    dict(family="independent", degree=3),
    dict(family="orientation", degree=2),
    dict(family="local", degree=2),
    dict(family="local", degree=1, radius=3, shared=True),
    dict(family="parent", degree=2),
]


if __name__ == "__main__":
    samples_main(MACHINES, "generation", __doc__.splitlines()[0])
