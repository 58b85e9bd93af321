"""Global Gaussian mixtures against the Gaussian score and the networks (issue 15, first part).

    python benchmarks/mixtures.py --data mnist --limit-test 2000 --nets benchmarks/checkpoints/unet.pt benchmarks/checkpoints/cnn.pt

Fits the Gaussian score and global mixtures of K = 10, 30, 100, 300 and auto components (MixtureMachine,
docs/method.md §11) on the whole training split; evaluates them and any trained networks on the
test split at sigmas 0.01..10 with the same seeded noise as every other table. Writes
mixtures[-DATA].{json,md,png} (a rerun skips rows already done).
"""
from __future__ import annotations

from wavescore.experiments import table_main

CONFIGS = ([dict(family="gaussian")] + [dict(family="mixture", components=k) for k in (10, 30, 100, 300)]
           # K chosen among 10, 30, 100, 300 by held-out denoising error, then refitted (method.md §11)
           + [dict(family="mixture", components="auto")]
           # low-rank-plus-diagonal covariances: O(K D r) numbers instead of O(K D^2)
           + [dict(family="mixture", components=100, covariance="lowrank", rank=r) for r in (20, 100)])


if __name__ == "__main__":
    table_main(CONFIGS, "mixtures", "global Gaussian mixtures", __doc__.splitlines()[0], relative_prefixes=("mixture",))
