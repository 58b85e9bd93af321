"""Trained reference denoisers (method.md §6): a small CNN, a small U-Net and a small DiT-like
transformer, with EDM preconditioning.

Karras et al. 2022 ("Elucidating the design space...", Table 1):

    D(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s))
    c_skip = sd^2 / (s^2 + sd^2),  c_out = s sd / sqrt(s^2 + sd^2),  c_in = 1 / sqrt(s^2 + sd^2),
    c_noise = ln(s) / 4,  sd = sigma_data = 0.5
    loss weight lambda(s) = (s^2 + sd^2) / (s sd)^2,  ln(s) ~ N(P_mean = -1.2, P_std^2 = 1.2^2).

:func:`train` checkpoints atomically after every epoch (model, optimizer, epoch, the training
RNG state, config, loss history) and resumes from an existing checkpoint; all training
randomness (init, shuffling, sigma, noise) comes from seeded generators so a resumed run
reproduces an uninterrupted one exactly (on the same machine and thread count). Every argument
is checked before any work; a non-finite loss or weight stops training with a WavescoreError
and is never saved (the last good checkpoint stays).

Checkpoints are ``.pt`` files (pickle-free: read with ``weights_only=True``, always onto the
CPU). :func:`save_safetensors` exports a trained network as weights-only ``.safetensors`` with
its configuration in a JSON file beside it; :func:`load_network` reads both kinds.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import _checks as checks
from .denoiser import check_images, check_sigma, tweedie_score
from ._io import WavescoreError, atomic_path, sha256_file, write_json

__all__ = ["SmallCNN", "SmallUNet", "SmallTransformer", "EDMDenoiser", "train", "load_network", "save_safetensors",
           "ARCHITECTURES"]

FORMAT = "wavescore-network"
FORMAT_VERSION = 1


def _noise_features(c_noise: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of c_noise (N,) -> (N, dim), as in the EDM/DDPM networks."""
    half = dim // 2
    # c_noise = ln(s)/4 spans about [-1.6, 1.1] for s in [0.002, 80]: frequencies from 0.1 to 20
    # radians per unit give features from nearly linear to a few cycles over that range.
    freqs = torch.logspace(-1.0, math.log10(20.0), half, dtype=torch.float32, device=c_noise.device)
    arg = c_noise.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)


class _Embedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, 2 * dim))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        return self.mlp(_noise_features(c_noise, self.dim))


