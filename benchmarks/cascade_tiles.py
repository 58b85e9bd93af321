"""The cascade's test error past 32x32 (issue 15): photo tiles and MNIST upsampled.

    python benchmarks/cascade_tiles.py --data photo-tiles-64
    python benchmarks/cascade_tiles.py --data photo-tiles-128 --only parent cascade
    python benchmarks/cascade_tiles.py --data mnist --size 64 --limit-test 500

The cascade (CascadeMachine, docs/method.md §14; coarse 8x8 image modelled by the global mixture,
K = 16 local mixtures per finer level) beside the full-covariance Gaussian score (up to 64x64:
its D x D solve is what stops at 128) and the local Gaussian (the parent neighbourhood at degree
1, which scales). Same seeded noise and sigmas as every other table. Writes
cascade_tiles-DATA[-SIZE].{json,md,png}.
"""
from __future__ import annotations

from wavescore.experiments import table_main

CONFIGS = [dict(family="gaussian"),
           dict(family="parent", degree=1, radius=1),
           dict(family="cascade", components=16, radius=1)]


if __name__ == "__main__":
    table_main(CONFIGS, "cascade_tiles", "the cascade past 32x32", __doc__.splitlines()[0],
               relative_prefixes=("cascade",))
