"""Turn a model spec from the command line into an object with ``denoise(x, sigma)``.

Specs: ``path.wsm`` (a score machine), ``path.pt`` (a trained network checkpoint),
``path.safetensors`` (a trained network exported by ``networks.save_safetensors``, its JSON
beside it), ``diffusers:DIR`` (a diffusers UNet2DModel with its DDPM-style scheduler config, as a
reference network; needs ``pip install 'wavescore[diffusers]'``), ``empirical`` (the memorising
optimum on the training split of ``data``), ``els`` (the equivariant local score machine on
that split).
"""
from __future__ import annotations

from pathlib import Path

from ._io import WavescoreError

REFERENCE_KINDS = ("network", "empirical", "els")
DIFFUSERS_PREFIX = "diffusers:"


def build_machine(cfg: dict):
    """A configuration dict -> an unfitted machine (``presets.make_machine``); the older spelling
    ``cls="gated"`` (in saved report and benchmark configurations) means ``family="gaussian+gates"``."""
    from .presets import make_machine

    cfg = dict(cfg)
    if cfg.pop("cls", None) == "gated":
        cfg["family"] = "gaussian+gates"
    return make_machine(**cfg)


def load_model(spec: str, data=None, *, limit: int | None = None):
    """Returns ``(name, model)``; ``model.kind_`` says "machine", "network", "empirical" or "els".

    A network is named by its file stem (``runs/unet.pt`` -> "unet"), a diffusers model by its
    folder (``diffusers:runs/ddpm`` -> "ddpm")."""
    if isinstance(spec, str) and spec.startswith(DIFFUSERS_PREFIX):
        folder = spec[len(DIFFUSERS_PREFIX):]
        if not folder:
            raise WavescoreError(f"model {spec!r}: give the folder after 'diffusers:', e.g. diffusers:runs/ddpm")
        from .diffusers_ref import load_diffusers

        model = load_diffusers(folder)
        model.kind_ = "network"
        return Path(folder).name or Path(folder).resolve().name, model
    path = Path(spec)
    if spec in ("empirical", "els"):
        if data is None:
            raise WavescoreError(f"model {spec!r} needs training data: pass --data")
        from . import baselines
        from .datasets import load_dataset

        train = load_dataset(data, "train", limit=limit)
        model = baselines.EmpiricalDenoiser(train) if spec == "empirical" else baselines.ELSDenoiser(train)
        model.kind_ = spec
        model.shape_ = tuple(train.shape[1:])
        return spec, model
    if path.suffix in (".pt", ".safetensors"):
        from .networks import load_network

        model = load_network(path)
        model.kind_ = "network"
        return path.stem, model
    if path.suffix == ".wsm" or (path.exists() and path.is_file()):
        from .gates import read_format
        from .machine import ScoreMachine
        from .presets import machine_classes

        m = machine_classes().get(read_format(path), ScoreMachine).load(path)
        m.kind_ = "machine"
        return m.name, m
    raise WavescoreError(f"cannot load model {spec!r}: give a machine (.wsm), a network checkpoint (.pt or "
                         ".safetensors), diffusers:DIR, 'empirical' or 'els'")
