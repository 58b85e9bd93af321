"""The checks of configuration values, written once: machine constructors and the command
line use the same functions, so one class of bad value gets one message everywhere."""
from __future__ import annotations

import math
import numbers

from ._io import WavescoreError


def whole(name: str, value, minimum: int = 1, *, maximum: int | None = None, optional: bool = False):
    """``value`` as an int in [minimum, maximum] (None passes when ``optional``)."""
    if value is None and optional:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok and isinstance(value, float) and value.is_integer():
        ok, value = True, int(value)
    if not ok or value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise WavescoreError(f"{name} must be a whole number {bound}, got {value!r}")
    return int(value)


def real(name: str, value, *, minimum: float | None = None, above: float | None = None,
         below: float | None = None, optional: bool = False, infinite: bool = False):
    """``value`` as a finite float (or +inf with ``infinite``) within the bounds (>= minimum,
    > above, < below)."""
    if value is None and optional:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(value, bool) or not (math.isfinite(v) or (infinite and v == math.inf)):
        raise WavescoreError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and v < minimum:
        raise WavescoreError(f"{name} must be >= {minimum:g}, got {value!r}")
    if above is not None and not v > above:
        raise WavescoreError(f"{name} must be > {above:g}, got {value!r}")
    if below is not None and not v < below:
        raise WavescoreError(f"{name} must be < {below:g}, got {value!r}")
    return v


def wavelet(name) -> str:
    """An orthogonal wavelet PyWavelets knows (the transform's own check, before any data is read)."""
    import pywt

    try:
        ok = isinstance(name, str) and bool(name) and pywt.Wavelet(name).orthogonal
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise WavescoreError(f"wavelet must be an orthogonal wavelet PyWavelets knows (haar, dbN, symN, coifN), "
                             f"got {name!r}")
    return name


def device(name) -> str:
    """A torch device that exists here: 'cpu', or 'cuda[:k]' with that GPU present."""
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise WavescoreError(f"device must be 'cpu' or 'cuda[:k]', got {name!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise WavescoreError(f"device={name!r} but no CUDA device is available here: use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise WavescoreError(f"device={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise WavescoreError(f"device must be 'cpu' or 'cuda[:k]', got {name!r}")
    return str(name)


def machine_settings(m) -> None:
    """The constructor values every machine class shares (ridge, wavelet, levels, batch size,
    memory cap, device), checked once here for all of them; normalised in place."""
    m.ridge = real("ridge", m.ridge, minimum=0)
    wavelet(m.wavelet)
    m.levels = whole("levels", m.levels, 1, optional=True)
    m.batch_size = whole("batch_size", m.batch_size, 1)
    m.max_memory = real("max_memory", m.max_memory, above=0, optional=True, infinite=True)  # inf: no cap
    if hasattr(m, "device"):
        device(m.device)


def load_device(name) -> str:
    """The device a saved machine computes on after loading: its own, or the CPU where that
    device is missing (a machine fitted on a GPU loads on a CPU-only machine)."""
    try:
        return device(name)
    except WavescoreError:
        return "cpu"
