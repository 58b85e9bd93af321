"""Where the score lives: which subbands, moments and dependencies matter at each noise level.

- :func:`subband_errors`: the denoising MSE split exactly over levels and orientations
  (``||D - x||^2 = sum_bands ||W(D - x)|_band||^2``, since W is orthonormal; method.md §7);
  :func:`band_energies` is that split of any error (``compare`` uses it for the residual
  between a machine and the network it mimics).
- :func:`shapley_groups`: exact Shapley values of feature groups (orientation partners,
  same-scale neighbours, parents, higher-order moments) for the reduction in test MSE. Each
  coalition is a sub-family of one fitted machine (:meth:`ScoreMachine.restrict`): a smaller
  closed-form solve, no refit, which is what makes exact attribution cheap here.
- :func:`shrinkage_curves` and :func:`local_filters`: the fitted nonlinearities and linear
  filters themselves.
- :func:`hedging` and :func:`block_edges`: two biases of a network read off its denoiser, how
  decisively it chooses between digits and how blocky it is on a patch grid.
- :func:`handover`: where along the sampling path a model's final samples part from a
  network's, by handing the trajectory from one to the other at each noise level.
"""
from __future__ import annotations

import itertools
import math
from math import factorial
from typing import Mapping, Sequence

import numpy as np
import torch

from . import _checks as checks
from ._io import WavescoreError, progress_bar
from .denoiser import Denoiser
from .evaluation import noise_for

GROUPS = ("orientation", "neighbour", "parent", "nonlinear")


def band_energies(err: torch.Tensor, transform, *, by_level: bool = False) -> tuple[list[str], torch.Tensor]:
    """The squared norm of ``err`` (N, C, H, W) summed over images, split over wavelet bands:
    ``||err||^2 = sum_bands ||W err|_band||^2`` exactly, W being orthonormal (method.md §7).

    Returns (labels, float64 energies). Per band (``by_level=False``): the layout's bands,
    coarse to fine (``a3, h3, v3, d3, ..., d1``). Per level (``by_level=True``): the three
    orientations of each level together, fine to coarse, then the approximation
    (``L1, ..., LJ, aJ``)."""
    e = transform.forward(err.double()) ** 2
    lay = transform.layout
    per_band = {b.name: e[:, b.start : b.stop].sum() for b in lay.bands}
    if not by_level:
        return list(per_band), torch.stack(list(per_band.values()))
    levels = range(1, lay.levels + 1)
    labels = [f"L{j}" for j in levels] + [f"a{lay.levels}"]
    parts = [sum(per_band[f"{o}{j}"] for o in "hvd") for j in levels] + [per_band[f"a{lay.levels}"]]
    return labels, torch.stack(parts)


def subband_errors(model, x: torch.Tensor, sigmas: Sequence[float], transform, *, seed: int = 0,
                   batch: int = 500) -> dict:
    """Per sigma, the MSE per pixel contributed by each band (rows sum to the total MSE)."""
    names = [b.name for b in transform.layout.bands]
    x = x.double()
    rows = []
    for k, s in enumerate(sigmas):
        z = noise_for(x.shape, k, seed)
        acc = torch.zeros(len(names), dtype=torch.float64)
        for b in range(0, len(x), batch):
            err = model.denoise(x[b : b + batch] + s * z[b : b + batch], s).double() - x[b : b + batch]
            acc += band_energies(err, transform)[1]
        rows.append((acc / x.numel()).tolist())
    return {"sigmas": list(map(float, sigmas)), "bands": names, "mse": rows}


def _keep(groups: set):
    """Feature filter for a coalition: variables of the allowed roles, degree <= 1 unless
    "nonlinear" is in the coalition."""
    allowed = {"own"} | (groups & {"orientation", "neighbour", "parent"})

    def keep(exps, roles):
        banned = [k for k, r in enumerate(roles) if r not in allowed]
        ok = (exps[:, banned] == 0).all(1) if banned else np.ones(len(exps), dtype=bool)
        if "nonlinear" not in groups:
            ok &= exps.sum(1) <= 1
        return ok

    return keep


