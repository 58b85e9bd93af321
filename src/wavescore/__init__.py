"""wavescore: analytically solvable wavelet score machines for diffusion models.

The mathematics is in ``docs/method.md``. Public names are imported lazily so that
``import wavescore`` and the CLI start fast.
"""
from importlib import import_module

from ._io import WavescoreError

__version__ = "0.1.0"

_LAZY = {
    "load_dataset": "datasets",
    "WaveletTransform": "transform",
    "Layout": "transform",
    "ScoreMachine": "machine",
    "GatedMachine": "gates",
    "JointMachine": "joint",
    "MomentAccumulator": "moments",
    "sample": "samplers",
    "Denoiser": "denoiser",
    "make_machine": "presets",
    "PRESETS": "presets",
    "load_network": "networks",
    "load_model": "models",
}

__all__ = ["WavescoreError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wavescore' has no attribute {name!r}")
