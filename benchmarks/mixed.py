"""The strongest machine: mixed-degree families against the Gaussian score (issue 8's table).

    python benchmarks/mixed.py --data mnist --nets benchmarks/checkpoints/unet.pt benchmarks/checkpoints/cnn.pt
    python benchmarks/mixed.py --data fashion-mnist

Fits, on the whole training split, the Gaussian score, the best local families, the
mixed presets (global linear terms plus local terms of degree 2..P) and the strongest
machine (``STRONGEST``: global linear + parent 3x3 degree 2 + own cubic + squared
magnitudes over the 5x5 window and parent, with the per-sigma held-out choice of degree and
ridge); evaluates every model, and any trained networks given, on the test split at sigmas
0.01..10 with the same seeded noise. Writes mixed[-DATA].{json,md,png} (the JSON after
every model; a rerun skips models already done).
"""
from __future__ import annotations

from wavescore.experiments import table_main

STRONGEST_TERMS = [
    {"family": "gaussian"},
    {"family": "parent", "radius": 1, "degree": 2},
    {"family": "independent", "degree": 3},
    {"family": "parent", "radius": 2, "kind": "squares"},
]
CONFIGS = [
    dict(family="gaussian"),
    dict(family="local", degree=2),
    dict(family="parent", degree=2),
    dict(family="gaussian+local", degree=2),
    dict(family="gaussian+parent", degree=2),
    dict(family="mixed", terms=STRONGEST_TERMS, select=True),
    dict(family="gaussian+gates"),  # GatedMachine defaults: own gates c = 1, 2, 4; energy gates c = 1, 2; select
    dict(family="gaussian+gates", energy_scales=()),  # ablations: the own point mass alone ...
    dict(family="gaussian+gates", scales=()),  # ... and the neighbourhood energy alone
    dict(family="strongest"),  # JointMachine: the two above joined in one solve per grid sigma, select
]


if __name__ == "__main__":
    table_main(CONFIGS, "mixed", "mixed-degree machines against the Gaussian score", __doc__.splitlines()[0])
