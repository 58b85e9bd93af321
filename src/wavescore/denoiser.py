"""The one interface every model shares (machines, networks, the empirical optimum, ELS).

A model has ``shape_`` (C, H, W), ``denoise(x, sigma)`` -> an estimate of the clean image, and
``score(x, sigma)`` = grad log p_sigma(x); both take images x (N, C, H, W) in the
variance-exploding convention x = x0 + sigma z and sigma a float or one value per image, and
return x's shape, dtype and device. Tweedie's formula joins the two (method.md §1):

    D(x, sigma) = x + sigma^2 score(x, sigma).

A model that computes one of them exactly derives the other from it here, once. Every model is
also callable, ``model(x, sigma)`` = ``model.denoise(x, sigma)``: the k-diffusion convention,
so samplers and comparisons need nothing else. The image and sigma checks live here too, so a
bad input gets the same message from every model.
"""
from __future__ import annotations

import numpy as np
import torch

from ._io import WavescoreError

__all__ = ["Denoiser", "check_images", "check_sigma", "tweedie_denoise", "tweedie_score"]


def check_images(x, what: str = "images", *, shape=None, finite: bool = False) -> torch.Tensor:
    """A float (N, C, H, W) tensor (a numpy array is converted); with ``shape``, its (C, H, W)
    must match; with ``finite``, NaN and inf are refused."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise WavescoreError(f"{what}: expected a torch tensor (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        hint = "; add a channel axis with x[:, None]" if x.dim() == 3 else ""
        raise WavescoreError(f"{what}: expected shape (N, C, H, W), got {tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        raise WavescoreError(f"{what}: expected float images scaled to [-1, 1], got dtype {x.dtype}")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise WavescoreError(f"{what}: this model takes images of shape {tuple(shape)}, got {tuple(x.shape[1:])}")
    if finite and not torch.isfinite(x).all():
        raise WavescoreError(f"{what}: the images contain NaN or inf")
    return x


def check_sigma(sigma, n: int) -> torch.Tensor:
    """sigma as a float64 CPU tensor of n values (one float is repeated), each finite and > 0."""
    try:
        s = torch.as_tensor(sigma, dtype=torch.float64).detach().cpu().flatten()
    except (TypeError, ValueError, RuntimeError):
        raise WavescoreError(f"sigma must be a number or one number per image, got {type(sigma).__name__}") from None
    if s.numel() not in (1, n):
        raise WavescoreError(f"sigma must be a float or have one value per image ({n}), got {s.numel()} values")
    if not (torch.isfinite(s).all() and (s > 0).all()):
        bad = s[~(torch.isfinite(s) & (s > 0))][0].item()
        raise WavescoreError(f"sigma must be a positive finite number (at sigma = 0 the denoiser is the identity), "
                             f"got {bad}")
    return s.expand(n).clone() if s.numel() == 1 else s


def _per_image(sig: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sig.to(device=x.device).reshape(-1, *([1] * (x.dim() - 1)))


def tweedie_denoise(model, x: torch.Tensor, sigma) -> torch.Tensor:
    """D(x, sigma) = x + sigma^2 score(x, sigma) (method.md §1), in float64 inside, x's dtype out."""
    s = _per_image(check_sigma(sigma, x.shape[0]), x)
    return (x.to(torch.float64) + s**2 * model.score(x, sigma).to(torch.float64)).to(x.dtype)


def tweedie_score(model, x: torch.Tensor, sigma) -> torch.Tensor:
    """score(x, sigma) = (D(x, sigma) - x) / sigma^2 (method.md §1), from the model's denoiser."""
    s = _per_image(check_sigma(sigma, x.shape[0]), x)
    return ((model.denoise(x, sigma).to(torch.float64) - x.to(torch.float64)) / s**2).to(x.dtype)


class Denoiser:
    """Base of every model: a subclass sets ``shape_`` and implements ``denoise`` (networks,
    posterior means) or ``score`` (score machines); the other follows by Tweedie."""

    shape_: tuple | None = None

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        if type(self).score is Denoiser.score:
            raise NotImplementedError(f"{type(self).__name__} implements neither denoise nor score")
        return tweedie_denoise(self, x, sigma)

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        if type(self).denoise is Denoiser.denoise:
            raise NotImplementedError(f"{type(self).__name__} implements neither denoise nor score")
        return tweedie_score(self, x, sigma)

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        return self.denoise(x, sigma)


# ------------------------------------------------- any model as a reference (calibration)
def check_reference(reference, what: str = "reference"):
    """``reference`` if it has a ``denoise(x, sigma)`` method; else one WavescoreError."""
    if not callable(getattr(reference, "denoise", None)):
        raise WavescoreError(f"{what} must have a denoise(x, sigma) method (a fitted machine, a loaded network, an "
                             f"ELSDenoiser...), got {type(reference).__name__}: pass such a model, e.g. "
                             "wavescore.models.load_model(path)[1]")
    return reference


def reference_name(reference) -> str:
    """What a calibration was against, for the record: the model's ``name`` if it has a string
    one (fitted machines do), else its class name. The reference itself is never saved."""
    try:
        name = getattr(reference, "name", None)
    except Exception:  # an unfitted model's name property may need its fit
        name = None
    return name if isinstance(name, str) and name else type(reference).__name__


def reference_output(reference, y: torch.Tensor, sigma: float) -> torch.Tensor:
    """The reference's denoiser output on ``y`` (float64), checked to be an image of y's shape."""
    out = reference.denoise(y, sigma)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(y.shape):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise WavescoreError(f"the reference's denoise returned {got} for images of shape {tuple(y.shape)}: "
                             "pass a reference for images of this shape")
    out = out.detach().cpu().to(torch.float64)
    if not torch.isfinite(out).all():
        raise WavescoreError(f"the reference's denoise output at sigma {sigma} is not finite: check the reference")
    return out
