"""Local Gaussian mixtures over pixel patches and wavelet windows, and the joined machine (issue 15).

    python benchmarks/local_mixtures.py --data mnist --limit-test 2000 --nets benchmarks/checkpoints/unet.pt benchmarks/checkpoints/cnn.pt

Fits the Gaussian score and local mixtures (LocalMixtureMachine, docs/method.md §12) on the
whole training split; evaluates them and any trained networks on the test split at sigmas
0.01..10 with the same seeded noise as every other table. Writes local_mixtures[-DATA].{json,md,png}
(a rerun skips rows already done; --only NAME... runs a subset).
"""
from __future__ import annotations

from wavescore.experiments import table_main

CONFIGS = [dict(family="gaussian"),
           dict(family="local-mixture", basis="pixel", components=64, radius=1),
           dict(family="local-mixture", basis="pixel", components=64, radius=2),
           dict(family="local-mixture", basis="wavelet", components=64, radius=1, neighbourhood="parent"),
           dict(family="local-mixture", basis="wavelet", components=64, radius=1),
           # per position: one mixture per pixel (not translation-equivariant; sees the border), each fitted
           # on 10,000 images' patches at its position (all 60k would need ~68 GiB: the memory check refuses)
           dict(family="local-mixture", basis="pixel", components=8, radius=1, shared=False, max_samples=10_000),
           # the joined machine (JoinedMachine, method.md §13): Gaussian, global K=100, local K=64 r1 and
           # own-coefficient gates, weighted per sigma and wavelet band on 256 held-out training images
           dict(family="mixture+local-mixture"),
           dict(family="cascade", components=16, radius=1)]


if __name__ == "__main__":
    table_main(CONFIGS, "local_mixtures", "local Gaussian mixtures", __doc__.splitlines()[0],
               relative_prefixes=("local-mixture", "joined"))
