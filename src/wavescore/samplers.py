"""Reverse-diffusion samplers for anything with ``denoise(x, sigma)``.

Variance-exploding (EDM) convention, ``x_s = x_0 + s z`` (method.md §1). The probability-flow
ODE is ``dx/ds = (x - D(x, s)) / s`` (Karras et al. 2022, eq. 3 with s(t)=1, sigma(t)=t).
Each sampler is one short function with its update rule visible.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from . import _checks as checks
from ._io import WavescoreError


def edm_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, then 0."""
    if steps < 1:
        raise WavescoreError(f"steps must be >= 1, got {steps}")
    i = torch.arange(steps, dtype=torch.float64)
    frac = i / max(steps - 1, 1)
    s = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)])


def initial_noise(n: int, shape, generator) -> torch.Tensor:
    """The standard normal (n, *shape) float64 noise every sampling run starts from (times
    sigma_max), drawn on the CPU from ``generator`` or from a fresh one seeded with that int: the
    same seed gives every model, and every comparison of models, the same noise."""
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    return torch.randn((n, *shape), generator=generator, dtype=torch.float64)


def _randn_like(x: torch.Tensor, generator) -> torch.Tensor:
    """Standard normal noise like ``x``, drawn from ``generator``'s device (CPU by default, so
    the same seed gives the same samples on every device), then moved to ``x``'s device."""
    dev = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=dev).to(x.device)


def _d(model, x, s):
    """ODE direction (x - D(x, s)) / s."""
    return (x - model.denoise(x, float(s))) / s


def euler(model, x: torch.Tensor, sigmas: torch.Tensor, generator=None) -> torch.Tensor:
    """x_{i+1} = x_i + (s_{i+1} - s_i) d(x_i, s_i)."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + (s_next - s) * _d(model, x, s)
    return x


def _heun_step(model, x, s, s_next):
    """Euler step from s to s_next, then the trapezoidal correction (except into sigma = 0)."""
    d = _d(model, x, s)
    x_next = x + (s_next - s) * d
    if s_next > 0:
        x_next = x + (s_next - s) * 0.5 * (d + _d(model, x_next, s_next))
    return x_next


def heun(model, x: torch.Tensor, sigmas: torch.Tensor, generator=None) -> torch.Tensor:
    """EDM Algorithm 1: one Heun step per interval of the schedule."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = _heun_step(model, x, s, s_next)
    return x


def edm_stochastic(model, x: torch.Tensor, sigmas: torch.Tensor, generator=None, *, s_churn: float = 40.0,
                   s_tmin: float = 0.05, s_tmax: float = 50.0, s_noise: float = 1.003) -> torch.Tensor:
    """EDM Algorithm 2: raise the noise to s_hat = s (1 + gamma), then one Heun step from s_hat."""
    n = len(sigmas) - 1
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            eps = _randn_like(x, generator) * s_noise
            x = x + torch.sqrt(s_hat**2 - s**2) * eps
        x = _heun_step(model, x, s_hat, s_next)
    return x


def ddim(model, x: torch.Tensor, sigmas: torch.Tensor, generator=None, *, eta: float = 0.0) -> torch.Tensor:
    """DDIM (Song et al. 2021) in VE form: x_{i+1} = D + sqrt(s_{i+1}^2 - c^2) (x - D) / s_i + c eps,
    c = eta s_{i+1} sqrt(1 - s_{i+1}^2 / s_i^2). With eta = 0 it is the Euler step of the ODE."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        den = model.denoise(x, float(s))
        c = eta * s_next * torch.sqrt(1 - (s_next / s) ** 2)
        x = den + torch.sqrt(s_next**2 - c**2) * (x - den) / s
        if c > 0:
            x = x + c * _randn_like(x, generator)
    return x


SAMPLERS: dict[str, Callable] = {"heun": heun, "euler": euler, "edm": edm_stochastic, "ddim": ddim}


def cascade(model, z: torch.Tensor, sigmas: torch.Tensor, generator=None, *, step: str = "heun", **kwargs):
    """Coarse to fine (method.md §14): reverse diffusion for a_J with the coarse model, then for
    each finer level one reverse diffusion of d_j with the conditional denoiser given the sampled
    a_j; every scale takes the whole schedule ``sigmas``. ``z``: the initial noise as images; its
    orthonormal analysis is white noise of the same size, split among the scales."""
    za, zd = model.analyse(z)
    a = SAMPLERS[step](model.coarse_, za * sigmas[0], sigmas, generator=generator, **kwargs)
    for j in reversed(range(len(zd))):
        cond = model.level_denoiser(j, a)
        d = SAMPLERS[step](cond, zd[j].reshape(-1, *cond.shape_) * sigmas[0], sigmas, generator=generator, **kwargs)
        a = model.synthesise_level(j, a, d.reshape(d.shape[0], -1))
    return a


def sample(model, n: int, *, steps: int = 18, sampler: str | None = None, seed: int = 0, shape=None,
           sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, noise: torch.Tensor | None = None,
           device=None, **kwargs) -> torch.Tensor:
    """Draw ``n`` samples (n, C, H, W) by reverse diffusion from ``sigma_max`` to 0.

    ``shape`` defaults to the model's ``shape_`` (a fitted machine knows it). The same
    ``seed`` (or the same ``noise``) gives the same samples for every model. The chain runs on
    ``device`` (default: the model's ``device``, else the CPU); noise is drawn on the CPU.
    ``sampler``: one of SAMPLERS, or "cascade" (a cascade machine's coarse-to-fine sampling, its
    default; ``step`` in kwargs picks the per-scale sampler); default "heun".
    """
    coarse_to_fine = bool(getattr(model, "coarse_to_fine", False))
    if sampler is None:
        sampler = "cascade" if coarse_to_fine else "heun"
    if sampler == "cascade" and not coarse_to_fine:
        raise WavescoreError("sampler 'cascade' needs a cascade machine (make_machine('cascade', ...)); "
                             f"choose one of {', '.join(SAMPLERS)} for this model")
    if sampler not in SAMPLERS and sampler != "cascade":
        raise WavescoreError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)} or cascade")
    n, steps = checks.whole("n (the number of samples)", n, 1), checks.whole("steps", steps, 1)
    seed = checks.whole("seed", seed, 0)
    shape = tuple(shape or getattr(model, "shape_", ()) or ())
    if len(shape) != 3:
        raise WavescoreError("give the image shape (C, H, W): this model does not know it")
    gen = torch.Generator().manual_seed(seed)
    sigmas = edm_sigmas(steps, sigma_min, sigma_max, rho)
    z = noise if noise is not None else initial_noise(n, shape, gen)
    if device is None:
        device = getattr(model, "device", None) or "cpu"
        if not isinstance(device, (str, torch.device)):
            device = "cpu"
    if sampler == "cascade":
        return cascade(model, z.to(torch.float64), sigmas, generator=gen, **kwargs)
    x = z.to(device=device, dtype=torch.float64) * sigmas[0]
    return SAMPLERS[sampler](model, x, sigmas, generator=gen, **kwargs)
