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
sampler with each model; the per-sample Pearson correlation r with the reference's sample,
summarised per (model, reference) pair by its mean, median and interquartile range (a model's
samples that run away to a finite but huge value are counted, ``samples.out_of_range``). The
protocol is >= 200 samples and 18 Heun steps (``wavescore compare --samples 200``): with a few
samples the median of r moves by more than the gaps between machines.

The machine x network matrix: rows are models, columns references; each reference's best
matching machine is named by median final-sample r (when samples were drawn) and by mean
denoiser R^2 over sigmas. Candidates are the models that are not references and not networks
(``kind_``), so a network's best match is a machine (or ELS / empirical), never a network.

Where the best match (by denoiser R^2) misses: per sigma, its residual against the reference
split over Haar wavelet levels. The transform is orthonormal, so the energies add exactly
(method.md §7) and so does the R^2 deficit,

    1 - R^2 = ||f_machine - f_ref||^2 / SS_ref = sum_bands ||W(f_machine - f_ref)|_band||^2 / SS_ref,

which says at which noise level and at which scale the machine falls short of the network.

A long comparison (a mimicry matrix runs for an hour or more) can keep each model's outputs and
final samples in a folder as it goes (``cache=``, :class:`PartialStore`): a killed run, started
again with the same models, protocol and data, computes only what it had not finished.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import sys
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from .evaluation import noise_for
from .transform import WaveletTransform, max_levels

OUT_OF_RANGE = 10.0  # final samples beyond this many times the test images' largest |value| are counted


def spread(ref: torch.Tensor) -> torch.Tensor:
    """The R^2 denominator: the squared spread of the reference's outputs about their mean image."""
    ref = ref.reshape(len(ref), -1).double()
    return ((ref - ref.mean(0, keepdim=True)) ** 2).sum()


def r2(pred: torch.Tensor, ref: torch.Tensor) -> float:
    """1 - SSE / SS of the reference about its mean over images (a mean-only baseline)."""
    pred, ref = pred.reshape(len(pred), -1).double(), ref.reshape(len(ref), -1).double()
    ss = spread(ref)
    return float(1 - ((pred - ref) ** 2).sum() / ss) if ss > 0 else float("nan")


class PartialStore:
    """Per-model intermediate results of one comparison, one file per (model, stage) in ``folder``.

    An entry is found only under the same model name, the same caller's ``key`` for that model
    (what identifies it: its configuration, its checkpoint's hash) and the same ``protocol`` (sigmas,
    seed, sampler, steps, a hash of the images): anything else is another file name, so a stale
    entry is never read. A file is written atomically; one that does not load is computed again."""

    def __init__(self, folder, protocol: Mapping):
        self.folder = Path(folder)
        self.protocol = json.dumps(protocol, sort_keys=True, default=str)

    def path(self, name: str, key: str, stage: str) -> Path:
        digest = hashlib.sha256(json.dumps([self.protocol, name, key, stage]).encode()).hexdigest()
        return self.folder / f"{stage}-{digest[:24]}.pt"

    def load(self, name: str, key: str | None, stage: str):
        if key is None:
            return None
        path = self.path(name, key, stage)
        if not path.exists():
            return None
        try:
            return torch.load(path, weights_only=True)
        except Exception as exc:  # a truncated or foreign file: recompute, never trust it
            print(f"{path}: unreadable ({type(exc).__name__}); computing {name!r} {stage} again", file=sys.stderr)
            return None

    def save(self, name: str, key: str | None, stage: str, obj) -> None:
        if key is None:
            return
        from ._io import write_bytes_atomic

        buf = io.BytesIO()
        torch.save(obj, buf)
        write_bytes_atomic(self.path(name, key, stage), buf.getvalue())


