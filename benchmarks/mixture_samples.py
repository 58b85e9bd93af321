"""Samples and offline sample quality of the mixture machines (issue 15) beside the U-Net.

    python benchmarks/mixture_samples.py --nets benchmarks/checkpoints/unet.pt

The global mixture (K = 100, 300), the local pixel mixture (K = 64, r = 1), the joined machine (method.md §13)
and the cascade (§14, sampled coarse to fine) through the same protocol as benchmarks/generation.py: the same initial noise
(seed 0), EDM's Heun sampler (18 steps), 256 samples; classifier and wavelet-packet Frechet
distances, class histogram, memorised share. Writes to benchmarks/results/mixture_samples[-DATA].
"""
from __future__ import annotations

from wavescore.experiments import samples_main

MACHINES = [
    dict(family="mixture", components=100),
    dict(family="mixture", components=300),
    dict(family="local-mixture", basis="pixel", components=64, radius=1),
    dict(family="mixture+local-mixture"),
    dict(family="cascade", components=16, radius=1),
]


if __name__ == "__main__":
    samples_main(MACHINES, "mixture_samples", __doc__.splitlines()[0])
