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

import inspect
import time

import numpy as np
import torch

from ._io import WavescoreError, progress_bar
from .denoiser import check_images

# The share of physical memory a fit may plan to use, for every machine class (it was 0.6 for
# ScoreMachine and 0.8 for GatedMachine): the estimates are upper bounds, and the rest is left
# for the data set in memory, the OS and a second job on the machine.
MEMORY_BUDGET = 0.6


def _physical_memory() -> int:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 16 << 30


def memory_budget(max_memory: float | None) -> float:
    """Bytes a fit may plan to use: ``max_memory`` if given, else MEMORY_BUDGET of the RAM."""
    return max_memory if max_memory is not None else MEMORY_BUDGET * _physical_memory()


# Held-out images scored per candidate (paired noise). Fewer (600) let single unusual digits,
# where degree-3 terms err most, flip the choice between near-equal candidates on MNIST.
SELECT_IMAGES = 3000


def noise_for(shape, sigma_index: int, seed: int) -> torch.Tensor:
    """The standard normal draw used at sigma index k: identical for every model (evaluation,
    comparisons and the held-out choice all draw their noise here)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + sigma_index)
    return torch.randn(shape, generator=g, dtype=torch.float64)


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
    machine.__dict__.pop("_partial_sums", None)  # a fit starts afresh
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


def begin_fit(machine, data, advice: str) -> tuple:
    """The checks a one-pass fit starts with: finite (N, C, H, W) images, and the machine's
    ``memory_estimate`` within its budget (else one line ending in ``advice``). -> (x, shape)."""
    from .denoiser import check_images

    x = check_images(data, "fit", finite=True)
    shape = tuple(int(v) for v in x.shape[1:])
    est = machine.memory_estimate(shape, x.shape[0])
    if est["total"] > memory_budget(machine.max_memory):
        raise WavescoreError(f"{machine.name} on {x.shape[0]} images {shape} needs about {est['total'] / 2**30:.1f} "
                             f"GiB: {advice}")
    return x, shape


class Estimator:
    """scikit-learn's conventions, written once for every machine class: the constructor's
    arguments are the configuration (``get_params``/``set_params``/``repr`` read them from its
    signature), ``fit`` returns self and fitted state ends in ``_``."""

    # Settings that change how a fitted machine computes, not what it has fitted.
    _RUNTIME_PARAMS = frozenset({"device", "batch_size", "max_memory"})

    @classmethod
    def _param_names(cls) -> list[str]:
        skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        return [p.name for p in inspect.signature(cls.__init__).parameters.values()
                if p.name != "self" and p.kind not in skip]

    def _init_params(self, values: dict) -> None:
        """Store the constructor's arguments as the configuration (``values``: its ``locals()``),
        then check them: every class's ``__init__`` is this one call."""
        for name in self._param_names():
            setattr(self, name, values[name])
        self._validate()

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params):
        """Change the configuration (validated at once). A fitted machine takes only the
        runtime settings (device, batch_size, max_memory); anything else needs a new fit."""
        names = self._param_names()
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise WavescoreError(f"{type(self).__name__} has no parameter {', '.join(unknown)}: "
                                 f"choose among {', '.join(names)}")
        fitted = [k for k, v in params.items() if k not in self._RUNTIME_PARAMS and v != getattr(self, k)]
        if fitted and hasattr(self, "n_samples_"):
            raise WavescoreError(f"this {type(self).__name__} is fitted: changing {', '.join(fitted)} needs a new "
                                 f"fit; make one with {type(self).__name__}(**{{**m.get_params(), ...}})")
        old = self.get_params()
        for k, v in params.items():
            setattr(self, k, v)
        try:
            self._validate()
        except WavescoreError:
            for k, v in old.items():
                setattr(self, k, v)
            raise
        if "device" in params and hasattr(self, "to"):
            self.to(self.device)
        return self

    def partial_fit(self, batch):
        """Add a batch (N, C, H, W) to the machine's sums and solve again (scikit-learn's
        ``partial_fit``): calls over consecutive batches equal one ``fit`` of their concatenation
        when each batch is a multiple of ``batch_size`` (the same updates in the same order). The
        first batch fixes the structure. A held-out choice needs the whole data: select=False."""
        if self.select:
            raise WavescoreError(f"partial_fit cannot hold images out for the held-out choice: "
                                 f"use {type(self).__name__}(select=False) or fit(data)")
        batch = check_images(batch, "partial_fit")
        sums = self.__dict__.get("_partial_sums")
        if sums is None:
            self._validate()
            sums = self.begin(batch)
        elif tuple(batch.shape[1:]) != self.shape_:
            raise WavescoreError(f"partial_fit: this machine takes images of shape {self.shape_}, "
                                 f"got {tuple(batch.shape[1:])}")
        t0 = time.perf_counter()
        self._partial_sums = self.add_batches(sums, iter_batches(batch, self.batch_size))
        self.set_sums(sums, None)
        self.fit_time_ = getattr(self, "fit_time_", 0.0) + time.perf_counter() - t0
        return self

    def add_batches(self, sums, batches):
        """Add image batches to ``sums`` (in place) and return them: partial fits and shards."""
        for b in batches:
            self.update_sums(sums, self.coefficients(b))
        return sums

    # ---------------------------------------------------------------- files (.wsm, _io.write_archive)
    _FILE: tuple = ()  # (format, version, what, hint) of the class's machine files

    def save(self, path):
        """Write the fitted machine to ``path`` (a .wsm archive), atomically: the header and
        arrays of ``_archive``, which every machine class implements."""
        from ._io import write_archive

        return write_archive(path, *self._archive())

    @classmethod
    def load(cls, path):
        """The machine saved at ``path``; any damaged header or array is one WavescoreError."""
        from pathlib import Path

        from ._io import load_archive

        fmt, version, what, hint = cls._FILE
        return load_archive(Path(path), fmt, version, what, hint, cls._from_archive)

    @classmethod
    def _from_params(cls, path, params: dict, hint: str):
        try:
            return cls(**params)
        except WavescoreError as exc:
            raise WavescoreError(f"{path} holds an invalid configuration ({exc}): {hint}") from None

    def __repr__(self) -> str:
        sig = inspect.signature(type(self).__init__).parameters
        args = [f"{k}={v!r}" for k, v in self.get_params().items() if v != sig[k].default]
        return f"{type(self).__name__}({', '.join(args)})"
