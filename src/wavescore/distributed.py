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


def _shard_moments(spec, params: dict, shape: tuple, shift: torch.Tensor, scale: torch.Tensor, split: str):
    """Worker task: one shard's accumulator (its moment sums and count)."""
    from .machine import ScoreMachine, iter_batches

    m = ScoreMachine(**params)
    transform = m._structure(shape)[0]
    acc = m._accumulator(shape, shift, scale)
    x = _load_shard(spec, split)
    if tuple(x.shape[1:]) != tuple(shape):
        raise WavescoreError(f"shard {spec!r} has images {tuple(x.shape[1:])}, the others {tuple(shape)}: "
                             "every shard must share one image shape")
    for batch in iter_batches(x, m.batch_size):
        acc.update(transform.forward(batch.to(torch.float64)))
    return acc


def _shard_gated_sums(spec, params: dict, shape: tuple, centre: torch.Tensor, split: str) -> dict:
    """Worker task for a GatedMachine: one shard's exact gate sums at every grid sigma."""
    from .gates import GatedMachine
    from .machine import iter_batches

    m = GatedMachine(**params)
    m._structure(shape)
    m.centre_ = centre
    return m.shard_sums(iter_batches(_load_shard(spec, split), m.batch_size))


def fit_distributed(machine, shards: Sequence, *, client=None, workers: int | None = None, scheduler: str | None = None,
                    split: str = "train", progress: bool = True):
    """Fit ``machine`` (a ScoreMachine or a GatedMachine with select=False) over ``shards`` on
    a Dask cluster and return it (fitted).

    Give an existing ``client``, a ``scheduler`` address, or ``workers`` for a local cluster.
    """
    from .gates import GatedMachine

    gated = isinstance(machine, GatedMachine)
    if gated and machine.select:
        raise WavescoreError("a distributed GatedMachine fit cannot hold images out for select=True: "
                             "use GatedMachine(select=False) (the gated solution at every grid sigma)")
    import time

    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:  # pragma: no cover
        raise WavescoreError("distributed fitting needs dask: pip install 'dask[distributed]'") from None
    if not shards:
        raise WavescoreError("no shards to fit: give at least one data source")
    t0 = time.perf_counter()
    reference = _load_shard(shards[0], split)[: machine.batch_size]
    if gated:
        machine._setup(reference)
        acc = machine._empty_sums()
    else:
        acc = machine.new_accumulator(reference)
    own_cluster = None
    if client is None:
        if scheduler:
            client = Client(scheduler)
        else:
            own_cluster = LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
            client = Client(own_cluster)
    try:
        if gated:
            futures = client.map(_shard_gated_sums, list(shards), params=machine.get_params(), shape=machine.shape_,
                                 centre=machine.centre_, split=split, pure=False)
        else:
            futures = client.map(_shard_moments, list(shards), params=machine.get_params(), shape=machine.shape_,
                                 shift=acc.shift, scale=acc.scale, split=split, pure=False)
        from ._io import progress_bar

        for fut in progress_bar(as_completed(futures), total=len(futures), desc="shards", enabled=progress, leave=False):
            acc = machine.merge_sums(acc, fut.result()) if gated else acc.merge(fut.result())
    finally:
        if own_cluster is not None:
            client.close()
            own_cluster.close()
    if gated:
        machine.set_sums(acc)
    else:
        machine.set_moments(acc)
    machine.fit_time_ = time.perf_counter() - t0
    return machine
