"""Mimicry: how much of a network's denoiser (and score) each machine reproduces.

For every model, the denoising MSE on training and on held-out images (memorisation shows
as the gap); for every (machine, reference) pair, per sigma, the R^2 of the machine's
output against the reference's on the same noisy inputs:

    R^2 = 1 - ||f_machine - f_ref||^2 / ||f_ref - mean_over_images(f_ref)||^2

for f = the denoiser output D(x, s) and for f = the score (D(x, s) - x) / s^2. The
denominator is the error of the best input-independent (mean-only) predictor, so R^2 = 0
means "no better than the reference's average output". Each R^2 is trivially near 1 at one
end of the sigma range: the denoiser's at small sigma (D ~ x for everyone), the score's at
large sigma (score ~ -(x - mean)/s^2 for everyone); reading both avoids a flattering number.

Final samples (the ELS protocol of Kamb & Ganguli): the same initial noise through the same
sampler with each model; the per-sample Pearson correlation with the reference's sample.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from .evaluation import noise_for


def r2(pred: torch.Tensor, ref: torch.Tensor) -> float:
    """1 - SSE / SS of the reference about its mean over images (a mean-only baseline)."""
    pred, ref = pred.reshape(len(pred), -1).double(), ref.reshape(len(ref), -1).double()
    ss = ((ref - ref.mean(0, keepdim=True)) ** 2).sum()
    return float(1 - ((pred - ref) ** 2).sum() / ss) if ss > 0 else float("nan")


def _outputs(model, x: torch.Tensor, sigmas: Sequence[float], seed: int, batch: int = 500):
    """Denoiser outputs per sigma on the shared seeded noisy inputs."""
    outs = []
    for k, s in enumerate(sigmas):
        z = noise_for(x.shape, k, seed)
        xs = x.double() + s * z
        outs.append(torch.cat([model.denoise(xs[b : b + batch], s).double() for b in range(0, len(x), batch)]))
    return outs


def compare_models(models: Mapping[str, object], references: Sequence[str], train: torch.Tensor, test: torch.Tensor,
                   sigmas: Sequence[float], *, seed: int = 0, n_samples: int = 0, steps: int = 18,
                   sampler: str = "heun", progress: bool = True) -> dict:
    """The whole comparison as a JSON-ready dict (see the module docstring)."""
    from ._io import progress_bar

    sigmas = [float(s) for s in sigmas]
    result = {"sigmas": sigmas, "seed": seed, "n_train": len(train), "n_test": len(test), "models": {}, "r2": {}}
    test_out = {}
    for name, model in progress_bar(models.items(), desc="models", enabled=progress, leave=False):
        tr = _outputs(model, train, sigmas, seed + 1)
        te = _outputs(model, test, sigmas, seed)
        test_out[name] = te
        result["models"][name] = {
            "mse_train": [float(((o - train.double()) ** 2).mean()) for o in tr],
            "mse_test": [float(((o - test.double()) ** 2).mean()) for o in te],
        }
    for ref in references:
        result["r2"][ref] = {}
        for name in models:
            if name == ref:
                continue
            den, score = [], []
            for k, s in enumerate(sigmas):
                xs = test.double() + s * noise_for(test.shape, k, seed)
                den.append(r2(test_out[name][k], test_out[ref][k]))
                score.append(r2((test_out[name][k] - xs) / s**2, (test_out[ref][k] - xs) / s**2))
            result["r2"][ref][name] = {"denoiser": den, "score": score}
    if n_samples:
        from .samplers import sample

        shape = tuple(test.shape[1:])
        noise = torch.randn((n_samples, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        finals = {name: sample(m, n_samples, steps=steps, sampler=sampler, shape=shape, noise=noise)
                  for name, m in progress_bar(models.items(), desc="sampling", enabled=progress, leave=False)}
        result["samples"] = {"n": n_samples, "steps": steps, "sampler": sampler, "correlation": {}}
        for ref in references:
            result["samples"]["correlation"][ref] = {}
            for name in models:
                if name == ref:
                    continue
                a = finals[name].reshape(n_samples, -1)
                b = finals[ref].reshape(n_samples, -1)
                a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
                corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
                result["samples"]["correlation"][ref][name] = {"mean": float(corr.mean()),
                                                              "mean_squared": float((corr**2).mean())}
        result["_finals"] = finals
    return result


def plot_r2(result: dict, path, kind: str = "denoiser") -> None:
    """R^2 against sigma: a line per model, a panel per reference."""
    from .plots import pyplot, save_figure

    plt = pyplot()
    refs = list(result["r2"])
    fig, axes = plt.subplots(1, max(1, len(refs)), figsize=(5.5 * max(1, len(refs)), 4.2), squeeze=False)
    for ax, ref in zip(axes[0], refs):
        for name, v in result["r2"][ref].items():
            ax.semilogx(result["sigmas"], v[kind], marker="o", ms=3, label=name)
        ax.set(title=f"R² of {kind} vs {ref}", xlabel="σ", ylabel="R²", ylim=(-0.2, 1.02))
        ax.axhline(0, color="k", lw=0.6)
        ax.legend(fontsize=7)
    save_figure(fig, path)