class SmallCNN(nn.Module):
    """A plain stack of ``depth`` same-size convolutions, no downsampling, no normalisation.

    conv(C -> width), then depth - 2 hidden convs (width -> width), then conv(width -> C); each
    hidden activation is FiLM-modulated by a learned embedding of c_noise (per-layer scale and
    shift). No GroupNorm: its statistics pool over the whole image and would break locality.
    The receptive field is therefore exactly ``1 + depth (kernel - 1)`` pixels on a side
    (17 for the defaults): local and translation-equivariant (up to the border padding:
    ``padding="zeros"`` or ``"circular"``), like the ELS machine.
    """

    def __init__(self, channels: int = 1, width: int = 64, depth: int = 8, kernel: int = 3, padding: str = "zeros"):
        super().__init__()
        channels = checks.whole("SmallCNN channels", channels)
        width = checks.whole("SmallCNN width", width)
        depth, kernel = checks.whole("SmallCNN depth", depth), checks.whole("SmallCNN kernel", kernel)
        if depth < 2 or kernel < 1 or kernel % 2 == 0:
            raise WavescoreError(f"SmallCNN needs depth >= 2 and an odd kernel, got depth={depth}, kernel={kernel}")
        if padding not in ("zeros", "circular"):
            raise WavescoreError(f"padding must be 'zeros' or 'circular', got {padding!r}")
        self.channels, self.depth, self.kernel = channels, depth, kernel
        conv = lambda i, o: nn.Conv2d(i, o, kernel, padding=kernel // 2, padding_mode=padding)  # noqa: E731
        self.convs = nn.ModuleList([conv(channels, width)] + [conv(width, width) for _ in range(depth - 2)]
                                   + [conv(width, channels)])
        self.embed = _Embedding(max(16, width // 2 * 2))
        self.films = nn.ModuleList([nn.Linear(self.embed.dim * 2, 2 * width) for _ in range(depth - 1)])

    @property
    def receptive_field(self) -> int:
        return 1 + self.depth * (self.kernel - 1)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        emb = F.silu(self.embed(c_noise))
        h = x
        for conv, film in zip(self.convs[:-1], self.films):
            scale, shift = film(emb)[:, :, None, None].chunk(2, dim=1)
            h = F.silu(conv(h) * (1 + scale) + shift)
        return self.convs[-1](h)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(min(8, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        return self.skip(x) + self.conv2(h)


class SmallUNet(nn.Module):
    """A small U-Net: one residual block per resolution (32, 16, 8 for 32x32 inputs with the
    default ``mults``), average-pool down, nearest-neighbour up, concatenated skip connections,
    a bottleneck block, every block FiLM-conditioned on c_noise. About 0.5M parameters with the
    defaults. H and W must be divisible by 2^(len(mults) - 1).
    """

    def __init__(self, channels: int = 1, base: int = 32, mults: tuple[int, ...] = (1, 2, 2)):
        super().__init__()
        channels, base = checks.whole("SmallUNet channels", channels), checks.whole("SmallUNet base", base)
        if isinstance(mults, (str, bytes)) or not hasattr(mults, "__len__") or len(mults) == 0:
            raise WavescoreError(f"SmallUNet mults must be a non-empty list of whole numbers >= 1, got {mults!r}")
        mults = tuple(checks.whole("each of SmallUNet mults", m) for m in mults)
        self.channels, self.mults = channels, tuple(mults)
        widths = [base * m for m in mults]
        emb_dim = 2 * base
        self.embed = _Embedding(base)
        self.conv_in = nn.Conv2d(channels, base, 3, padding=1)
        self.down = nn.ModuleList()
        prev = base
        for w in widths:
            self.down.append(_ResBlock(prev, w, emb_dim))
            prev = w
        self.mid = _ResBlock(prev, prev, emb_dim)
        self.up = nn.ModuleList()
        for w in reversed(widths):
            self.up.append(_ResBlock(prev + w, w, emb_dim))
            prev = w
        self.norm_out = nn.GroupNorm(min(8, prev), prev)
        self.conv_out = nn.Conv2d(prev, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        factor = 2 ** (len(self.mults) - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise WavescoreError(f"SmallUNet with {len(self.mults)} resolutions needs H and W divisible by "
                                 f"{factor}, got {tuple(x.shape[-2:])}; pad the images (load_dataset pad_to)")
        emb = F.silu(self.embed(c_noise))
        h = self.conv_in(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.down) - 1:
                h = F.avg_pool2d(h, 2)
        h = self.mid(h, emb)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.up) - 1:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
        return self.conv_out(F.silu(self.norm_out(h)))


def _sincos_2d(gh: int, gw: int, dim: int, device=None) -> torch.Tensor:
    """Fixed 2D sine-cosine position embedding (gh * gw, dim), row-major tokens (MAE/DiT):
    half the channels encode the row, half the column. Fixed rather than learned, so the
    network holds no parameter that depends on the image size (the constructor does not know
    it) and a checkpoint's weights never depend on the data's shape."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32, device=device) / max(quarter, 1))
    rows = torch.arange(gh, dtype=torch.float32, device=device)[:, None] * omega[None]  # (gh, quarter)
    cols = torch.arange(gw, dtype=torch.float32, device=device)[:, None] * omega[None]
    emb = torch.cat([torch.sin(rows)[:, None].expand(gh, gw, quarter), torch.cos(rows)[:, None].expand(gh, gw, quarter),
                     torch.sin(cols)[None].expand(gh, gw, quarter), torch.cos(cols)[None].expand(gh, gw, quarter)],
                    dim=-1).reshape(gh * gw, 4 * quarter)
    return F.pad(emb, (0, dim - 4 * quarter))  # dim is a multiple of 4 in practice; zero the rest otherwise


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class _DiTBlock(nn.Module):
    """Pre-norm attention + MLP block with adaLN-Zero (Peebles & Xie 2023): the noise embedding
    gives per-sample shift, scale and gate for both branches; the gates start at zero, so every
    block starts as the identity and training opens them."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, emb_dim: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)  # the affine comes from adaLN
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * dim, dim))
        self.ada = nn.Linear(emb_dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(emb).chunk(6, dim=1)
        n, t, d = x.shape
        q, k, v = self.qkv(_modulate(self.norm1(x), shift1, scale1)).reshape(n, t, 3, self.heads, d // self.heads) \
            .permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d)
        x = x + gate1[:, None] * self.proj(h)
        return x + gate2[:, None] * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class SmallTransformer(nn.Module):
    """A small DiT-like denoiser (Peebles & Xie 2023): ``patch`` x ``patch`` pixel patches become
    tokens (a 32x32 image with patch 4: 64 tokens) through a linear embedding plus a fixed 2D
    sine-cosine position embedding, ``depth`` pre-norm attention blocks of width ``dim`` with
    ``heads`` heads and an MLP of ``mlp_ratio * dim``, sigma conditioning by adaLN-Zero from an
    embedding of c_noise, then a final adaLN and a linear map back to the patches. Every token
    sees every other: the opposite of SmallCNN's locality. About 1.2M parameters with the
    defaults. H and W must be divisible by ``patch``.
    """

    def __init__(self, channels: int = 1, dim: int = 128, depth: int = 4, heads: int = 4, patch: int = 4,
                 mlp_ratio: int = 4):
        super().__init__()
        channels = checks.whole("SmallTransformer channels", channels)
        dim, depth = checks.whole("SmallTransformer dim", dim), checks.whole("SmallTransformer depth", depth)
        heads, patch = checks.whole("SmallTransformer heads", heads), checks.whole("SmallTransformer patch", patch)
        mlp_ratio = checks.whole("SmallTransformer mlp_ratio", mlp_ratio)
        if dim % heads or dim < 4:
            raise WavescoreError(f"SmallTransformer needs dim >= 4 divisible by heads, got dim={dim}, heads={heads} "
                                 "(--width, --heads on the command line): "
                                 "choose e.g. dim=128, heads=4")
        self.channels, self.dim, self.depth, self.heads, self.patch = channels, dim, depth, heads, patch
        self.patch_embed = nn.Linear(channels * patch * patch, dim)
        # The noise embedding is dim wide (_Embedding doubles its feature count): adaLN maps it to
        # 6 * dim per block, the largest weights of the net, so a wider one would mostly add those.
        self.embed = _Embedding(max(8, dim // 2 // 2 * 2))
        emb_dim = 2 * self.embed.dim
        self.blocks = nn.ModuleList([_DiTBlock(dim, heads, mlp_ratio, emb_dim) for _ in range(depth)])
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(emb_dim, 2 * dim)
        self.out = nn.Linear(dim, channels * patch * patch)
        # adaLN-Zero: the output starts at zero, so the EDM denoiser starts as c_skip x.
        for layer in (self.ada_out, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def check_size(self, h: int, w: int) -> None:
        if h % self.patch or w % self.patch:
            raise WavescoreError(f"SmallTransformer with patch {self.patch} needs H and W divisible by {self.patch}, "
                                 f"got {(h, w)}: pad the images (load_dataset pad_to) or choose a patch that divides "
                                 "both")

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        self.check_size(h, w)
        p, gh, gw = self.patch, h // self.patch, w // self.patch
        tokens = x.reshape(n, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, c * p * p)
        t = self.patch_embed(tokens) + _sincos_2d(gh, gw, self.dim, device=x.device).to(x.dtype)
        emb = F.silu(self.embed(c_noise)).to(x.dtype)
        for block in self.blocks:
            t = block(t, emb)
        shift, scale = self.ada_out(emb).chunk(2, dim=1)
        t = self.out(_modulate(self.norm_out(t), shift, scale))
        return t.reshape(n, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


ARCHITECTURES = {"cnn": SmallCNN, "unet": SmallUNet, "transformer": SmallTransformer}


class EDMDenoiser(nn.Module):
    """EDM preconditioning around ``net`` (Karras et al. 2022, Table 1; module notes).

    ``forward(x, sigma)`` is differentiable (training); ``denoise(x, sigma)`` is the common
    inference interface: no grad, eval mode, batched, float32 inside, returns x's dtype.
    ``shape_`` is the image shape (C, H, W) the network was trained on (None if unknown).
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, shape=None):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)
        self.shape_ = None if shape is None else tuple(int(s) for s in shape)

    def coefficients(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise) for sigma (N,) (Karras et al. 2022, Table 1)."""
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / torch.sqrt(sigma**2 + sd**2)
        c_in = 1 / torch.sqrt(sigma**2 + sd**2)
        c_noise = torch.log(sigma) / 4
        return c_skip, c_out, c_in, c_noise

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """D(x, sigma), differentiable: ``model(x, sigma)`` (the k-diffusion convention). The
        network runs in its parameters' dtype; the result comes back in x's."""
        dtype = next(self.parameters(), x).dtype
        xin = x.to(dtype)
        sigma = torch.as_tensor(sigma, dtype=dtype, device=x.device).flatten()
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        b = lambda c: c.reshape(-1, 1, 1, 1)  # noqa: E731
        return (b(c_skip) * xin + b(c_out) * self.net(b(c_in) * xin, c_noise)).to(x.dtype)

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Tweedie (method.md §1) from :meth:`denoise`. (``self(x, sigma)`` is ``forward``: the same
        denoiser, differentiable, for training.)"""
        return tweedie_score(self, x, sigma)

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma, batch_size: int = 256) -> torch.Tensor:
        check_images(x, shape=self.shape_)
        sig = check_sigma(sigma, x.shape[0])
        device = next(self.parameters(), torch.empty(0)).device  # a parameter-free net runs on the CPU
        was_training = self.training
        self.eval()
        try:
            outs = [self(x[s : s + batch_size].to(device=device, dtype=torch.float32),
                         sig[s : s + batch_size].to(device=device, dtype=torch.float32))
                    for s in range(0, x.shape[0], batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(outs).to(device=x.device, dtype=x.dtype)


# ---------------------------------------------------------------------------------- training
def _log_path(out: Path) -> Path:
    return out.with_name(out.stem + ".log.json")


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message``, cut to ``limit`` characters, for one-line errors."""
    text = (str(exc).strip().splitlines() or [""])[0]
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_config(config, where: str, hint: str) -> dict:
    """The stored configuration if it can build a network, else a one-line WavescoreError."""
    def bad(what):
        return WavescoreError(f"{where}: damaged network configuration ({what}); {hint}")
    if not isinstance(config, dict):
        raise bad(f"'config' is {type(config).__name__}, not a dictionary")
    arch = config.get("arch")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise bad(f"unknown architecture {arch!r}, expected one of {', '.join(ARCHITECTURES)}")
    shape = config.get("shape")
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)):
        raise bad(f"'shape' is {shape!r}, expected [C, H, W] of positive whole numbers")
    sd = config.get("sigma_data")
    if isinstance(sd, bool) or not isinstance(sd, (int, float)) or not math.isfinite(sd) or sd <= 0:
        raise bad(f"'sigma_data' is {sd!r}, expected a finite number > 0")
    if not isinstance(config.get("arch_kwargs") or {}, dict):
        raise bad(f"'arch_kwargs' is {config.get('arch_kwargs')!r}, expected a dictionary")
    return config


def _build(config: dict) -> EDMDenoiser:
    name = config["arch"]
    if name not in ARCHITECTURES:
        raise WavescoreError(f"unknown architecture {name!r}: choose one of {', '.join(ARCHITECTURES)}")
    kwargs = dict(config.get("arch_kwargs") or {})
    if "mults" in kwargs:
        kwargs["mults"] = tuple(kwargs["mults"])
    net = ARCHITECTURES[name](channels=config["shape"][0], **kwargs)
    model = EDMDenoiser(net, sigma_data=config["sigma_data"], shape=config["shape"])
    model.config_ = config
    return model


_RETRAIN = "delete it and train again"


def _read_checkpoint(path: Path) -> dict:
    """The checkpoint dict at ``path``, its keys checked; every failure is a one-line WavescoreError.

    Tensors are always read onto the CPU (``map_location="cpu"``), so a checkpoint written on a
    GPU machine loads on a CPU-only one.
    """
    if not path.exists():
        raise WavescoreError(f"{path}: no such network checkpoint; train one with wavescore.networks.train")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types on a truncated or foreign file
        raise WavescoreError(f"{path}: not a readable network checkpoint ({_one_line(exc)}); "
                             "it may be truncated or corrupt: delete it and train again") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise WavescoreError(f"{path}: not a wavescore network checkpoint (no '{FORMAT}' header); "
                             "give a file written by wavescore.networks.train")
    if ckpt.get("version") != FORMAT_VERSION:
        raise WavescoreError(f"{path}: checkpoint format version {ckpt.get('version')!r}, this wavescore "
                             f"reads version {FORMAT_VERSION}; retrain with this version")
    _check_config(ckpt.get("config"), str(path), _RETRAIN)
    weights = ckpt.get("model")
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        raise WavescoreError(f"{path}: damaged network checkpoint (no weights: 'model' is missing or not a "
                             f"dictionary of tensors); {_RETRAIN}")
    epoch = ckpt.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise WavescoreError(f"{path}: damaged network checkpoint ('epoch' is {epoch!r}, expected a whole "
                             f"number >= 0); {_RETRAIN}")
    history = ckpt.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise WavescoreError(f"{path}: damaged network checkpoint ('history' is not a list of epochs); {_RETRAIN}")
    return ckpt


def _restore(path: Path, config: dict, weights: dict, hint: str) -> EDMDenoiser:
    """Build the network of ``config`` on the CPU and load ``weights`` into it (strictly)."""
    try:
        with torch.device("cpu"):
            model = _build(config)
        model.load_state_dict(weights)
    except WavescoreError as exc:
        raise WavescoreError(f"{path}: the stored configuration cannot build a network ({exc}); {hint}") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise WavescoreError(f"{path}: the stored weights do not match the stored configuration "
                             f"({_one_line(exc)}); {hint}") from None
    return model.cpu()


def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError:
        raise WavescoreError("reading or writing .safetensors needs the safetensors package: "
                             "pip install 'wavescore[diffusers]' (or pip install safetensors)") from None
    return st


def _sidecar(path: Path) -> Path:
    """The JSON that holds a ``.safetensors`` network's configuration: ``path.with_suffix(".json")``."""
    return path.with_suffix(".json")


def save_safetensors(model, path) -> Path:
    """Export a trained network as weights-only ``path`` (.safetensors) plus its configuration in
    ``path.with_suffix(".json")``: ``{"format", "version", "weights", "sha256", "config", "epoch",
    "history"}``. ``model`` is an EDMDenoiser returned by :func:`train` or :func:`load_network`, or
    the path of a checkpoint (.pt) to convert. Both files are written atomically; the JSON records
    the weights' SHA-256, so a weights file that does not belong to its JSON is refused on loading.
    :func:`load_network` reads the pair back (the denoiser is bitwise the same). Returns ``path``.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise WavescoreError(f"{path}: give a file name ending in .safetensors")
    if isinstance(model, (str, os.PathLike)):
        model = load_network(model)
    config = getattr(model, "config_", None)
    if not isinstance(model, EDMDenoiser) or not isinstance(config, dict):
        raise WavescoreError("save_safetensors needs a network returned by wavescore.networks.train or "
                             "load_network (it carries the configuration to store), or a checkpoint path")
    st = _safetensors()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        st.save_file(tensors, str(tmp), metadata={"format": FORMAT, "version": str(FORMAT_VERSION)})
        digest = sha256_file(tmp)
    write_json(_sidecar(path), {"format": FORMAT, "version": FORMAT_VERSION, "weights": path.name,
                                "sha256": digest, "config": config, "epoch": int(getattr(model, "epoch_", 0)),
                                "history": list(getattr(model, "history_", []))})
    return path


def _load_safetensors(path: Path) -> EDMDenoiser:
    hint = "export it again with wavescore.networks.save_safetensors"
    if not path.exists():
        raise WavescoreError(f"{path}: no such network file; export one with wavescore.networks.save_safetensors")
    side = _sidecar(path)
    if not side.exists():
        raise WavescoreError(f"{path}: its configuration {side.name} is missing beside it (a .safetensors holds "
                             f"weights only); copy the JSON along or {hint}")
    try:
        meta = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WavescoreError(f"{side}: unreadable network configuration ({_one_line(exc)}); {hint}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise WavescoreError(f"{side}: not a wavescore network configuration (no '{FORMAT}' format); {hint}")
    if meta.get("version") != FORMAT_VERSION:
        raise WavescoreError(f"{side}: network format version {meta.get('version')!r}, this wavescore reads "
                             f"version {FORMAT_VERSION}; {hint}")
    config = _check_config(meta.get("config"), str(side), hint)
    epoch, history = meta.get("epoch", 0), meta.get("history", [])
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0 or not isinstance(history, list):
        raise WavescoreError(f"{side}: damaged network configuration ('epoch' or 'history'); {hint}")
    if "sha256" in meta and meta["sha256"] != sha256_file(path):
        raise WavescoreError(f"{path}: these weights are not the ones {side.name} was written with (SHA-256 "
                             f"differs); the pair is mixed up or one file is damaged: {hint}")
    st = _safetensors()
    try:
        weights = st.load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error type on a truncated or foreign file
        raise WavescoreError(f"{path}: not a readable .safetensors file ({_one_line(exc)}); {hint}") from None
    model = _restore(path, config, weights, hint)
    model.epoch_, model.history_ = epoch, history
    return model.eval()


def load_network(path) -> EDMDenoiser:
    """The trained EDMDenoiser stored at ``path``, on the CPU, in eval mode, with ``epoch_``,
    ``history_`` and ``config_``: a checkpoint (.pt) written by :func:`train` (a GPU-written one
    loads on a CPU-only machine), or weights (.safetensors) with the JSON beside them written by
    :func:`save_safetensors`. Every failure is a one-line WavescoreError."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    ckpt = _read_checkpoint(path)
    model = _restore(path, ckpt["config"], ckpt["model"], _RETRAIN)
    model.epoch_ = ckpt["epoch"]
    model.history_ = ckpt.get("history", [])
    return model.eval()


def _check_arch_kwargs(arch: str, arch_kwargs) -> dict:
    if arch_kwargs is None:
        return {}
    if not isinstance(arch_kwargs, dict):
        raise WavescoreError(f"arch_kwargs must be a dictionary of {arch} options, got {type(arch_kwargs).__name__}")
    allowed = [k for k in inspect.signature(ARCHITECTURES[arch]).parameters if k != "channels"]
    for key in arch_kwargs:
        if key not in allowed:
            raise WavescoreError(f"unknown {arch} option {key!r} in arch_kwargs: choose from {', '.join(allowed)} "
                                 "(the channels come from the data)")
    return dict(arch_kwargs)


def _diverged(out: Path, epoch: int, step: int, what: str, lr: float, kept: int) -> WavescoreError:
    keep = (f"{out} keeps the last good epoch ({kept})" if kept else f"nothing was saved to {out}")
    return WavescoreError(f"training diverged at epoch {epoch} step {step} ({what}): lower --lr (now {lr:g}) "
                          f"and train again; {keep}")


def _edm_error(model, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """The EDM loss's terms lambda(sigma) |D(x0 + sigma n, sigma) - x0|^2 per pixel (Karras et al.
    2022, eq. 8 with Table 1's weight), (N, C, H, W): training and validation average them."""
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    den = model(x0 + sigma.reshape(-1, 1, 1, 1) * noise, sigma)
    return weight.reshape(-1, 1, 1, 1) * (den - x0) ** 2


def train(arch: str, data, *, epochs: int, out, batch_size: int = 128, lr: float = 2e-4, seed: int = 0,
          progress: bool = True, max_minutes: float | None = None, arch_kwargs: dict | None = None,
          sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2, validation=None,
          plateau: float | None = None) -> EDMDenoiser:
    """Train ``arch`` ("cnn", "unet" or "transformer", constructor options in ``arch_kwargs``) on
    ``data`` (N, C, H, W) with the EDM loss, Adam(lr), for ``epochs`` epochs in total.

    Writes the checkpoint ``out`` atomically after every epoch and the loss log beside it
    (``<stem>.log.json``). If ``out`` exists (same configuration), training resumes after its
    last completed epoch; a kill mid-epoch loses only that epoch. ``max_minutes`` stops after
    the epoch during which the budget ran out (call again to continue). Returns the model
    (eval mode) with ``epoch_``, ``history_`` and ``config_`` attributes.

    ``validation`` (M, C, H, W) held-out images: after every epoch the same EDM loss on them, with
    one sigma and noise per image drawn once from a fixed seed (so epochs compare exactly), goes
    into the log as ``val_loss`` (and, on resuming a checkpoint whose last epoch lacks it, is
    measured for that epoch first). ``plateau`` (needs ``validation``): stop once an epoch lowers
    ``val_loss`` by less than this fraction of the previous epoch's (e.g. 0.01); ``epochs`` stays
    the most. Neither is part of the configuration: a run resumes with or without them.

    Every argument is checked before any work and before ``out`` is read or written. A
    non-finite loss (or weights that turn non-finite) stops training with a WavescoreError
    ("training diverged at epoch E step S ..."); nothing of that epoch is saved, so ``out``
    keeps the last good epoch.
    """
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if not isinstance(data, torch.Tensor) or data.dim() != 4 or not data.is_floating_point() or len(data) == 0:
        raise WavescoreError(f"data must be a non-empty float tensor (N, C, H, W), got "
                             f"{tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__}")
    epochs = checks.whole("epochs", epochs)
    batch_size = checks.whole("batch_size", batch_size)
    lr = checks.real("lr", lr, above=0)
    try:
        seed = checks.whole("seed", seed, -(2**63), maximum=2**64 - 1)
    except WavescoreError:
        raise WavescoreError(f"seed must be a whole number (e.g. 0), got {seed!r}") from None
    if max_minutes is not None:
        max_minutes = checks.real("max_minutes", max_minutes, above=0)
    sigma_data = checks.real("sigma_data", sigma_data, above=0)
    p_mean = checks.real("p_mean", p_mean)
    p_std = checks.real("p_std", p_std, minimum=0)
    if plateau is not None:
        plateau = checks.real("plateau", plateau, above=0)
        if validation is None:
            raise WavescoreError("plateau= stops on the validation loss: pass validation= held-out images too")
    if validation is not None:
        validation = check_images(validation, "validation", finite=True).detach().cpu().float()
        if len(validation) == 0 or tuple(validation.shape[1:]) != tuple(data.shape[1:]):
            raise WavescoreError(f"validation must be non-empty images shaped like the data {tuple(data.shape[1:])}, "
                                 f"got {tuple(validation.shape)}")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise WavescoreError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    arch_kwargs = _check_arch_kwargs(arch, arch_kwargs)
    out = Path(out)
    data = data.detach().cpu().float()
    if not torch.isfinite(data).all():
        raise WavescoreError("data contains NaN or infinite values: clean or drop those images before training")
    config = {"arch": arch, "arch_kwargs": dict(arch_kwargs or {}), "shape": list(data.shape[1:]),
              "sigma_data": float(sigma_data), "batch_size": int(batch_size), "lr": float(lr), "seed": int(seed),
              "p_mean": float(p_mean), "p_std": float(p_std), "n_train": int(len(data))}
    if "mults" in config["arch_kwargs"]:
        config["arch_kwargs"]["mults"] = list(config["arch_kwargs"]["mults"])

    # Initialise under the seed without disturbing the caller's global RNG. The constructors
    # check the option values (widths, depth, kernel, mults) before out is touched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = _build(config)
        except WavescoreError as exc:
            raise WavescoreError(f"arch_kwargs: {exc}") from None
        except (TypeError, ValueError, RuntimeError) as exc:
            raise WavescoreError(f"arch_kwargs {config['arch_kwargs']} cannot build a {arch} ({_one_line(exc)}); "
                                 "fix the options") from None
    if arch == "unet":
        factor = 2 ** (len(model.net.mults) - 1)
        if data.shape[-1] % factor or data.shape[-2] % factor:
            raise WavescoreError(f"a unet with {len(model.net.mults)} resolutions needs H and W divisible by {factor}, "
                                 f"the data are {tuple(data.shape[-2:])}: pad the images (load_dataset pad_to) "
                                 "or use fewer mults")
    if arch == "transformer":  # its constructor does not know the image size: check it here, before out
        model.net.check_size(*data.shape[-2:])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)  # shuffling, sigma and noise draws
    start, history = 0, []
    if out.exists():
        ckpt = _read_checkpoint(out)
        if ckpt["config"] != config:
            diff = {k: (ckpt["config"].get(k), v) for k, v in config.items() if ckpt["config"].get(k) != v}
            raise WavescoreError(f"{out} holds a run with a different configuration {diff} (stored, requested); "
                                 "give another path or delete it to start over")
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            gen.set_state(ckpt["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise WavescoreError(f"{out}: damaged checkpoint, cannot resume from it (weights, optimizer or RNG "
                                 f"state: {_one_line(exc)}); delete it to start over") from None
        start, history = ckpt["epoch"], list(ckpt.get("history", []))

    val_loss = None
    if validation is not None:
        vgen = torch.Generator().manual_seed(seed + 1)
        v_sigma = torch.exp(p_mean + p_std * torch.randn(len(validation), generator=vgen))
        v_noise = torch.randn(validation.shape, generator=vgen)

        def val_loss() -> float:
            # the training loss on fixed draws, batched, without gradients
            model.eval()
            total = 0.0
            with torch.no_grad():
                for s in range(0, len(validation), 4 * batch_size):
                    part = slice(s, s + 4 * batch_size)
                    err = _edm_error(model, validation[part], v_sigma[part], v_noise[part], sigma_data)
                    total += float(err.mean((1, 2, 3)).sum())
            model.train()
            return total / len(validation)

        if history and "val_loss" not in history[-1]:
            history[-1] = dict(history[-1], val_loss=val_loss(), val_measured="on resume")

    def plateaued() -> bool:
        v = [h.get("val_loss") for h in history[-2:]]
        return plateau is not None and len(v) == 2 and None not in v and v[1] > (1 - plateau) * v[0]

    n = len(data)
    steps_per_epoch = math.ceil(n / batch_size)
    t0 = time.perf_counter()
    bar = None
    if progress and start < epochs:
        from ._io import progress_bar

        bar = progress_bar(total=(epochs - start) * steps_per_epoch, desc=f"train {arch}", unit="step")
    model.train()
    try:
        for epoch in range(start, epochs):
            if plateaued():  # checked first, so a resumed run that had plateaued trains no further
                break
            t_epoch, total = time.perf_counter(), 0.0
            perm = torch.randperm(n, generator=gen)
            for step, s in enumerate(range(0, n, batch_size), 1):
                x0 = data[perm[s : s + batch_size]]
                # ln(sigma) ~ N(P_mean, P_std^2) (Karras et al. 2022, Table 1).
                sigma = torch.exp(p_mean + p_std * torch.randn(len(x0), generator=gen))
                noise = torch.randn(x0.shape, generator=gen)
                loss = _edm_error(model, x0, sigma, noise, sigma_data).mean()
                value = loss.item()
                if not math.isfinite(value):
                    raise _diverged(out, epoch + 1, step, f"loss {value}", lr, history[-1]["epoch"] if history else 0)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += value * len(x0)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{value:.4f}")
            if not all(torch.isfinite(p).all() for p in model.parameters()):  # the epoch's last step blew up
                raise _diverged(out, epoch + 1, step, "the weights became non-finite", lr,
                                history[-1]["epoch"] if history else 0)
            history.append({"epoch": epoch + 1, "loss": total / n, "seconds": time.perf_counter() - t_epoch})
            if val_loss is not None:
                history[-1]["val_loss"] = val_loss()
            ckpt = {"format": FORMAT, "version": FORMAT_VERSION, "config": config, "epoch": epoch + 1,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": gen.get_state(),
                    "history": history}
            with atomic_path(out) as tmp:
                torch.save(ckpt, tmp)
            write_json(_log_path(out), {"checkpoint": out.name, "config": config, "epochs": history})
            if max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes and epoch + 1 < epochs:
                break
    finally:
        if bar is not None:
            bar.close()
    model.epoch_ = history[-1]["epoch"] if history else 0
    model.history_ = history
    return model.eval()
