"""The standard analysis as one self-contained HTML page plus a JSON of every number.

``run_report(data, out)`` fits the standard machines, evaluates them on held-out images,
splits their error over subbands, attributes the gains of feature groups (exact Shapley),
draws shrinkage curves, local filters and samples, and writes ``index.html`` (every image
embedded) and ``report.json`` into ``out``. ``wavescore report`` and ``wavescore run`` call it.
"""
from __future__ import annotations

import base64
import html
import platform
import time
from pathlib import Path

import torch

from ._io import WavescoreError, write_bytes_atomic, write_json

STANDARD = [
    dict(family="gaussian"),
    dict(family="independent", degree=1),
    dict(family="independent", degree=3),
    dict(family="orientation", degree=2),
    dict(family="local", degree=1),
    dict(family="local", degree=2),
    dict(family="local", degree=2, shared=True),
    dict(family="parent", degree=2),
    dict(cls="gated"),  # GatedMachine(): the Gaussian score plus sigma-scaled shrinkage gates (method.md §9)
    dict(family="mixture", components=100),  # a global Gaussian mixture, exact noisy score (§11)
    dict(family="local-mixture", components=64, basis="pixel"),  # a mixture over every 3x3 patch (§12)
    dict(family="mixture+local-mixture"),  # the parts weighted per sigma and band on held-out images (§13)
    dict(family="cascade", components=16),  # coarse mixture, local conditionals, sampled coarse to fine (§14)
]

SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def run_report(data: str = "mnist", out="report", *, n_test: int = 2000, n_train: int | None = None,
               n_samples: int = 32, steps: int = 18, sigmas=SIGMAS, configs=None, network=None,
               progress: bool = True) -> dict:
    """``network``: an optional trained denoiser (checkpoint path or model) to schedule the
    locality against by agreement, beside the schedule chosen by held-out error, and to measure
    each machine's mimicry of (``compare.compare_models``: report["mimicry"], the mimicry_*
    files, a section with the matrix and the labelled samples grid)."""
    from ._io import progress_bar

    from . import analysis
    from .datasets import load_dataset
    from .evaluation import evaluate_denoisers
    from .machine import ScoreMachine
    from .experiments import fit_models
    from .plots import plot_mse_curves, save_image_grid
    from .samplers import sample

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    configs = configs or STANDARD
    sigmas = [float(s) for s in sigmas]
    report: dict = {"data": str(data), "sigmas": sigmas, "n_test": n_test, "configs": configs,
                    "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
                    "timings": {}}
    train = load_dataset(data, "train", limit=n_train)
    test = load_dataset(data, "test", limit=n_test)
    report["n_train"] = len(train)
    report["timings"]["load"] = time.perf_counter() - t_start

    stages = progress_bar(total=6 + (network is not None), desc="report", enabled=progress)

    def stage_done():
        stages.update()
        write_json(out / "report.json", report)  # partial results survive a later failure
    t_fit = time.perf_counter()
    machines, fit_s = fit_models(configs, train, progress=progress)
    report["fit_seconds"] = fit_s
    report["timings"]["fit"] = time.perf_counter() - t_fit
    stage_done()

    t0 = time.perf_counter()
    ev = evaluate_denoisers(machines, test, sigmas, progress=progress)
    report["evaluation"] = ev
    plot_mse_curves(ev, out / "mse.png")
    report["timings"]["evaluate"] = time.perf_counter() - t0
    stage_done()

    t0 = time.perf_counter()
    best_local = machines.get("local-r1-P2") or next(iter(machines.values()))
    split = analysis.subband_errors(best_local, test[:1000], sigmas, best_local.transform_)
    report["subband_errors"] = {best_local.name: split}
    analysis.plot_subband_errors(split, out / "subbands.png", f"{best_local.name}: share of MSE per subband")
    report["timings"]["subbands"] = time.perf_counter() - t0
    stage_done()

    t0 = time.perf_counter()
    shap = {}
    for cfg in (dict(family="parent", degree=2, radius=1, bands="same"),
                dict(family="parent", degree=2, radius=0, bands="all")):
        m = ScoreMachine(**cfg)
        m = machines[m.name] if m.name in machines else m.fit(train, progress=progress)
        res = analysis.shapley_groups(m, test[:1000], sigmas, progress=progress)
        shap[m.name] = res
        analysis.plot_shapley(res, out / f"shapley_{m.name}.png", f"{m.name}: Shapley attribution")
    report["shapley"] = shap
    report["timings"]["shapley"] = time.perf_counter() - t0
    t0 = time.perf_counter()

    # Locality against noise: translation-equivariant local machines of growing window (the
    # machine analogue of the ELS patch), chosen per sigma on held-out images, beside the ELS
    # schedule. The global Gaussian score is left out: it wins everywhere on MNIST (see the
    # error table), which says nothing about locality.
    from .baselines import mnist_patch_schedule

    cands, locality = {}, {}
    for r in (0, 1, 2, 3):
        m = ScoreMachine(family="local", degree=1, radius=r, shared=True).fit(train, progress=False)
        cands[m.name] = m
        locality[m.name] = min(2 * (2 * r + 1), train.shape[-1])  # window width at the finest level, pixels
    _, sched = analysis.schedule(cands, test[-500:], sigmas)
    sched["locality_px"] = locality
    report["schedule"] = sched
    extra = {}
    if network is not None:
        label = Path(network).stem if isinstance(network, (str, Path)) else getattr(network, "name", None)
        net_name = f"network:{label}" if isinstance(label, str) and label else "network"
        if isinstance(network, (str, Path)):
            from .networks import load_network

            network = load_network(network)
        _, report["schedule_network"] = analysis.schedule(cands, test[-500:], sigmas, reference=network)
        extra["chosen by agreement with the network"] = report["schedule_network"]
    analysis.plot_schedule(sched, locality, out / "schedule.png", mnist_patch_schedule,
                           "window chosen per sigma vs the ELS patch size", extra=extra)
    report["timings"]["schedule"] = time.perf_counter() - t0
    stage_done()

    t0 = time.perf_counter()
    ind = ScoreMachine(family="independent", degree=3).fit(train, progress=False)
    report["shrinkage"] = analysis.shrinkage_curves(ind, [0.05, 0.2, 1.0])
    analysis.plot_shrinkage(report["shrinkage"], out / "shrinkage.png")
    loc = machines.get("local-r1-P1-shared") or ScoreMachine(family="local", degree=1, shared=True).fit(train, progress=False)
    report["filters"] = analysis.local_filters(loc, [0.05, 0.2, 1.0, 5.0])
    analysis.plot_filters(report["filters"], out / "filters.png")
    report["timings"]["curves"] = time.perf_counter() - t0
    stage_done()

    t0 = time.perf_counter()
    noise = torch.randn((n_samples, *train.shape[1:]), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grids, rows, diverged = [], [], {}
    for name, m in machines.items():
        try:
            x = sample(m, n_samples, steps=steps, noise=noise)
        except WavescoreError as exc:  # a polynomial score can push a trajectory to infinity
            diverged[name] = str(exc)
            continue
        grids.append(x[:8])
        rows.append(name)
    save_image_grid(torch.cat(grids), out / "samples.png", ncol=8)
    report["samples"] = {"rows": rows, "diverged": diverged, "n": n_samples, "steps": steps,
                         "sampler": {name: "cascade" if getattr(machines[name], "coarse_to_fine", False) else "heun"
                                     for name in rows}}
    cascades = [m for m in machines.values() if getattr(m, "coarse_to_fine", False)]
    if cascades:  # each scale's conditional alone: the error of d_j given the clean a_j (method.md §14)
        report["cascade_levels"] = {cascades[0].name: cascades[0].level_errors(test[:500], sigmas)}
    joined = [m for m in machines.values() if hasattr(m, "parts_")]
    if joined:  # which part serves which band at which sigma: the per-scale reading (method.md §13)
        report["join_weights"] = joined[0].choice_
        analysis.plot_join_weights(joined[0].choice_, out / "join_weights.png")
    report["timings"]["sample"] = time.perf_counter() - t0
    stage_done()

    if network is not None:
        # Mimicry (`wavescore compare`): how closely each machine reproduces the network, per
        # sigma and in its final samples from shared noise. Kept small: 500 images per split,
        # the report's samples (the median r wants 200 or more; `wavescore compare --samples 200`).
        from .compare import compare_models, write_outputs

        t0 = time.perf_counter()
        mim = compare_models({**machines, net_name: network}, [net_name], train[:500], test[:500], sigmas,
                             n_samples=n_samples, steps=steps, kinds={net_name: "network"}, progress=progress)
        finals = mim.pop("_finals", None)
        write_outputs(mim, finals, out, prefix="mimicry_")
        report["mimicry"] = mim
        report["timings"]["mimicry"] = time.perf_counter() - t0
        stage_done()
    stages.close()

    report["timings"]["total"] = time.perf_counter() - t_start
    write_json(out / "report.json", report)
    write_bytes_atomic(out / "index.html", render_html(report, out).encode())
    return report


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(ev: dict) -> str:
    sig = ev["sigmas"]
    best = [min(v["mse"][k] for v in ev["models"].values()) for k in range(len(sig))]
    head = "<tr><th>machine</th>" + "".join(f"<th>σ={s:g}</th>" for s in sig) + "</tr>"
    rows = []
    for name, v in ev["models"].items():
        cells = "".join(f"<td>{'<b>' if x == best[k] else ''}{x:.2e}{'</b>' if x == best[k] else ''}</td>"
                        for k, x in enumerate(v["mse"]))
        rows.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _shapley_table(res: dict) -> str:
    sig = res["sigmas"]
    head = "<tr><th>group</th>" + "".join(f"<th>σ={s:g}</th>" for s in sig) + "</tr>"
    rows = []
    for g, v in res["shapley"].items():
        cells = "".join(f"<td>{100 * x / b:.1f}%</td>" for x, b in zip(v, res["baseline_mse"]))
        rows.append(f"<tr><td>{g}</td>{cells}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def render_html(report: dict, out: Path) -> str:
    parts = [f"<h1>wavescore report: {html.escape(report['data'])}</h1>",
             f"<p>{report['n_train']} training images, {report['n_test']} held-out test images; "
             f"{html.escape(report['machine'])}; total {report['timings']['total']:.0f} s "
             "(" + ", ".join(f"{k} {v:.0f} s" for k, v in report["timings"].items() if k != "total") + ").</p>",
             "<h2>Denoising error per machine</h2>", _table(report["evaluation"]), _img(out / "mse.png", "mse"),
             "<h2>Where the error lives</h2>", _img(out / "subbands.png", "subbands"),
             "<h2>Which dependencies and moments matter (exact Shapley, % of the own-linear MSE)</h2>"]
    for name, res in report["shapley"].items():
        parts += [f"<h3>{html.escape(name)}</h3>", _shapley_table(res), _img(out / f"shapley_{name}.png", name)]
    sch = report["schedule"]
    parts += ["<h2>Locality chosen per noise level</h2>",
              "<p>By held-out error: " + ", ".join(f"σ={s:g}: {html.escape(c)}" for s, c in zip(sch["sigmas"], sch["choice"]))
              + "</p>"]
    if "schedule_network" in report:
        net = report["schedule_network"]
        parts.append("<p>By agreement with the network: "
                     + ", ".join(f"σ={s:g}: {html.escape(c)}" for s, c in zip(net["sigmas"], net["choice"])) + "</p>")
    parts.append(_img(out / "schedule.png", "schedule"))
    parts += ["<h2>Fitted shrinkage curves (independent, P=3)</h2>", _img(out / "shrinkage.png", "shrinkage"),
              "<h2>Fitted local filters (local, P=1, shared)</h2>", _img(out / "filters.png", "filters"),
              "<h2>Samples (same initial noise, one row per machine)</h2>",
              "<p>" + ", ".join(html.escape(r) for r in report["samples"]["rows"])
              + "".join(f"; <b>{html.escape(n)} diverged</b>" for n in report["samples"]["diverged"]) + "</p>",
              _img(out / "samples.png", "samples")]
    if "mimicry" in report:
        from .compare import matrix_html

        mim = report["mimicry"]
        parts += ["<h2>Mimicry: how closely each machine reproduces the network</h2>",
                  f"<p>Denoiser R² on {mim['n_test']} held-out images per σ, and the per-sample Pearson r of final "
                  "samples drawn from the same noise (the median is steady only from about 200 samples: "
                  "<code>wavescore compare --samples 200</code>).</p>", matrix_html(mim)]
        if (out / "mimicry_samples.png").exists():
            parts.append(_img(out / "mimicry_samples.png", "mimicry samples"))
    for name, lev in report.get("cascade_levels", {}).items():
        head = "<tr><th>level</th>" + "".join(f"<th>σ={x:g}</th>" for x in lev["sigmas"]) + "</tr>"
        rows = "".join(f"<tr><td>{html.escape(k)}</td>" + "".join(f"<td>{e / x**2:.3f}</td>" for e, x in
                                                                   zip(v, lev["sigmas"])) + "</tr>"
                       for k, v in lev["levels"].items())
        parts += [f"<h2>The cascade per scale: {html.escape(name)}</h2>",
                  "<p>Error of each level's conditional denoiser of the details given the clean coarser image, "
                  "relative to the noise (1: no better than the noisy details; docs/method.md §14).</p>",
                  f"<table>{head}{rows}</table>"]
    if "join_weights" in report:
        parts += ["<h2>Which machine serves which wavelet band at which noise level (the joined machine)</h2>",
                  "<p>Held-out affine weights per band and sigma (docs/method.md §13): the local mixture takes the "
                  "fine bands at low noise, the global mixture the coarse bands and high noise.</p>",
                  _img(out / "join_weights.png", "join weights")]
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%;display:block;margin:8px 0}")
    check = ("<script>window.addEventListener('load',()=>{const bad=[...document.images].filter(i=>!i.naturalWidth);"
             "document.body.setAttribute('data-images',bad.length?'broken':'ok');});</script>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>wavescore report</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}{check}</body></html>")
