"""Every family by name, in one registry: what it is, which machine class fits it, and for the
mixed presets their terms. ScoreMachine's validation, ``make_machine``, the CLI's ``--family``
choices and the report read it, so a new preset is one entry here (docs/architecture.md).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from ._io import WavescoreError
from .neighbourhoods import Term

__all__ = ["Preset", "PRESETS", "make_machine", "machine_classes", "mixed_presets"]


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    machine: str = "score"  # "score": ScoreMachine(family=name); else the class make_machine names
    terms: Callable[[int, int, str], list] | None = None  # (degree, radius, bands) -> [Term] for mixed presets
    factory: str | None = None  # "module.function" that make_machine calls instead of the class (a configured one)


def _global_plus(base: str):
    def terms(degree: int, radius: int, bands: str) -> list:
        return [Term("gaussian"), Term(base, degree, radius, bands)]
    return terms


def _gsm(degree: int, radius: int, bands: str) -> list:
    # Gaussian-scale-mixture structure on top of the Gaussian score: the window and parent up to
    # degree 2, the own coefficient up to P, and the squared magnitudes one ring wider.
    return [Term("gaussian"), Term("parent", min(degree, 2), radius, bands), Term("independent", degree),
            Term("parent", 1, radius + 1, bands, kind="squares")]


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("independent", "each coefficient alone: a polynomial of degree P in it"),
    Preset("orientation", "the H, V and D coefficients at one position"),
    Preset("local", "a (2r+1)x(2r+1) same-scale window (bands='all': all three orientations)"),
    Preset("parent", "the window plus the coarser coefficients covering the position"),
    Preset("gaussian", "every coefficient, degree 1: the Gaussian score"),
    *[Preset(f"gaussian+{b}", f"global linear terms plus {b} features of degree 2..P (method.md §8)",
             terms=_global_plus(b)) for b in ("independent", "orientation", "local", "parent")],
    Preset("gaussian+gsm", "global linear; window and parent up to degree 2; own coefficient up to P; squared "
                           "magnitudes one ring wider (method.md §8)", terms=_gsm),
    Preset("gaussian+gates", "the Gaussian score plus sigma-scaled shrinkage gates (GatedMachine, method.md §9)",
           machine="gated"),
    Preset("strongest", "gaussian+gsm's polynomials and gaussian+gates' gates in one solve per grid sigma, with the "
                        "held-out choice among them (JointMachine, method.md §10)", machine="joint"),
    Preset("mixture", "a global Gaussian mixture of `components` full-covariance components: its noisy score is "
                      "exact at every sigma (MixtureMachine, method.md §11)", machine="mixture"),
    Preset("local-mixture", "a Gaussian mixture over each coefficient's neighbourhood (pixel patches or wavelet "
                            "windows), shared over positions: the exact noisy marginal score at the centre "
                            "(LocalMixtureMachine, method.md §12)", machine="local-mixture"),
    Preset("mixture+local-mixture", "the Gaussian score, the global mixture, the local pixel-patch mixture and the "
                                    "gates joined per sigma and wavelet band by held-out affine weights "
                                    "(JoinedMachine, method.md §13)", machine="joined"),
    Preset("scheduled-local-mixture", "shared local mixtures of several radii (radii=(1, 2, 3)), one chosen per sigma "
                                      "by held-out error: the neighbourhood grows with the noise, as in ELS "
                                      "(JoinedMachine with combine='select', method.md §13)", machine="joined",
           factory="joined.scheduled_local_mixture"),
    Preset("cascade", "a coarse model of a_J (global mixture or Gaussian) and, per finer level, local mixtures of the "
                      "details given the coarser image; samples coarse to fine (CascadeMachine, method.md §14)",
           machine="cascade"),
    Preset("mixed", "the terms declared by terms=[...]"),
]}


def mixed_presets() -> tuple[str, ...]:
    return tuple(n for n, p in PRESETS.items() if p.terms is not None)


# preset.machine -> the module and class that machine kind is
_CLASSES = {"score": ("machine", "ScoreMachine"), "gated": ("gates", "GatedMachine"), "joint": ("joint", "JointMachine"),
            "mixture": ("mixture", "MixtureMachine"), "local-mixture": ("local_mixture", "LocalMixtureMachine"),
            "joined": ("joined", "JoinedMachine"), "cascade": ("cascade", "CascadeMachine")}


def _class(kind: str):
    module, name = _CLASSES[kind]
    return getattr(importlib.import_module(f".{module}", __package__), name)


def make_machine(family: str = "local", **params):
    """An unfitted machine of ``family`` configured by ``params``: the class its preset names
    (GatedMachine for ``gaussian+gates``, JointMachine for ``strongest``, ...), else
    ``ScoreMachine(family=family, **params)``."""
    preset = PRESETS.get(family)
    if preset is None:
        raise WavescoreError(f"unknown family {family!r}: choose one of {', '.join(PRESETS)}")
    if preset.machine == "score":
        return _class("score")(family=family, **params)
    if preset.factory is not None:  # a configured machine of an existing class (e.g. a JoinedMachine)
        module, name = preset.factory.rsplit(".", 1)
        return getattr(importlib.import_module(f".{module}", __package__), name)(**params)
    return _class(preset.machine)(**params)


def machine_classes() -> dict:
    """Every machine class by the format name of its files (``load_model``, and the joined
    machine's and the cascade's parts, read them); a file of no listed format is a ScoreMachine's."""
    return {importlib.import_module(f".{module}", __package__).FORMAT: _class(kind)
            for kind, (module, _) in _CLASSES.items()}
