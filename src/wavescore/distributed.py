"""Distributed fitting on Dask: map data shards to moment accumulators, reduce with ``merge``.

Moments are sums (method.md §5), so a fit is a map-reduce: every worker streams its shard
into an accumulator built with the same structure and the same standardisation (taken
from one reference batch of the first shard), and the driver adds them. The result equals
the single-process fit up to float64 summation order.

A shard is a dataset spec ``load_dataset`` understands (a name, a ``.npy``/``.npz`` file, an
image folder), optionally with a row range: ``("big.npy", 0, 50000)``. :func:`row_shards`
splits one array into row ranges (each worker memory-maps only its rows).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ._io import WavescoreError


def row_shards(source: str, n_shards: int, *, split: str = "train") -> list[tuple]:
    """Split one dataset into ``n_shards`` contiguous row ranges."""
    from .datasets import load_dataset

    if source.endswith(".npy"):
        n = np.load(source, mmap_mode="r").shape[0]
    else:
        n = len(load_dataset(source, split))
    step = math.ceil(n / n_shards)
    return [(source, s, min(n, s + step)) for s in range(0, n, step)]


def _load_shard(spec, split: str) -> torch.Tensor:
    from .datasets import load_dataset

    if isinstance(spec, torch.Tensor):
        return spec
    if isinstance(spec, (tuple, list)):
        src, start, stop = spec
        return load_dataset(src, split, rows=(start, stop))
    return load_dataset(spec, split)


def _shard_sums(spec, cls, params: dict, state: dict, split: str):
    """Worker task: one shard's moment sums, from a machine built for shards (any machine class)."""
    from .fitting import iter_batches

    m = cls.for_shard(params, state)
    x = _load_shard(spec, split)
    if tuple(x.shape[1:]) != tuple(state["shape"]):
        raise WavescoreError(f"shard {spec!r} has images {tuple(x.shape[1:])}, the others {tuple(state['shape'])}: "
                             "every shard must share one image shape")
    return m.shard_sums(iter_batches(x, m.batch_size))


def fit_distributed(machine, shards: Sequence, *, client=None, workers: int | None = None, scheduler: str | None = None,
                    split: str = "train", progress: bool = True):
    """Fit ``machine`` over ``shards`` on a Dask cluster and return it (fitted).

    Any machine with the sums protocol (``begin``, ``shard_state``, ``for_shard``,
    ``shard_sums``, ``merge_sums``, ``set_sums``: ScoreMachine, GatedMachine). A held-out
    choice needs a held-out split, which a cluster fit does not make: give ``select=False``.
    Give an existing ``client``, a ``scheduler`` address, or ``workers`` for a local cluster.
    """
    import time

    if getattr(machine, "select", False):
        raise WavescoreError(f"a distributed fit of {type(machine).__name__} cannot hold images out for "
                             "select=True: give select=False (a GatedMachine then keeps the gated solution "
                             "at every grid sigma)")
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:  # pragma: no cover
        raise WavescoreError("distributed fitting needs dask: pip install 'dask[distributed]'") from None
    if not shards:
        raise WavescoreError("no shards to fit: give at least one data source")
    t0 = time.perf_counter()
    sums = machine.begin(_load_shard(shards[0], split)[: machine.batch_size])
    state = machine.shard_state(sums)
    own_cluster = None
    if client is None:
        if scheduler:
            client = Client(scheduler)
        else:
            own_cluster = LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
            client = Client(own_cluster)
    try:
        futures = client.map(_shard_sums, list(shards), cls=type(machine), params=machine.get_params(),
                             state=state, split=split, pure=False)
        from ._io import progress_bar

        for fut in progress_bar(as_completed(futures), total=len(futures), desc="shards", enabled=progress, leave=False):
            sums = machine.merge_sums(sums, fut.result())
    finally:
        if own_cluster is not None:
            client.close()
            own_cluster.close()
    machine.set_sums(sums)
    machine.fit_time_ = time.perf_counter() - t0
    return machine