def _mse(model, x, sigmas, seed):
    out = []
    for k, s in enumerate(sigmas):
        z = noise_for(x.shape, k, seed)
        out.append(float(((model.denoise(x + s * z, s).double() - x) ** 2).mean()))
    return np.array(out)


def shapley_groups(machine, x: torch.Tensor, sigmas: Sequence[float], *, groups: Sequence[str] = GROUPS,
                   seed: int = 0, progress: bool = True) -> dict:
    """Exact Shapley values (over ``groups``) of the test-MSE reduction relative to the
    own-coefficient linear machine (Wiener shrinkage), per sigma; plus every coalition's MSE.

    phi_g = sum_{S not containing g} |S|! (n-|S|-1)! / n! [v(S + g) - v(S)],  v(S) = MSE(empty) - MSE(S).
    """
    from ._io import progress_bar

    x = x.double()
    present = set(r for roles in machine.feature_roles() for r in roles)
    groups = [g for g in groups if g == "nonlinear" and machine.degree > 1 or g in present]
    n = len(groups)
    mse = {}
    coalitions = [frozenset(c) for r in range(n + 1) for c in itertools.combinations(groups, r)]
    for c in progress_bar(coalitions, desc="coalitions", enabled=progress, leave=False):
        mse[c] = _mse(machine.restrict(_keep(set(c))), x, sigmas, seed)
    base = mse[frozenset()]
    shap = {}
    for g in groups:
        total = np.zeros(len(sigmas))
        for c in coalitions:
            if g in c:
                continue
            w = factorial(len(c)) * factorial(n - len(c) - 1) / factorial(n)
            total += w * (mse[c] - mse[c | {g}])
        shap[g] = total.tolist()
    return {
        "sigmas": list(map(float, sigmas)),
        "groups": groups,
        "baseline_mse": base.tolist(),
        "full_mse": mse[frozenset(groups)].tolist(),
        "shapley": shap,
        "coalitions": {"+".join(sorted(c)) or "own-linear": v.tolist() for c, v in mse.items()},
    }