def images_digest(*tensors: torch.Tensor) -> str:
    """sha256 of the images' float64 bytes: the data part of a PartialStore protocol."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().double().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def comparison_store(folder, train: torch.Tensor, test: torch.Tensor, sigmas: Sequence[float], *, seed: int = 0,
                     n_samples: int = 0, steps: int = 18, sampler: str = "heun") -> PartialStore:
    """The PartialStore ``compare_models(..., cache=folder)`` reads and writes for this protocol."""
    return PartialStore(folder, {"sigmas": [float(s) for s in sigmas], "seed": seed, "n_samples": n_samples,
                                 "steps": steps, "sampler": sampler, "images": images_digest(train, test)})


def _outputs(model, x: torch.Tensor, sigmas: Sequence[float], seed: int, batch: int = 500):
    """Denoiser outputs per sigma on the shared seeded noisy inputs."""
    outs = []
    for k, s in enumerate(sigmas):
        z = noise_for(x.shape, k, seed)
        xs = x.double() + s * z
        outs.append(torch.cat([model.denoise(xs[b : b + batch], s).double() for b in range(0, len(x), batch)]))
    return outs


# Rows of the samples grid and of the matrix: machines first, then the memorising / local
# baselines, then networks (the things being explained come last, beside their explainers).
KIND_ORDER = {"machine": 0, "empirical": 1, "els": 1, "network": 2}


def model_kind(model) -> str:
    """``kind_`` as ``models.load_model`` sets it; an object without one (a machine built in
    Python, a stub) counts as a machine."""
    return str(getattr(model, "kind_", "machine"))


def sample_correlations(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample Pearson r between two batches of images (n, ...) -> (n,); a constant image
    has r = 0 (the norm is clamped) rather than NaN."""
    a, b = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def summarize_r(r) -> dict:
    """Mean, mean of r^2, median and quartiles (numpy's linear interpolation) of per-sample r,
    plus the values themselves so any other statistic can be read from the JSON later."""
    v = np.asarray(torch.as_tensor(r, dtype=torch.float64).cpu(), dtype=np.float64)
    q25, med, q75 = (float(x) for x in np.percentile(v, [25, 50, 75]))
    return {"mean": float(v.mean()), "mean_squared": float((v**2).mean()), "median": med, "q25": q25, "q75": q75,
            "r": [float(x) for x in v]}


def _finite_mean(values) -> float:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return sum(v) / len(v) if v else float("nan")


def best_matches(result: dict) -> dict:
    """Per reference, the candidate (not a reference, not a network) with the highest median
    final-sample r and the one with the highest mean denoiser R^2 over sigmas; None where no
    candidate has a finite value."""
    refs, kinds = result["references"], result["kinds"]
    candidates = [n for n in kinds if n not in refs and kinds[n] != "network"]
    out = {}
    for ref in refs:
        entry = {"candidates": candidates, "by_samples": None, "by_denoiser_r2": None}
        r2s = {n: _finite_mean(result["r2"][ref][n]["denoiser"]) for n in candidates if n in result["r2"][ref]}
        r2s = {n: v for n, v in r2s.items() if math.isfinite(v)}
        if r2s:
            best = max(r2s, key=r2s.get)
            entry["by_denoiser_r2"] = {"model": best, "mean_r2": r2s[best]}
        corr = result.get("samples", {}).get("correlation", {}).get(ref, {})
        meds = {n: corr[n]["median"] for n in candidates if n in corr and math.isfinite(corr[n]["median"])}
        if meds:
            best = max(meds, key=meds.get)
            entry["by_samples"] = {"model": best, "median_r": meds[best]}
        out[ref] = entry
    return out


