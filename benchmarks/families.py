"""Test denoising MSE of every machine family on MNIST (the score-machine results table).

    python benchmarks/families.py [--limit-test N] [-o benchmarks/results]

Fits each family at P=1, 2 (3 where it fits), per-position and shared, on the 60k MNIST
training digits (32x32), evaluates on the 10k test digits at sigmas log-spaced 0.01..10
on the same seeded noise, and writes families.json, families.md and families.png.
Results are saved after every model, and a rerun skips models already done.
"""
from __future__ import annotations

from wavescore.experiments import table_main

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


if __name__ == "__main__":
    table_main(CONFIGS, "families", "denoising error", __doc__.splitlines()[1], label="machine", digits=2,
               fit_digits=1, relative_to=None)