def shrinkage_curves(machine, sigmas: Sequence[float], *, points: int = 101, span: float = 4.0) -> dict:
    """Denoiser of one coefficient as a function of its noisy value, D(w) = w + s^2 c(w), for an
    ``independent`` machine: per band (channel 0, the band's middle position), w over
    +-span noisy standard deviations."""
    assert machine.family == "independent", "shrinkage curves need an independent machine"
    lay = machine.transform_.layout
    acc = machine.moments_
    out = {"sigmas": list(map(float, sigmas)), "bands": {}}
    for band in lay.bands:
        i = band.start + (band.h // 2) * band.w + band.w // 2
        k = [j for j, g in enumerate(acc.groups) if i in set(g.out.tolist())][0]
        pos = int(np.nonzero(acc.groups[k].out == i)[0][0])
        curves = []
        for s in sigmas:
            sd = float(acc.scale[i] ** 2 + s**2) ** 0.5
            w = torch.linspace(-span * sd, span * sd, points, dtype=torch.float64) + float(acc.shift[i])
            theta = machine.parameters(s)[k]
            th = theta[pos] if theta.shape[0] > 1 else theta[0]
            u = (w - acc.shift[i]) / acc.scale[i]
            phi = acc.features[k](u[:, None])
            c = phi @ th
            curves.append({"w": w.tolist(), "denoised": (w + s**2 * c).tolist()})
        out["bands"][band.name] = curves
    return out


def local_filters(machine, sigmas: Sequence[float]) -> dict:
    """The linear part of a ``local`` degree-1 shared machine: per band, the weights on each
    window position, as (2r+1) x (2r+1) images (wrapped offsets merged in small bands)."""
    assert machine.family == "local" and machine.shared, "local filters need a shared local machine"
    r = machine.radius
    lay = machine.transform_.layout
    acc = machine.moments_
    out = {"sigmas": list(map(float, sigmas)), "bands": {}}
    for k, g in enumerate(acc.groups):
        if not g.name.endswith("/c0"):
            continue
        i = int(g.out[0])
        band = lay.band_of(i)
        filt = []
        for s in sigmas:
            th = machine.parameters(s)[k][0]
            img = np.zeros((2 * r + 1, 2 * r + 1))
            for l, j in enumerate(g.nbr[0]):
                if lay.level[j] != lay.level[i] or lay.orient[j] != lay.orient[i]:
                    continue
                # periodic offset, taken in (-size/2, size/2]: small bands wrap onto themselves
                dr = (int(lay.row[j]) - int(lay.row[i])) % band.h
                dc = (int(lay.col[j]) - int(lay.col[i])) % band.w
                dr, dc = (dr - band.h if dr > band.h // 2 else dr), (dc - band.w if dc > band.w // 2 else dc)
                if abs(dr) <= r and abs(dc) <= r:
                    # theta is in standardised units: weight on w_j = theta_l / scale_j
                    img[dr + r, dc + r] += float(th[1 + l] / acc.scale[j])
            filt.append(img.tolist())
        out["bands"][band.name] = filt
    return out


# ------------------------------------------------------------------------------ plots
def _save(fig, path):
    from .plots import save_figure

    save_figure(fig, path)


def _plt():
    from .plots import pyplot

    return pyplot()


def plot_subband_errors(res: dict, path, title: str = "") -> None:
    plt = _plt()
    m = np.array(res["mse"])
    frac = m / m.sum(1, keepdims=True)
    fig, ax = plt.subplots(figsize=(8, 4))
    im = ax.imshow(frac, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(res["sigmas"])), [f"{s:g}" for s in res["sigmas"]])
    ax.set_xticks(range(len(res["bands"])), res["bands"], rotation=90)
    ax.set(xlabel="subband (coarse to fine)", ylabel="σ", title=title or "share of denoising MSE per subband")
    fig.colorbar(im, ax=ax, label="fraction of MSE")
    _save(fig, path)


def plot_shapley(res: dict, path, title: str = "") -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    base = np.array(res["baseline_mse"])
    for g, v in res["shapley"].items():
        axes[0].semilogx(res["sigmas"], np.array(v) / base, marker="o", ms=3, label=g)
    axes[0].set(xlabel="σ", ylabel="Shapley value / MSE(own, linear)", title=title or "what lowers the error")
    axes[0].axhline(0, color="k", lw=0.6)
    axes[0].legend()
    for name, v in res["coalitions"].items():
        if name.count("+") <= 0 and name != "own-linear":
            axes[1].semilogx(res["sigmas"], np.array(v) / base, marker="o", ms=3, label=f"own-linear + {name}")
    axes[1].semilogx(res["sigmas"], np.array(res["full_mse"]) / base, "k--", label="all groups")
    axes[1].set(xlabel="σ", ylabel="MSE / MSE(own, linear)", title="one group added to own-linear")
    axes[1].axhline(1, color="k", lw=0.6)
    axes[1].legend(fontsize=7)
    _save(fig, path)


def plot_shrinkage(res: dict, path) -> None:
    plt = _plt()
    bands = [b for b in res["bands"] if not b.startswith("a")]
    fig, axes = plt.subplots(1, len(bands), figsize=(2.2 * len(bands), 2.6), squeeze=False)
    for ax, b in zip(axes[0], bands):
        for s, c in zip(res["sigmas"], res["bands"][b]):
            ax.plot(c["w"], c["denoised"], lw=1, label=f"σ={s:g}")
        ax.plot(c["w"], c["w"], "k:", lw=0.6)
        ax.set_title(b, fontsize=8)
        ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=6)
    _save(fig, path)


