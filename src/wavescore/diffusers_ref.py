"""diffusers DDPM-style U-Nets as sigma-parameterised reference denoisers.

A diffusers ``UNet2DModel`` trained with a discrete variance-preserving (VP) schedule sees
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` at integer timesteps t = 0 .. T-1, with
``abar_t = prod_{s <= t} (1 - beta_s)``. Dividing by ``sqrt(abar_t)`` gives this package's
variance-exploding (VE/EDM) convention ``x = x0 + sigma eps`` with

    sigma_t = sqrt((1 - abar_t) / abar_t),   and back:  abar(sigma) = 1 / (1 + sigma^2).

:class:`DiffusersDenoiser` turns the network into ``denoise(x, sigma)``: scale the VE input to
the VP one, ``x_VP = x sqrt(abar(sigma))``; find the network's timestep for sigma; run the U-Net;
convert its output to the x0 estimate (epsilon: ``x0 = x - sigma eps``; v: ``x0 = abar x -
sigma sqrt(abar) v``; sample: the output itself). :func:`load_diffusers` reads a folder written
by ``UNet2DModel.save_pretrained`` plus the scheduler's ``save_pretrained`` (or a pipeline
folder with ``unet/`` and ``scheduler/``). ``models.load_model("diffusers:DIR")`` calls it.

The schedule is recomputed here in float64 from the scheduler config, so only the U-Net needs
diffusers. diffusers computes it in float32: abar agrees to about 1e-5 relative and sigma_t to
about 1e-4 relative at the smallest noise levels (where float32 loses digits in 1 - abar), far
below what changes a denoiser's output.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ._io import WavescoreError
from .denoiser import Denoiser, check_images, check_sigma

__all__ = ["DiffusersDenoiser", "load_diffusers", "alphas_cumprod_from_config", "PREDICTION_TYPES",
           "BETA_SCHEDULES"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "sigmoid")
INSTALL = "pip install 'wavescore[diffusers]'"


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _import_unet_class():
    try:
        from diffusers import UNet2DModel
    except ImportError as exc:
        raise WavescoreError(f"diffusers models need the diffusers package ({_first_line(exc)}): {INSTALL}") from None
    return UNet2DModel


def alphas_cumprod_from_config(cfg: dict, where: str = "scheduler config") -> np.ndarray:
    """``abar_t`` (T,) in float64 from a diffusers VP scheduler config (DDPM, DDIM, PNDM, ...):
    ``trained_betas``, or ``beta_schedule`` in :data:`BETA_SCHEDULES` with ``beta_start``,
    ``beta_end`` and ``num_train_timesteps`` (diffusers' defaults where absent)."""
    if cfg.get("rescale_betas_zero_snr"):
        raise WavescoreError(f"{where}: rescale_betas_zero_snr is not supported (its last timestep has "
                             "infinite noise level); use a model trained without it")
    if cfg.get("timestep_type", "discrete") != "discrete":
        raise WavescoreError(f"{where}: timestep_type {cfg.get('timestep_type')!r} is not supported; "
                             "only discrete-timestep (DDPM-style) models are")
    if cfg.get("trained_betas") is not None:
        try:
            betas = np.asarray(cfg["trained_betas"], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise WavescoreError(f"{where}: trained_betas is not a list of numbers") from None
    else:
        T = cfg.get("num_train_timesteps", 1000)
        if isinstance(T, bool) or not isinstance(T, int) or T < 2:
            raise WavescoreError(f"{where}: num_train_timesteps must be a whole number >= 2, got {T!r}")
        schedule = cfg.get("beta_schedule", "linear")
        b0, b1 = cfg.get("beta_start", 0.0001), cfg.get("beta_end", 0.02)
        if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and b >= 0
                   for b in (b0, b1)):
            raise WavescoreError(f"{where}: beta_start and beta_end must be finite numbers >= 0, got {b0!r}, {b1!r}")
        if schedule == "linear":
            betas = np.linspace(b0, b1, T, dtype=np.float64)
        elif schedule == "scaled_linear":
            betas = np.linspace(b0**0.5, b1**0.5, T, dtype=np.float64) ** 2
        elif schedule == "squaredcos_cap_v2":  # Nichol & Dhariwal 2021, betas capped at 0.999 (as diffusers)
            f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
            i = np.arange(T, dtype=np.float64)
            betas = np.minimum(1 - f((i + 1) / T) / f(i / T), 0.999)
        elif schedule == "laplace":  # as diffusers' betas_for_alpha_bar(alpha_transform_type="laplace")
            def f(t):
                lmb = -0.5 * np.sign(0.5 - t) * np.log(1 - 2 * np.abs(0.5 - t) + 1e-6)
                snr = np.exp(lmb)
                return np.sqrt(snr / (1 + snr))
            i = np.arange(T, dtype=np.float64)
            betas = np.minimum(1 - f((i + 1) / T) / f(i / T), 0.999)
        elif schedule == "sigmoid":
            betas = b0 + (b1 - b0) / (1 + np.exp(-np.linspace(-6, 6, T, dtype=np.float64)))
        else:
            raise WavescoreError(f"{where}: beta_schedule {schedule!r} is not supported; supported: "
                                 f"{', '.join(BETA_SCHEDULES)} (or trained_betas)")
    if len(betas) < 2 or not np.all(np.isfinite(betas)) or np.any(betas <= 0) or np.any(betas >= 1):
        raise WavescoreError(f"{where}: the betas must be at least 2 numbers strictly between 0 and 1")
    return np.cumprod(1.0 - betas)


class DiffusersDenoiser(Denoiser):
    """A diffusers VP U-Net (``unet(x_VP, t).sample``) as a VE denoiser ``denoise(x, sigma)``.

    Given x = x0 + sigma * noise (N, C, H, W) and sigma (one value or one per image):

    * abar = 1 / (1 + sigma^2) and x_VP = x * sqrt(abar) (the true sigma, always);
    * the timestep t is continuous: the schedule's sigma_t = sqrt((1 - abar_t) / abar_t) rises
      with t, and t is interpolated linearly in log sigma between the neighbouring integer
      timesteps (np.interp of log sigma over log sigma_t), so sigma = sigma_k gives exactly t = k;
    * sigma outside [sigma_min, sigma_max] = [sigma_0, sigma_{T-1}] is clamped to the end
      timestep (t = 0 or T - 1): the network is then asked outside its training range and its
      answer is an extrapolation; the input scaling and the conversion still use the true sigma;
    * the output becomes the x0 estimate by ``prediction_type``: "epsilon": x0 = x - sigma eps;
      "v_prediction": x0 = abar x - sigma sqrt(abar) v; "sample": x0 = the output. A learned
      variance (``variance_type`` "learned"/"learned_range", 2C output channels) is dropped.
      The scheduler's clip_sample / thresholding belong to its sampler and are not applied.

    No grad, the U-Net in eval mode (its mode restored), float32 inside, batched; returns x's
    dtype and device. ``shape_`` is (in_channels, sample_size...) from the U-Net config.
    ``__call__`` is ``denoise``.
    """

    def __init__(self, unet, alphas_cumprod, prediction_type: str = "epsilon", *, variance_type=None,
                 where: str = "diffusers model"):
        if prediction_type not in PREDICTION_TYPES:
            raise WavescoreError(f"{where}: prediction_type {prediction_type!r} is not supported; supported: "
                                 f"{', '.join(PREDICTION_TYPES)}")
        abar = np.asarray(alphas_cumprod, dtype=np.float64).reshape(-1)
        if len(abar) < 2 or not np.all(np.isfinite(abar)) or np.any(abar <= 0) or np.any(abar >= 1):
            raise WavescoreError(f"{where}: alphas_cumprod must be at least 2 numbers strictly between 0 and 1")
        sigmas = np.sqrt((1 - abar) / abar)
        if np.any(np.diff(sigmas) <= 0):
            raise WavescoreError(f"{where}: the schedule's noise levels do not rise with the timestep")
        self.unet = unet
        self.alphas_cumprod_ = abar
        self.sigmas_ = sigmas
        self.sigma_min, self.sigma_max = float(sigmas[0]), float(sigmas[-1])
        self.prediction_type_ = prediction_type
        self._log_sigmas = np.log(sigmas)
        cfg = unet.config
        self.channels = int(cfg.in_channels)
        out_ch = int(cfg.out_channels)
        self._learned_variance = str(variance_type or "").startswith("learned")
        if out_ch != self.channels and not (self._learned_variance and out_ch == 2 * self.channels):
            raise WavescoreError(f"{where}: the U-Net maps {self.channels} to {out_ch} channels; a denoiser needs "
                                 "out_channels == in_channels (or twice that with a learned variance)")
        size = getattr(cfg, "sample_size", None)
        if size is None:
            self.shape_ = None
        else:
            hw = (size, size) if isinstance(size, int) else tuple(size)
            self.shape_ = (self.channels, int(hw[0]), int(hw[1]))

    def timestep(self, sigma) -> np.ndarray:
        """The continuous timestep(s) for ``sigma``: linear in log sigma between integer timesteps,
        clamped to [0, T - 1] outside [sigma_min, sigma_max]."""
        sig = np.asarray(sigma, dtype=np.float64)
        return np.interp(np.log(sig), self._log_sigmas, np.arange(len(self._log_sigmas), dtype=np.float64))

    def to(self, device) -> "DiffusersDenoiser":
        self.unet.to(device)
        return self

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma, batch_size: int = 256) -> torch.Tensor:
        check_images(x, shape=self.shape_)
        if x.shape[1] != self.channels:
            raise WavescoreError(f"this diffusers model takes {self.channels} channels, got {x.shape[1]}")
        sig = check_sigma(sigma, x.shape[0])
        t = torch.from_numpy(self.timestep(sig.numpy()))
        abar = 1.0 / (1.0 + sig**2)
        root = abar.sqrt()               # sqrt(abar)
        sig_root = sig * root            # sqrt(1 - abar), without cancellation at small sigma
        param = next(self.unet.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        was_training = self.unet.training
        self.unet.eval()
        outs = []
        try:
            for s in range(0, x.shape[0], batch_size):
                b = slice(s, s + batch_size)
                col = lambda v: v[b].to(device=device, dtype=torch.float32).reshape(-1, 1, 1, 1)  # noqa: E731
                xb = x[b].to(device=device, dtype=torch.float32)
                out = self.unet(xb * col(root), t[b].to(device=device, dtype=torch.float32)).sample.float()
                if self._learned_variance and out.shape[1] == 2 * self.channels:
                    out = out[:, : self.channels]
                if self.prediction_type_ == "epsilon":
                    x0 = xb - col(sig) * out
                elif self.prediction_type_ == "v_prediction":
                    x0 = col(abar) * xb - col(sig_root) * out
                else:
                    x0 = out
                outs.append(x0)
        finally:
            self.unet.train(was_training)
        return torch.cat(outs).to(device=x.device, dtype=x.dtype)



def _read_json(path: Path, what: str) -> dict:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WavescoreError(f"{path}: unreadable {what} ({_first_line(exc)}); "
                             "save it again with save_pretrained") from None
    if not isinstance(cfg, dict):
        raise WavescoreError(f"{path}: not a diffusers {what} (not a JSON object); save it again with save_pretrained")
    return cfg


def load_diffusers(folder) -> DiffusersDenoiser:
    """The :class:`DiffusersDenoiser` of a diffusers folder: ``UNet2DModel.save_pretrained(DIR)``
    with the scheduler config in ``DIR/scheduler_config.json`` or ``DIR/scheduler/``, or a
    pipeline folder with ``DIR/unet/`` and ``DIR/scheduler/``. Every failure is a one-line
    WavescoreError."""
    folder = Path(folder)
    layout = ("give a folder written by UNet2DModel.save_pretrained (config.json + weights) with the "
              "scheduler's scheduler_config.json beside it or in scheduler/, or a pipeline folder with unet/ "
              "and scheduler/")
    if not folder.is_dir():
        raise WavescoreError(f"{folder}: no such folder; {layout}")
    unet_dir = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
    if not (unet_dir / "config.json").is_file():
        raise WavescoreError(f"{folder}: no U-Net config.json (nor unet/config.json); {layout}")
    candidates = [folder / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json",
                  unet_dir / "scheduler_config.json"]
    sched_path = next((p for p in candidates if p.is_file()), None)
    if sched_path is None:
        raise WavescoreError(f"{folder}: no scheduler_config.json (nor scheduler/scheduler_config.json); save the "
                             "training scheduler beside the U-Net with scheduler.save_pretrained(DIR)")
    ucfg = _read_json(unet_dir / "config.json", "U-Net config")
    scfg = _read_json(sched_path, "scheduler config")
    if ucfg.get("_class_name") != "UNet2DModel":
        raise WavescoreError(f"{unet_dir / 'config.json'}: a {ucfg.get('_class_name')!r}, only an unconditional "
                             "UNet2DModel is supported")
    if ucfg.get("num_class_embeds") is not None or ucfg.get("class_embed_type") is not None:
        raise WavescoreError(f"{unet_dir / 'config.json'}: a class-conditional UNet2DModel is not supported "
                             "(it needs class labels)")
    if "beta_schedule" not in scfg and scfg.get("trained_betas") is None:
        raise WavescoreError(f"{sched_path}: a {scfg.get('_class_name')!r} without a beta schedule; only "
                             "DDPM-style (VP, discrete-timestep) schedulers are supported")
    prediction = scfg.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise WavescoreError(f"{sched_path}: prediction_type {prediction!r} is not supported; supported: "
                             f"{', '.join(PREDICTION_TYPES)}")
    abar = alphas_cumprod_from_config(scfg, str(sched_path))
    UNet2DModel = _import_unet_class()
    try:
        unet = UNet2DModel.from_pretrained(str(unet_dir), torch_dtype=torch.float32, low_cpu_mem_usage=False)
    except Exception as exc:  # diffusers raises OSError, ValueError, EnvironmentError, ... on a bad folder
        raise WavescoreError(f"{unet_dir}: could not load the U-Net ({_first_line(exc)}); "
                             "save it again with save_pretrained") from None
    if any(prm.dtype != torch.float32 for prm in unet.parameters()):
        unet = unet.float()
    unet = unet.eval()
    return DiffusersDenoiser(unet, abar, prediction, variance_type=scfg.get("variance_type"), where=str(folder))
