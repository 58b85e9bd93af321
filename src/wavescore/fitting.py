"""The one streaming fit every machine class shares (method.md §5: moments are sums).

One pass over the data: the first batch fixes the structure (``begin``); with ``select`` the
first ``holdout`` rows of every batch go to separate held-out sums (a split that needs no
second pass) and, up to ``SELECT_IMAGES``, to the held-out choice; the rest is added to the
sums. Then the choice is made on the held-out images, the held-out sums are merged back, and
the machine solves (``set_sums``). A machine class takes part by offering the sums protocol:
``begin``, ``empty_sums``, ``coefficients``, ``update_sums``, ``sums_count``, ``choose``,
``merge_sums`` and ``set_sums`` (distributed.py adds ``shard_state``/``for_shard``).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ._io import WavescoreError, progress_bar
from .denoiser import check_images

# Held-out images scored per candidate (paired noise). Fewer (600) let single unusual digits,
# where degree-3 terms err most, flip the choice between near-equal candidates on MNIST.
SELECT_IMAGES = 3000


def iter_batches(data, batch_size: int):
    """A tensor (N, C, H, W) in slices, or an iterable of such tensors (or of (x, label) pairs)."""
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if isinstance(data, torch.Tensor):
        check_images(data)
        for s in range(0, data.shape[0], batch_size):
            yield data[s : s + batch_size]
        return
    for item in data:
        if isinstance(item, (tuple, list)):
            item = item[0]
        yield check_images(item)


def stream_fit(machine, data, *, progress: bool = True):
    """Fit ``machine`` in one pass over ``data`` ((N, C, H, W) tensor or an iterable of
    batches); returns the machine with ``fit_time_`` set."""
    machine._validate()
    t0 = time.perf_counter()
    total = -(-len(data) // machine.batch_size) if isinstance(data, (torch.Tensor, np.ndarray)) else None
    sums = held = None
    held_x: list = []
    held_w: list = []
    for batch in progress_bar(iter_batches(data, machine.batch_size), total=total, desc=f"fit {machine.name}",
                              unit="batch", enabled=progress, leave=False):
        if sums is None:
            sums = machine.begin(batch)
            held = machine.empty_sums(sums)
        elif tuple(batch.shape[1:]) != machine.shape_:
            raise WavescoreError(f"all batches must have shape (N, {machine.shape_}), got {tuple(batch.shape)}")
        w = machine.coefficients(batch)
        h = int(round(machine.holdout * batch.shape[0])) if machine.select else 0
        if h:
            machine.update_sums(held, w[:h])
            if sum(len(v) for v in held_x) < SELECT_IMAGES:
                held_x.append(batch[:h].to(torch.float64))
                held_w.append(w[:h])
        machine.update_sums(sums, w[h:])
    if sums is None:
        raise WavescoreError("no images to fit: the data is empty")
    choice = None
    if machine.select:
        if not held_x or machine.sums_count(sums) < 2:
            raise WavescoreError("select=True needs more images: the held-out split is empty; "
                                 "fit on more data or raise holdout")
        choice = machine.choose(sums, torch.cat(held_x)[:SELECT_IMAGES], torch.cat(held_w)[:SELECT_IMAGES],
                                progress=progress)
        sums = machine.merge_sums(sums, held)
    machine.set_sums(sums, choice)
    machine.fit_time_ = time.perf_counter() - t0
    return machine