def plot_filters(res: dict, path) -> None:
    plt = _plt()
    bands = list(res["bands"])
    fig, axes = plt.subplots(len(res["sigmas"]), len(bands), figsize=(1.3 * len(bands), 1.4 * len(res["sigmas"])),
                             squeeze=False)
    for j, b in enumerate(bands):
        for i, s in enumerate(res["sigmas"]):
            img = np.array(res["bands"][b][i])
            lim = np.abs(img).max() or 1
            axes[i][j].imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
            axes[i][j].set_xticks([])
            axes[i][j].set_yticks([])
            if i == 0:
                axes[i][j].set_title(b, fontsize=7)
            if j == 0:
                axes[i][j].set_ylabel(f"σ={s:g}", fontsize=7)
    _save(fig, path)


# ------------------------------------------------------------------------------ scheduling
class ScheduledMachine(Denoiser):
    """A sigma-scheduled machine: at each sigma, the candidate chosen on held-out data.

    ``choice`` maps grid sigmas to candidate names; ``denoise(x, s)`` uses the choice at the
    grid sigma nearest to s in log scale (the way the ELS machine's patch size grows with
    noise, but chosen by data instead of calibrated by hand)."""

    def __init__(self, candidates: Mapping[str, object], choice: Mapping[float, str]):
        self.candidates = dict(candidates)
        self.choice = dict(sorted(choice.items()))
        first = next(iter(self.candidates.values()))
        self.shape_ = getattr(first, "shape_", None)

    def pick(self, sigma: float) -> str:
        grid = np.array(list(self.choice))
        return self.choice[float(grid[np.argmin(np.abs(np.log(grid) - np.log(sigma)))])]

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float64).flatten()
        if s.numel() == 1:
            return self.candidates[self.pick(float(s))].denoise(x, float(s))
        out = torch.empty_like(x)
        for v in torch.unique(s):
            sel = s == v
            out[sel] = self.candidates[self.pick(float(v))].denoise(x[sel], float(v))
        return out


def schedule(candidates: Mapping[str, object], x_val: torch.Tensor, sigmas: Sequence[float], *,
             reference=None, seed: int = 0) -> tuple[ScheduledMachine, dict]:
    """Choose a candidate per sigma: lowest held-out denoising MSE, or (with ``reference``, a
    model with ``denoise``) the highest agreement (lowest MSE to the reference's output)."""
    x_val = x_val.double()
    scores: dict[str, list[float]] = {}
    targets = None
    if reference is not None:
        targets = [reference.denoise(x_val + s * noise_for(x_val.shape, k, seed), s).double()
                   for k, s in enumerate(sigmas)]
    for name, m in candidates.items():
        row = []
        for k, s in enumerate(sigmas):
            xs = x_val + s * noise_for(x_val.shape, k, seed)
            target = x_val if targets is None else targets[k]
            row.append(float(((m.denoise(xs, s).double() - target) ** 2).mean()))
        scores[name] = row
    names = list(candidates)
    choice = {float(s): names[int(np.argmin([scores[n][k] for n in names]))] for k, s in enumerate(sigmas)}
    return ScheduledMachine(candidates, choice), {"sigmas": list(map(float, sigmas)), "scores": scores,
                                                   "choice": [choice[float(s)] for s in sigmas]}


