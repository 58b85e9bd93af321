"""Turn a model spec from the command line into an object with ``denoise(x, sigma)``."""
from __future__ import annotations

from pathlib import Path

from ._io import WavescoreError


def load_model(spec: str, data=None):
    """``path.wsm`` -> ScoreMachine. Returns ``(name, model)``."""
    path = Path(spec)
    if path.suffix == ".wsm" or (path.exists() and path.is_file()):
        from .machine import ScoreMachine

        m = ScoreMachine.load(path)
        return m.name, m
    raise WavescoreError(f"cannot load model {spec!r}: give a machine file (.wsm) written by `wavescore fit`")