def compare_models(models: Mapping[str, object], references: Sequence[str], train: torch.Tensor, test: torch.Tensor,
                   sigmas: Sequence[float], *, seed: int = 0, n_samples: int = 0, steps: int = 18,
                   sampler: str = "heun", kinds: Mapping[str, str] | None = None, progress: bool = True,
                   cache=None, keys: Mapping[str, str] | None = None) -> dict:
    """The whole comparison as a JSON-ready dict (see the module docstring), plus ``_finals``
    (name -> final samples, not JSON) when ``n_samples`` > 0. ``kinds`` (name -> kind)
    overrides ``model_kind`` for the models it names, e.g. a machine standing in for a network.

    Keys: sigmas, seed, n_train, n_test, references, kinds (name -> machine / network /
    empirical / els), models (name -> mse_train, mse_test per sigma), r2 (reference -> model ->
    denoiser, score per sigma), best_match (see ``best_matches``), residual_by_band (see
    ``residuals_by_band``), and with samples: samples
    (n, steps, sampler, diverged: name -> reason, correlation: reference -> model -> mean,
    mean_squared, median, q25, q75, r).

    ``cache`` (a folder) keeps every model's outputs and final samples as they are computed
    (:class:`PartialStore`), for the models ``keys`` names (name -> what identifies the model);
    a rerun reads them instead of computing them again. The result is the same either way."""
    from ._io import WavescoreError, progress_bar

    missing = [r for r in references if r not in models]
    if missing:
        raise WavescoreError(f"references {', '.join(map(repr, missing))} are not among the models "
                             f"({', '.join(models)}); name references by their model names")
    sigmas = [float(s) for s in sigmas]
    kinds = {name: (kinds or {}).get(name) or model_kind(m) for name, m in models.items()}
    result = {"sigmas": sigmas, "seed": seed, "n_train": len(train), "n_test": len(test),
              "references": list(references), "kinds": kinds, "models": {}, "r2": {}}
    keys = dict(keys or {})
    store = None
    if cache is not None:
        store = comparison_store(cache, train, test, sigmas, seed=seed, n_samples=n_samples, steps=steps,
                                 sampler=sampler)
    test_out = {}
    for name, model in progress_bar(models.items(), desc="models", enabled=progress, leave=False):
        got = store.load(name, keys.get(name), "outputs") if store else None
        if got is None:
            tr = _outputs(model, train, sigmas, seed + 1)
            te = _outputs(model, test, sigmas, seed)
            got = {"mse_train": [float(((o - train.double()) ** 2).mean()) for o in tr], "test_out": te}
            if store:
                store.save(name, keys.get(name), "outputs", got)
        test_out[name] = got["test_out"]
        result["models"][name] = {
            "mse_train": got["mse_train"],
            "mse_test": [float(((o - test.double()) ** 2).mean()) for o in got["test_out"]],
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
        from .samplers import initial_noise, sample

        shape = tuple(test.shape[1:])
        noise = initial_noise(n_samples, shape, seed)
        finals, diverged = {}, {}
        for name, m in progress_bar(models.items(), desc="sampling", enabled=progress, leave=False):
            got = store.load(name, keys.get(name), "samples") if store else None
            if got is None:
                # A polynomial score can push a trajectory to infinity (a machine refuses non-finite
                # input, a network returns NaN): that model is reported as diverged, the rest go on.
                try:
                    got = {"x": sample(m, n_samples, steps=steps, sampler=sampler, shape=shape,
                                       noise=noise).double().cpu()}
                except WavescoreError as exc:
                    got = {"diverged": str(exc)}
                if store:
                    store.save(name, keys.get(name), "samples", got)
            if "diverged" in got:
                diverged[name] = got["diverged"]
                continue
            x = got["x"]
            if not torch.isfinite(x).all():
                diverged[name] = "non-finite final samples"
                continue
            finals[name] = x
        # A finite runaway (a polynomial part extrapolating to 1e100) still gets an r, near 0: count
        # the samples beyond ten times the data's range so that it is seen, not averaged away.
        bound = OUT_OF_RANGE * float(test.abs().max())
        out_of_range = {name: int((x.flatten(1).abs().amax(1) > bound).sum()) for name, x in finals.items()}
        result["samples"] = {"n": n_samples, "steps": steps, "sampler": sampler, "diverged": diverged,
                             "out_of_range": {"bound": bound, "count": {n: c for n, c in out_of_range.items() if c}},
                             "correlation": {}}
        for ref in references:
            result["samples"]["correlation"][ref] = {}
            if ref not in finals:
                continue
            for name in finals:
                if name != ref:
                    result["samples"]["correlation"][ref][name] = summarize_r(sample_correlations(finals[name],
                                                                                                  finals[ref]))
        result["_finals"] = finals
    result["best_match"] = best_matches(result)
    result["residual_by_band"] = residuals_by_band(result, test_out, tuple(test.shape[1:]))
    return result


def residuals_by_band(result: dict, test_out: Mapping[str, Sequence[torch.Tensor]], shape) -> dict:
    """Per reference, where its best match by mean denoiser R^2 misses it, from the denoiser
    outputs on the test images already computed (``test_out``: name -> per sigma; no new
    denoiser calls): the squared residual ``||D_machine - D_ref||^2`` per sigma split over the
    levels of a full-depth Haar transform (the machines' default depth).

    reference -> {model, wavelet, bands (``L1``..``LJ`` fine to coarse, each level's three
    orientations together, then the approximation ``aJ``), share (per sigma, the residual's
    fraction in each band; sums to 1, NaN where the residual is exactly zero), deficit (per
    sigma, share x (1 - R^2) = band energy / SS_ref; sums to 1 - R^2 of the pair)}; None where
    the reference has no best match or the images take no wavelet level (an odd side)."""
    from .analysis import band_energies

    # Only (C, H, W) images with an even side pair take a level; anything else gets no split
    # rather than an error, since the rest of the comparison does not need one.
    transform = (WaveletTransform(shape, "haar") if len(shape) == 3 and max_levels(shape[1], shape[2]) else None)
    out = {}
    for ref, best in result["best_match"].items():
        best = best["by_denoiser_r2"]
        if best is None or transform is None:
            out[ref] = None
            continue
        name, share, deficit = best["model"], [], []
        for k in range(len(result["sigmas"])):
            target = test_out[ref][k].double()
            labels, e = band_energies(test_out[name][k].double() - target, transform, by_level=True)
            ss = spread(target)
            total = e.sum()
            share.append((e / total).tolist() if total > 0 else [float("nan")] * len(labels))
            deficit.append((e / ss).tolist() if ss > 0 else [float("nan")] * len(labels))
        out[ref] = {"model": name, "wavelet": "haar", "bands": labels, "share": share, "deficit": deficit}
    return out


def ordered_names(kinds: Mapping[str, str]) -> list[str]:
    """Model names machines first, then empirical / ELS, then networks (stable within a kind)."""
    return sorted(kinds, key=lambda n: KIND_ORDER.get(kinds[n], 1))


def _fmt(x, spec: str = ".3f") -> str:
    return "nan" if x is None or not math.isfinite(x) else format(x, spec)


def matrix_tables(result: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """The matrix as (title, header, rows of cells): median final-sample r [q25, q75] per model
    and reference (when samples were drawn), then per reference the denoiser R^2 per sigma and
    its mean. A reference's own cell is "ref"; a diverged model's is "diverged"."""
    refs, names = result["references"], ordered_names(result["kinds"])
    tables = []
    smp = result.get("samples")
    if smp:
        rows = []
        for name in names:
            cells = [name]
            for ref in refs:
                c = smp["correlation"].get(ref, {}).get(name)
                cells.append("ref" if name == ref else "diverged" if name in smp["diverged"] or ref in smp["diverged"]
                             else "" if c is None else f"{_fmt(c['median'])} [{_fmt(c['q25'])}, {_fmt(c['q75'])}]")
            rows.append(cells)
        tables.append((f"Final samples: median Pearson r [q25, q75] with the reference's sample ({smp['n']} samples "
                       f"from shared noise, {smp['steps']} {smp['sampler']} steps)", ["model", *refs], rows))
    sig = result["sigmas"]
    for ref in refs:
        rows = []
        for name in names:
            v = result["r2"][ref].get(name)
            rows.append([name, *(["ref"] * (len(sig) + 1) if v is None else
                                 [_fmt(x) for x in v["denoiser"]] + [_fmt(_finite_mean(v["denoiser"]))])])
        tables.append((f"Denoiser R² against {ref} per sigma", ["model", *(f"σ={s:g}" for s in sig), "mean"], rows))
    for ref, res in (result.get("residual_by_band") or {}).items():
        if res is None:
            continue
        r2s = result["r2"][ref][res["model"]]["denoiser"]
        rows = [[f"{s:g}", *(_fmt(x) for x in d), _fmt(1 - r)] for s, d, r in zip(sig, res["deficit"], r2s)]
        tables.append((f"Where {res['model']} misses {ref}: denoiser R² deficit per {res['wavelet']} wavelet band "
                       f"(L1 finest, {res['bands'][-1]} the coarse approximation; the row sums to 1 − R²)",
                       ["σ", *res["bands"], "1 − R²"], rows))
    return tables


def _best_lines(result: dict) -> list[str]:
    lines = []
    for ref, b in result["best_match"].items():
        by_s, by_r = b["by_samples"], b["by_denoiser_r2"]
        parts = []
        if by_s:
            parts.append(f"by median final-sample r: {by_s['model']} ({_fmt(by_s['median_r'])})")
        if by_r:
            parts.append(f"by mean denoiser R²: {by_r['model']} ({_fmt(by_r['mean_r2'])})")
        where = _largest_deficit((result.get("residual_by_band") or {}).get(ref), result["sigmas"])
        if where:
            parts.append(where)
        lines.append(f"best match for {ref}: " + ("; ".join(parts) if parts else "no candidate (every model is a "
                                                                                 "reference or a network)"))
    return lines


def _out_of_range_lines(result: dict) -> list[str]:
    smp = result.get("samples") or {}
    oor = smp.get("out_of_range") or {"count": {}}
    return [f"{name}: {c} of {smp['n']} final samples beyond ±{oor['bound']:.3g} (a runaway; their r is near 0)"
            for name, c in oor["count"].items()]


def _largest_deficit(res: dict | None, sigmas) -> str:
    """The (sigma, band) cell holding the largest share of the R² deficit, in words; "" if none."""
    if not res:
        return ""
    cells = [(v, s, b) for s, row in zip(sigmas, res["deficit"]) for b, v in zip(res["bands"], row)
             if v is not None and math.isfinite(v) and v > 0]
    if not cells:
        return ""
    v, s, b = max(cells)
    return f"largest R² deficit of {res['model']}: {_fmt(v)} at σ={s:g} in {b}"


def matrix_markdown(result: dict) -> str:
    """``matrix_tables`` and the best matches as markdown."""
    out = []
    for title, head, rows in matrix_tables(result):
        out += [f"### {title}", "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        out.append("")
    out += [f"- {line}" for line in _best_lines(result) + _out_of_range_lines(result)]
    return "\n".join(out) + "\n"


def matrix_html(result: dict) -> str:
    """``matrix_tables`` and the best matches as HTML (the report's mimicry section)."""
    import html

    out = []
    for title, head, rows in matrix_tables(result):
        out.append(f"<h3>{html.escape(title)}</h3><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
                   + "</tr>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                                       for r in rows) + "</table>")
    lines = _best_lines(result) + _out_of_range_lines(result)
    out.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>")
    return "".join(out)


def plot_matrix(result: dict, path) -> Path:
    """Heatmap, rows models x columns references: median final-sample r when samples were
    drawn, else mean denoiser R^2 over sigmas (the title says which); NaN cells (a reference's
    own, a diverged model's) blank."""
    from .plots import heatmap

    refs, names = result["references"], ordered_names(result["kinds"])
    smp = result.get("samples")
    m = np.full((len(names), len(refs)), np.nan)
    for j, ref in enumerate(refs):
        for i, name in enumerate(names):
            if smp:
                c = smp["correlation"].get(ref, {}).get(name)
                m[i, j] = np.nan if c is None else c["median"]
            else:
                v = result["r2"][ref].get(name)
                m[i, j] = np.nan if v is None else _finite_mean(v["denoiser"])
    title = (f"median final-sample r ({smp['n']} samples)" if smp else "mean denoiser R² over σ")
    return heatmap(m, names, refs, path, title=title, vmin=-1.0 if smp else None, vmax=1.0)


def plot_samples(finals: Mapping[str, torch.Tensor], kinds: Mapping[str, str], path, k: int = 8) -> Path:
    """The side-by-side grid: a row per model (machines, ELS / empirical, networks), labelled
    with its name; columns share their initial noise."""
    from .plots import labelled_rows

    names = [n for n in ordered_names(kinds) if n in finals]
    return labelled_rows({n: finals[n][:k] for n in names}, path,
                         title="final samples; each column starts from the same noise")


def write_outputs(result: dict, finals, out, prefix: str = "") -> dict:
    """Write into ``out``, atomically, each name led by ``prefix``: compare.json (configuration
    and metrics, naming the files beside it), matrix.md (``matrix_markdown``), matrix.png
    (``plot_matrix``), r2_denoiser.png and r2_score.png, and with samples samples.png
    (``plot_samples``) and samples_grid.npz (the grid's samples, so :func:`redraw` can draw every
    figure again from the files). Returns {what: path}."""
    from ._io import write_bytes_atomic, write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": "compare.json", "matrix_md": "matrix.md", "matrix_png": "matrix.png",
             "r2_denoiser": "r2_denoiser.png", "r2_score": "r2_score.png"}
    if finals:
        files.update(samples="samples.png", samples_grid="samples_grid.npz")
    paths = {k: out / f"{prefix}{v}" for k, v in files.items()}
    # the metrics first: a figure that fails to draw must not cost the numbers
    write_json(paths["json"], dict(result, outputs={k: p.name for k, p in paths.items() if k != "json"}))
    write_bytes_atomic(paths["matrix_md"], matrix_markdown(result).encode())
    if finals:
        names = list(finals)
        buf = io.BytesIO()
        np.savez_compressed(buf, names=np.array(names),
                            samples=np.stack([finals[n][:GRID_COLUMNS].float().numpy() for n in names]))
        write_bytes_atomic(paths["samples_grid"], buf.getvalue())
    _draw(result, {k: p for k, p in paths.items()}, finals)
    return paths


GRID_COLUMNS = 8  # samples per model in the side-by-side grid


def _draw(result: dict, paths: Mapping[str, Path], finals) -> None:
    plot_matrix(result, paths["matrix_png"])
    plot_r2(result, paths["r2_denoiser"], "denoiser")
    plot_r2(result, paths["r2_score"], "score")
    if finals:
        plot_samples(finals, result["kinds"], paths["samples"], k=GRID_COLUMNS)


def redraw(folder, prefix: str = "") -> dict:
    """Draw a written comparison's figures again from its compare.json and samples_grid.npz
    (e.g. after a plotting change), without recomputing anything. Returns {what: path}."""
    from ._io import WavescoreError

    folder = Path(folder)
    path = folder / f"{prefix}compare.json"
    if not path.exists():
        raise WavescoreError(f"{path} does not exist: give the folder a comparison was written to")
    result = json.loads(path.read_text())
    if "outputs" not in result:
        raise WavescoreError(f"{path} was written before comparisons listed their figures: run the comparison "
                             "again (its command is in the file)")
    paths = {k: folder / name for k, name in result["outputs"].items()}
    finals = None
    if "samples_grid" in paths:
        with np.load(paths["samples_grid"]) as z:
            finals = {str(n): torch.from_numpy(x) for n, x in zip(z["names"], z["samples"])}
    elif "samples" in paths:
        paths.pop("samples")  # written before the grid's samples were kept: that figure stays as it is
    _draw(result, paths, finals)
    return paths


def plot_r2(result: dict, path, kind: str = "denoiser") -> Path:
    """R^2 against sigma: a panel per reference (three to a row), a line per model in one colour
    across panels (networks dashed), and one legend below them all."""
    from .plots import label_extent, pyplot, save_figure, wrap_label

    plt = pyplot()
    refs = list(result["r2"]) or [None]
    kinds = result.get("kinds", {})
    names = ordered_names({n: kinds.get(n, "machine") for r in result["r2"] for n in result["r2"][r]})
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    colour = {n: cmap(i % cmap.N) for i, n in enumerate(names)}
    ncol = min(3, len(refs))
    nrow = math.ceil(len(refs) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 3.8 * nrow), squeeze=False)
    handles, rect = {}, None
    for ax, ref in zip(axes.flat, refs):
        for name in names:
            v = result["r2"].get(ref, {}).get(name) if ref is not None else None
            if v is None:
                continue
            style = "--" if kinds.get(name) == "network" else "-"
            (line,) = ax.semilogx(result["sigmas"], v[kind], style, marker="o", ms=3, color=colour[name])
            handles.setdefault(name, line)
        ax.set(title=f"R² of {kind} vs {ref}", xlabel="σ", ylabel="R²", ylim=(-0.2, 1.02))
        ax.axhline(0, color="k", lw=0.6)
    for ax in list(axes.flat)[len(refs):]:
        ax.set_visible(False)
    if handles:
        labels = [wrap_label(n, 60) for n in handles]
        fig.legend(list(handles.values()), labels, loc="lower center", ncol=min(3, len(handles)), fontsize=7,
                   frameon=False)
        rows = math.ceil(len(handles) / min(3, len(handles)))
        lines = label_extent(labels)[1]
        legend_in = 0.15 * rows * lines + 0.2
        width, height = fig.get_size_inches()
        fig.set_size_inches(width, height + legend_in)
        rect = (0, legend_in / (height + legend_in), 1, 1)
    return save_figure(fig, path, rect=rect)