def plot_schedule(res: dict, locality: Mapping[str, float], path, els_schedule=None, title: str = "",
                  extra: Mapping[str, dict] | None = None) -> None:
    """Chosen locality (pixels) against sigma, beside the ELS machine's patch-size schedule;
    ``extra`` adds schedules chosen another way (e.g. by agreement with a network)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogx(res["sigmas"], [locality[c] for c in res["choice"]], "o-", label="chosen by held-out error")
    for label, other in (extra or {}).items():
        ax.semilogx(other["sigmas"], [locality[c] for c in other["choice"]], "s-", label=label)
    if els_schedule is not None:
        grid = np.logspace(np.log10(min(res["sigmas"])), np.log10(max(res["sigmas"])), 200)
        ax.semilogx(grid, [els_schedule(s) for s in grid], "k--", label="ELS patch size (approx. MNIST schedule)")
    ax.set(xlabel="σ", ylabel="receptive field (pixels)", title=title or "locality against noise level")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_join_weights(choice: dict, path, title: str = "") -> None:
    """Where each part of a joined machine serves (method.md §13): one panel per part, its
    held-out weight in every wavelet band against sigma (``JoinedMachine.choice_``)."""
    plt = _plt()
    A = np.asarray(choice["weights"])  # (sigmas, parts, bands)
    parts, bands, sig = choice["parts"], choice["bands"], choice["sigmas"]
    fig, axes = plt.subplots(1, len(parts), figsize=(3.6 * len(parts), 3.4), sharey=True, squeeze=False)
    colours = plt.cm.viridis(np.linspace(0, 1, len(bands)))
    for i, (ax, part) in enumerate(zip(axes[0], parts)):
        for b, band in enumerate(bands):
            ax.semilogx(sig, A[:, i, b], color=colours[b], label=band)
        ax.axhline(0, color="k", lw=0.5)
        ax.set(xlabel="σ", title=part if len(part) < 34 else part[:31] + "...")
    axes[0][0].set_ylabel("held-out weight")
    axes[0][-1].legend(fontsize=6, ncol=2)
    fig.suptitle(title or "joined machine: each part's weight per wavelet band")
    _save(fig, path)


def hedging(mixture, references: Mapping[str, object], x: torch.Tensor, sigmas: Sequence[float],
            temperatures: Sequence[float] = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0), *, seed: int = 0) -> dict:
    """How decisively each reference chooses between the modes of the data: for every sigma and
    temperature T, the denoiser R^2 (compare.r2) of the fitted global mixture with tempered
    responsibilities (method.md §11) against each reference's denoiser, on the same noisy ``x``
    (seeded noise). T = 1 is the data's posterior mean under the mixture; the best T above 1 says
    the network hedges between digits, below 1 that it commits. Every T comes from one log joint
    per sigma; the mixture's own temperature is not touched. Returns {"sigmas", "temperatures", "r2": {ref: [[R^2 per T] per sigma]},
    "best": {ref: [best T per sigma]}}."""
    from .compare import r2

    if not callable(getattr(mixture, "wavelet_scores", None)):
        raise WavescoreError(f"hedging tempers a fitted global mixture (MixtureMachine), got {type(mixture).__name__}")
    mixture._require_fitted()
    x = x.double()
    noisy = [x + s * noise_for(x.shape, k, seed) for k, s in enumerate(sigmas)]
    targets = {n: [ref.denoise(y, s).double() for y, s in zip(noisy, sigmas)] for n, ref in references.items()}
    grid = np.zeros((len(sigmas), len(temperatures), len(references)))
    t = mixture.transform_
    for k, (y, s) in enumerate(zip(noisy, sigmas)):
        # Tweedie (method.md §1) at every T from one log joint (MixtureMachine.wavelet_scores)
        scores = mixture.wavelet_scores(t.forward(y), s, tuple(float(T) for T in temperatures))
        for j, sc in enumerate(scores):
            out = y + s**2 * t.inverse(sc)
            for i, n in enumerate(references):
                grid[k, j, i] = r2(out, targets[n][k])
    temps = [float(t) for t in temperatures]
    return {"sigmas": [float(s) for s in sigmas], "temperatures": temps,
            "r2": {n: grid[:, :, i].tolist() for i, n in enumerate(references)},
            "best": {n: [temps[int(np.argmax(grid[k, :, i]))] for k in range(len(sigmas))]
                     for i, n in enumerate(references)}}


def plot_hedging(res: dict, path, title: str = "") -> None:
    """R^2 against temperature, one panel per sigma, one line per reference (dot: the best T)."""
    plt = _plt()
    S = len(res["sigmas"])
    fig, axes = plt.subplots(1, S, figsize=(3.2 * S, 3.0), squeeze=False)
    for k, (ax, s) in enumerate(zip(axes[0], res["sigmas"])):
        for n, grid in res["r2"].items():
            row = np.asarray(grid[k])
            line, = ax.plot(res["temperatures"], row, marker=".", label=n)
            ax.plot([res["best"][n][k]], [row.max()], "o", color=line.get_color())
        ax.axvline(1.0, color="0.6", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_title(f"σ = {s:g}")
        ax.set_xlabel("temperature T")
    axes[0][0].set_ylabel("denoiser R² against the network")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title or "How decisively each network chooses a digit (T = 1: the posterior)", fontsize=9)
    _save(fig, path)


def block_edges(model, x: torch.Tensor, sigmas: Sequence[float], *, block: int = 4, seed: int = 0) -> dict:
    """How blocky a denoiser is on a ``block`` x ``block`` grid (a transformer's patch tokens):
    at each sigma, the mean |difference| of neighbouring output pixels across the grid's edges
    divided by the mean across all other neighbours, horizontal and vertical pairs together
    (seeded noise). 1 is no preference for the grid (the identity on white noise, in
    expectation); inf is a denoiser constant on every block. Returns {"sigmas", "block",
    "ratio": [per sigma], "columns": [per sigma: mean |difference| per pair of neighbouring
    columns and rows, over the image's mean]}."""
    x = x.double()
    H, W = x.shape[-2:]
    if not isinstance(block, int) or block < 2 or H % block or W % block:
        raise WavescoreError(f"block must be a whole number >= 2 dividing the image size {H}x{W}, got {block!r}")
    # which neighbour pairs straddle a grid edge: columns then rows, in the order of cat([dx, dy])
    edge = torch.cat([torch.arange(1, n) % block == 0 for n in (W, H)])
    ratios, profiles = [], []
    for k, s in enumerate(sigmas):
        y = x + s * noise_for(x.shape, k, seed)
        d = model.denoise(y, s).double()
        dx = (d[..., :, 1:] - d[..., :, :-1]).abs().mean((0, 1, 2))  # (W - 1,) per column pair
        dy = (d[..., 1:, :] - d[..., :-1, :]).abs().mean((0, 1, 3))  # (H - 1,) per row pair
        prof = (dx + dy) / 2 if H == W else dx
        jumps = torch.cat([dx, dy])
        across, within = jumps[edge].mean(), jumps[~edge].mean()
        ratios.append(float(across / within) if within > 0 else float("inf"))
        profiles.append((prof / prof.mean()).tolist())
    return {"sigmas": [float(s) for s in sigmas], "block": block, "ratio": ratios, "columns": profiles}


HANDOVER_AT = (40.0, 20.0, 10.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.05)


def handover(model, reference, *, at: Sequence[float] = HANDOVER_AT, n: int = 100, steps: int = 18, seed: int = 0,
             shape=None, progress: bool = True) -> dict:
    """Where along the sampling path ``model``'s final samples part from ``reference``'s.

    Both run Heun on ``samplers.edm_sigmas(steps)`` from the same initial noise (seed ``seed``, as
    ``samplers.sample`` and ``compare.compare_models`` draw it). At the grid sigma nearest each of
    ``at``, the trajectory changes hands: "reference_then_model" runs the reference down to that
    sigma and the model below it, so its final-sample r against the reference's own samples is what
    the model's steps below that sigma keep; "model_then_reference" runs the model above and the
    reference below, what the model's steps above that sigma keep. The first is 1 and the second
    the model's own r where nothing is handed over (sigma 0); the reverse at sigma_max. Where the
    first falls is where the model's low-noise steps lose the network; where the second rises
    (going down in sigma) is where its high-noise steps do. Returns {"sigmas" (the grid sigmas
    handed over at, decreasing), "model_alone": summarize_r, "reference_then_model": [summarize_r
    per sigma], "model_then_reference": [...], "n", "steps", "seed"}."""
    from .compare import sample_correlations, summarize_r
    from .samplers import _heun_step, edm_sigmas, heun, initial_noise

    n, steps, seed = checks.whole("n", n, 1), checks.whole("steps", steps, 2), checks.whole("seed", seed, 0)
    shape = tuple(shape or getattr(model, "shape_", ()) or getattr(reference, "shape_", ()) or ())
    if len(shape) != 3:
        raise WavescoreError("give the image shape (C, H, W): neither model knows it")
    if not at or any(not (float(s) > 0) for s in at):
        raise WavescoreError(f"at must be positive noise levels, got {at!r}")
    sigmas = edm_sigmas(steps)
    noise = initial_noise(n, shape, seed)
    grid = sigmas[:-1].log()
    # index 0 (sigma_max) would hand over nothing: the model alone, reported once
    idx = sorted({int((grid - math.log(float(s))).abs().argmin()) for s in at} - {0})
    if not idx:
        raise WavescoreError(f"at={list(at)} are all nearest sigma_max = {float(sigmas[0])}: give lower noise levels")

    def path(m):  # every state of m's trajectory, x_i at sigmas[i]
        xs = [noise * sigmas[0]]
        for i in progress_bar(range(steps), desc="handover path", enabled=progress, leave=False):
            xs.append(_heun_step(m, xs[-1], sigmas[i], sigmas[i + 1]))
        return xs

    ref_path, own_path = path(reference), path(model)
    final = ref_path[-1]

    def r(x):
        return summarize_r(sample_correlations(x, final))

    ref_then, own_then = [], []
    for i in progress_bar(idx, desc="handover", enabled=progress, leave=False):
        ref_then.append(r(heun(model, ref_path[i], sigmas[i:])))
        own_then.append(r(heun(reference, own_path[i], sigmas[i:])))
    return {"sigmas": [float(sigmas[i]) for i in idx], "model_alone": r(own_path[-1]),
            "reference_then_model": ref_then, "model_then_reference": own_then, "n": n, "steps": steps,
            "seed": seed}


def _short_name(name: str) -> str:
    """A joined machine's name lists every part (hundreds of characters); a title keeps how many
    of them were fitted on other images and what it is calibrated to."""
    if not name.startswith("joined("):
        return name
    inner, _, rest = name[len("joined("):].rpartition(")")
    own = inner.count("@")
    return f"joined(...{f'; {own} parts on other images' if own else ''}){rest}"


def plot_handover(results: Mapping[str, dict], path, title: str = "") -> None:
    """One panel per (model, reference) pair: median final-sample r (and quartiles) against the
    hand-over sigma, for both directions of :func:`handover`."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 3.6), squeeze=False, sharey=True)
    for ax, (label, res) in zip(axes[0], results.items()):
        model, _, ref = label.rpartition(" | ")
        s = res["sigmas"]
        for key, text, color in (("reference_then_model", f"{ref} above, model below", "C0"),
                                 ("model_then_reference", f"model above, {ref} below", "C1")):
            med = [v["median"] for v in res[key]]
            ax.fill_between(s, [v["q25"] for v in res[key]], [v["q75"] for v in res[key]], color=color, alpha=0.2)
            ax.plot(s, med, "o-", color=color, label=text)
        ax.axhline(res["model_alone"]["median"], color="k", ls=":", lw=1, label="model alone")
        ax.set_xscale("log")
        ax.set_xlabel("hand-over sigma")
        ax.set_ylabel(f"median final-sample r vs {ref}")
        ax.set_title(f"model: {_short_name(model)}", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(title or "Where the final samples part from the network's", fontsize=9)
    _save(fig, path)
