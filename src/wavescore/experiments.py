"""The one experiment runner: configurations x data x sigmas -> fit, evaluate, JSON, markdown
table, plot. Benchmark scripts are lists of configurations handed to :func:`run_table`.

Every model sees the same seeded noise (``evaluation.noise_for``). The JSON is written after
every model, atomically, so an interrupted run keeps what it finished, and a rerun skips the
models already in it. Rows: ``name`` (the machine's, ``-select`` appended when it chooses per
sigma on held-out images) -> ``mse``, ``psnr``, ``seconds`` (evaluation), ``fit_seconds``,
``solve_seconds`` (one closed-form solve at an off-grid sigma), ``params``,
``memory_estimate`` and ``choice``; network rows carry ``network`` (the checkpoint).
"""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import torch

from . import _checks as checks
from ._io import WavescoreError, write_bytes_atomic, write_json
from .evaluation import DEFAULT_SIGMAS, evaluate_denoisers

__all__ = ["config_name", "fit_models", "run_table", "markdown_table", "run_samples", "samples_table", "row_name", "run_mimicry"]


def row_name(machine) -> str:
    return machine.name + ("-select" if getattr(machine, "select", False) else "")


def config_name(cfg: dict) -> str:
    """The row name ``fit_models`` gives a configuration, known before fitting."""
    from .models import build_machine

    cfg = dict(cfg)
    target = cfg.pop("calibrate_to", None)
    return _calibrated_name(build_machine(cfg).name, target)


def _calibrated_name(name: str, target: str | None) -> str:
    return name if target is None else f"{name} calibrated to {target}"


class _Finished:
    """Stands in for a machine whose outputs and samples a resumed comparison reads from its
    partial store (compare.PartialStore), so it is not fitted again; it is never called."""

    kind_ = "machine"

    def __init__(self, name: str):
        self.name = name

    def denoise(self, x, sigma):
        raise WavescoreError(f"{self.name!r} was not fitted again: its outputs should have come from the partial "
                             "store; delete OUT/.partial and rerun")


def part_images(machine, loaded: dict | None = None) -> dict:
    """``{name: images}`` for the parts of a joined machine configured with ``"data": name``
    (method.md §13, "A part fitted on other images"): ``load_dataset(name)``, the training split of
    a dataset or a file's images; ``{}`` for any other machine. ``loaded`` caches them across calls."""
    from .datasets import load_dataset

    loaded = {} if loaded is None else loaded
    names = [p["data"] for p in getattr(machine, "parts", None) or [] if isinstance(p, dict) and "data" in p]
    for name in names:
        if name not in loaded:
            loaded[name] = load_dataset(name, "train")
    return {name: loaded[name] for name in names}


def fit_models(configs: Sequence[dict], train: torch.Tensor, *, progress: bool = True,
               references: Mapping[str, object] | None = None, skip=()) -> tuple[dict, dict]:
    """``({name: fitted machine}, {name: fit seconds})`` for every configuration (``models.build_machine``).

    A configuration with ``calibrate_to="NAME"`` fits its (joined) machine's weights against the
    denoiser of ``references[NAME]`` instead of the clean images (JoinedMachine.fit reference=,
    method.md §13); its row is named "MACHINE calibrated to NAME". Joined machines reuse parts that
    an earlier configuration fitted identically (JoinedMachine.fit part_cache=), so their fit
    seconds count only what they fitted themselves. A name in ``skip`` is not fitted: it gets a
    stand-in that is never called (a resumed comparison has its outputs) and no fit seconds."""
    from .joined import JoinedMachine
    from .models import build_machine

    models, seconds, parts, loaded = {}, {}, {}, {}
    for cfg in configs:
        t0 = time.perf_counter()
        cfg = dict(cfg)
        target = cfg.pop("calibrate_to", None)
        m = build_machine(cfg)
        name = _calibrated_name(m.name, target)
        if name in models:  # a dict would silently keep only the second
            raise WavescoreError(f"two configurations make a machine named {name!r}: drop or change one")
        if target is not None and target not in (references or {}):
            raise WavescoreError(f"calibrate_to={target!r} names no reference (have: {', '.join(references or {})}):"
                                 " give its checkpoint among the networks")
        if name in skip:
            models[name] = _Finished(name)
            continue
        # joined machines share their fitted parts (JoinedMachine.fit part_cache=)
        extra = {"part_cache": parts, "images": part_images(m, loaded)} if isinstance(m, JoinedMachine) else {}
        if target is not None:
            extra["reference"] = references[target]
        m.fit(train, progress=progress, **extra)
        models[name] = m
        seconds[name] = time.perf_counter() - t0
    return models, seconds


def run_table(configs: Sequence[dict], data: str, out: Path | str, *, stem: str, title: str,
              limit_test: int | None = None, nets: Sequence[str] = (), only: Sequence[str] | None = None,
              save_machines: str | None = None, sigmas=DEFAULT_SIGMAS, table: dict | None = None,
              size: int | None = None, progress: bool = True) -> dict:
    """Fit every configuration (``models.build_machine``) on ``data``'s training split, evaluate
    it and every network checkpoint in ``nets`` on the test split, and write
    ``out/stem.{json,md,png}``. ``only``: fit just the rows whose names start with one of these.
    ``table``: options of :func:`markdown_table`; ``size``: both splits resized to size x size
    (datasets.resize). Returns the result dict."""
    from .datasets import load_dataset, resize
    from .models import build_machine
    from .plots import plot_mse_curves

    out = Path(out)
    path = out / f"{stem}.json"
    train = load_dataset(data, "train")
    test = load_dataset(data, "test", limit=limit_test)
    if size is not None:
        train, test = resize(train, size), resize(test, size)
    result = _resumable(path, data=data, size=size, n_train=int(train.shape[0]), n_test=int(test.shape[0]),
                        sigmas=[float(s) for s in sigmas])
    result.update(command=" ".join(["python"] + sys.argv),
                  machine=f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                          f"torch {torch.__version__}")
    for cfg in configs:
        m = build_machine(cfg)
        name = row_name(m)
        if name in result["models"] or (only is not None and not name.startswith(tuple(only))):
            continue
        t0 = time.perf_counter()
        m.fit(train, progress=progress)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if hasattr(m, "parameters"):
            m.parameters(0.1234)  # one closed-form solve at a sigma off every grid
        solve_s = time.perf_counter() - t0
        ev = evaluate_denoisers({name: m}, test, result["sigmas"], seed=0, progress=progress)["models"][name]
        ev.update(fit_seconds=fit_s, solve_seconds=solve_s, params=m.get_params(),
                  memory_estimate=m.memory_estimate(m.shape_))
        if getattr(m, "choice_", None):
            ev["choice"] = m.choice_
        if save_machines:
            m.save(Path(save_machines) / f"{name}.wsm")
        result["models"][name] = ev
        print(f"{name:40s} fit {fit_s:6.1f}s  " + " ".join(f"{v:.2e}" for v in ev["mse"]), flush=True)
        write_json(path, result)
    for ckpt in nets:
        from .networks import load_network

        name = Path(ckpt).stem
        if name in result["models"]:
            continue
        ev = evaluate_denoisers({name: load_network(ckpt)}, test, result["sigmas"], seed=0,
                                progress=progress)["models"][name]
        ev.update(network=str(ckpt))
        result["models"][name] = ev
        write_json(path, result)
    write_bytes_atomic(out / f"{stem}.md", markdown_table(result, **(table or {})).encode())
    plot_mse_curves(result, out / f"{stem}.png", title=title)
    return result


def table_main(configs: Sequence[dict], stem: str, title: str, description: str, *, argv=None, **table) -> dict:
    """The command line every table benchmark shares (``benchmarks/*.py`` are a list of
    configurations and one call of this): ``--data`` (default mnist), ``--limit-test``,
    ``--nets`` (checkpoints added as rows), ``-o``, ``--only`` and ``--save-machines``; the
    output stem gets ``-DATA`` for data other than mnist. ``table``: :func:`markdown_table` options."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--limit-test", type=int, default=None)
    ap.add_argument("--nets", nargs="*", default=[], help="trained network checkpoints (.pt) to add as rows")
    ap.add_argument("-o", "--output", default="benchmarks/results")
    ap.add_argument("--save-machines", default=None, help="folder to keep the fitted machines (.wsm)")
    ap.add_argument("--only", nargs="*", default=None,
                    help="fit only the models whose names start with one of these (e.g. gaussian-P1 gaussian+gates)")
    ap.add_argument("--size", type=int, default=None, help="resize both splits to SIZE x SIZE (e.g. MNIST at 64)")
    args = ap.parse_args(argv)
    if args.data != "mnist":
        stem = f"{stem}-{args.data}"
    if args.size is not None:
        stem = f"{stem}-{args.size}"
    return run_table(configs, args.data, args.output, stem=stem, size=args.size,
                     title=f"{args.data}{'' if args.size is None else f' at {args.size}x{args.size}'}: {title}",
                     limit_test=args.limit_test, nets=args.nets, only=args.only,
                     save_machines=args.save_machines, table=table or None)


def _resumable(path: Path, **protocol) -> dict:
    """The stored result at ``path`` when it was made with the same protocol (data, image counts,
    sigmas), so a rerun adds only the missing rows; else a fresh one: rows measured another way
    are never mixed into one table."""
    old = json.loads(path.read_text()) if path.exists() else {}
    if old and all(old.get(k) == v for k, v in protocol.items()):
        return old
    if old:
        print(f"{path}: made with {({k: old.get(k) for k in protocol})}, now {protocol}: starting a new table",
              file=sys.stderr)
    return {**protocol, "models": {}}


def markdown_table(result: dict, *, label: str = "model", digits: int = 3, fit_digits: int = 0,
                   relative_to: str | None = "gaussian-P1", relative_prefixes: tuple = ()) -> str:
    """One row per model, machines first (best machine per sigma in bold), then networks; then,
    for every ``-select`` machine (and every one whose name starts with one of
    ``relative_prefixes``), its MSE relative to ``relative_to`` (negative: better)."""
    sig = result["sigmas"]
    models = result["models"]
    machines = {k: v for k, v in models.items() if "network" not in v}
    best = [min(v["mse"][k] for v in machines.values()) for k in range(len(sig))]
    lines = [f"| {label} | fit (s) | " + " | ".join(f"σ={s:g}" for s in sig) + " |",
             "|---|---:|" + "---:|" * len(sig)]
    for name in list(machines) + [k for k in models if k not in machines]:
        v = models[name]
        cells = [(f"**{x:.{digits}e}**" if name in machines and x == best[k] else f"{x:.{digits}e}")
                 for k, x in enumerate(v["mse"])]
        fit = f"{v['fit_seconds']:.{fit_digits}f}" if "fit_seconds" in v else "(network)"
        lines.append(f"| {name} | {fit} | " + " | ".join(cells) + " |")
    ref = models.get(relative_to) if relative_to else None
    if ref:
        for name, v in machines.items():
            if name.endswith("-select") or name.startswith(tuple(relative_prefixes)):
                # within rounding of the reference (the same model above a gated machine's grid): 0.0%
                rel = [f"{100 * (a / g - 1):+.1f}%" if abs(a / g - 1) >= 5e-4 else "0.0%"
                       for a, g in zip(v["mse"], ref["mse"])]
                lines.append(f"| {name} vs {relative_to} | | " + " | ".join(rel) + " |")
    return "\n".join(lines) + "\n"


def run_samples(configs: Sequence[dict], data: str, out: Path | str, *, n: int = 256, steps: int = 18,
                nets: Sequence[str] = (), progress: bool = True) -> dict:
    """Fit every configuration on ``data``'s training split, then draw ``n`` samples from each
    model (and each network checkpoint) from the same initial noise (seed 0, EDM's Heun
    sampler) and measure their quality (``quality.sample_quality``). Writes one grid and one
    nearest-neighbour figure per model, ``generation.json`` after every model and
    ``generation.md``. A sampler that diverges is recorded, not fatal."""
    from ._io import WavescoreError
    from .datasets import load_dataset
    from .plots import save_image_grid
    from .quality import sample_quality
    from .samplers import sample

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = load_dataset(data, "train")
    models = fit_models(configs, train, progress=progress)[0]
    for path in nets:
        from .networks import load_network

        models[Path(path).stem] = load_network(path)
    shape = tuple(train.shape[1:])
    noise = torch.randn((n, *shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = {"command": " ".join(["python"] + sys.argv), "n": n, "steps": steps, "sampler": "heun", "models": {}}
    for name, m in models.items():
        t0 = time.perf_counter()
        try:
            x = sample(m, n, steps=steps, shape=shape, noise=noise)
        except WavescoreError as exc:  # e.g. a cubic score whose trajectory diverges
            result["models"][name] = {"diverged": str(exc)}
            print(name, "diverged:", exc, flush=True)
            write_json(out / "generation.json", result)
            continue
        secs = time.perf_counter() - t0
        save_image_grid(x[:64], out / f"{name}.png", ncol=16)
        q = sample_quality(x, data, figure=out / f"{name}_nearest.png")
        q["nearest_train_distance"].pop("per_sample")
        q["sample_seconds"] = secs
        q["sampler"] = "cascade" if getattr(m, "coarse_to_fine", False) else "heun"  # a cascade: coarse to fine
        result["models"][name] = q
        print(name, f"{secs:.1f}s", q["classifier_fd"].get("samples"), q["wavelet_packet_fd"]["samples"], flush=True)
        write_json(out / "generation.json", result)
    write_bytes_atomic(out / "generation.md", samples_table(result).encode())
    return result


def samples_main(configs: Sequence[dict], stem: str, description: str, *, argv=None) -> dict:
    """The command line every samples benchmark shares (``benchmarks/generation.py``,
    ``benchmarks/mixture_samples.py``): ``--data``, ``--n``, ``--steps``, ``--nets``, ``-o``
    (default benchmarks/results/STEM, with ``-DATA`` for data other than mnist)."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--nets", nargs="*", default=[])
    ap.add_argument("-o", "--output", default=None)
    args = ap.parse_args(argv)
    out = args.output or f"benchmarks/results/{stem}" + ("" if args.data == "mnist" else f"-{args.data}")
    return run_samples(configs, args.data, out, n=args.n, steps=args.steps, nets=args.nets)


def samples_table(result: dict) -> str:
    """One row per model: classifier and wavelet-packet Frechet distances (test references in
    brackets), median nearest-training-image distance, memorised share, class histogram."""
    lines = ["| model | classifier FD | wavelet-packet FD | median NN dist (test: ref) | memorised | classes |",
             "|---|---:|---:|---:|---:|---|"]
    for name, q in result["models"].items():
        if "diverged" in q:
            lines.append(f"| {name} | diverged | | | | |")
            continue
        nn, wp, clf = q["nearest_train_distance"], q["wavelet_packet_fd"], q["classifier_fd"]
        lines.append(f"| {name} | {clf['samples']:.1f} (ref {clf['test_reference']:.1f}) | {wp['samples']:.2f} "
                     f"(ref {wp['test_reference']:.2f}) | {nn['samples_median']:.3f} ({nn['test_median']:.3f}) | "
                     f"{100 * nn['samples_below_test_1pct']:.1f}% | {clf['class_histogram']} |")
    return "\n".join(lines) + "\n"


def run_mimicry(configs: Sequence[dict], data: str, out: Path | str, *, nets: Sequence[str] = (),
                els: dict | Sequence[dict] | None = None, n_test: int = 500, n_samples: int = 200, steps: int = 18,
                sigmas=(0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0), seed: int = 0, calibration_images: int = 16,
                progress: bool = True, keep_partial: bool = False, handover: int = 0,
                handover_nets: Sequence[str] | None = None) -> dict:
    """The machine x network matrix (issue 16): fit every configuration on ``data``'s training
    split, load every network checkpoint in ``nets`` (the references), optionally add ELS
    (``els``: ELSDenoiser options, e.g. ``{"train_subset": 10000}``, or a list of them) as
    candidates (a configuration may say ``calibrate_to="NET"``: see :func:`fit_models`; an ELS
    option set may too, and then its patch size per sigma is the one nearest NET's denoiser,
    ``baselines.calibrate_els_schedule`` on the last ``calibration_images`` training images, which
    that ELS then leaves out of its training set; named "els calibrated to NET"), and run
    ``compare.compare_models`` once over all of them: denoiser R^2 per sigma on ``n_test`` test
    images, final-sample r over ``n_samples`` shared initial noises (Heun, ``steps``). Writes
    compare.json, matrix.md/png and the labelled samples grid into ``out`` (compare.write_outputs)
    with the fit seconds and the command. Returns the result dict.

    Each model's outputs and final samples are kept in ``out/.partial`` as they are computed
    (compare.PartialStore), keyed by its configuration (and its reference's checkpoint hash) or
    its checkpoint's hash: a killed run, started again, fits only the machines whose outputs or
    samples it had not finished, and computes only those. The folder is removed once the outputs are
    written, unless ``keep_partial``: then a later run into the same ``out`` with one more
    configuration or network fits, computes and samples only that one (the networks' outputs and
    samples are keyed by their checkpoints' hashes). Delete the folder to recompute everything (e.g.
    after changing a machine's code).

    ``handover``: with n > 0, also hand each network's sampling path to its best-matching machine
    (by median r) and to every other network at each noise level and back, on n samples
    (analysis.handover): where along the path the final samples part; only for the networks named
    in ``handover_nets`` (checkpoint stems) if given. Written as compare.json's "handover" and
    handover.png; a machine the partial store had skipped is fitted for it."""
    import shutil

    from ._io import sha256_file
    from .baselines import ELSDenoiser, calibrate_els_schedule
    from .compare import compare_models, comparison_store, write_outputs
    from .datasets import load_dataset
    from .joined import JoinedMachine
    from .networks import load_network

    train = load_dataset(data, "train")
    test = load_dataset(data, "test", limit=n_test)
    nets_by_name = {}
    for path in nets:
        name = Path(path).stem
        if name in nets_by_name:
            raise WavescoreError(f"two network checkpoints are named {name!r}: rename one")
        nets_by_name[name] = load_network(path)
    net_hash = {Path(p).stem: sha256_file(p) for p in nets}
    handover = checks.whole("handover (samples to hand over)", handover, 0)
    unknown = set(handover_nets or ()) - set(nets_by_name)
    if unknown:  # before the fits, not after them
        raise WavescoreError(f"handover_nets names no network: {', '.join(sorted(unknown))} "
                             f"(have: {', '.join(nets_by_name)})")

    def key(options) -> str:  # what identifies a fitted model for the partial store
        ref = options.get("calibrate_to")
        return json.dumps({"options": options, "data": data, "n_test": n_test,
                           "reference": net_hash.get(ref)}, sort_keys=True, default=str)

    partial = Path(out) / ".partial"
    store = comparison_store(partial, train[:n_test], test, sigmas, seed=seed, n_samples=n_samples, steps=steps)
    keys = {config_name(cfg): key(cfg) for cfg in configs}
    # a resumed run fits only the machines whose outputs, samples or fit record are not stored
    stages = ("outputs", "fit") + (("samples",) if n_samples else ())
    done = {n for n, k in keys.items() if all(store.load(n, k, st) is not None for st in stages)}
    if done:
        print(f"resuming from {partial}: {len(done)} of {len(keys)} machines are done and not fitted again",
              file=sys.stderr)
    models, fit_seconds = fit_models(configs, train, progress=progress, references=nets_by_name, skip=done)
    joined = {}
    for name, m in models.items():
        if name in done:
            record = store.load(name, keys[name], "fit")
        else:
            # what each joined machine took from each part at each grid sigma (its mean weight over coefficients)
            weights = None if not isinstance(m, JoinedMachine) else {
                "sigmas": list(m.sigmas), "parts": list(m.choice_["parts"]),
                "mean_weight": [m.weights_at(s).mean(1).tolist() for s in m.sigmas]}
            record = {"seconds": fit_seconds[name], "joined_weights": weights}
            store.save(name, keys[name], "fit", record)
        fit_seconds[name] = record["seconds"]
        if record["joined_weights"] is not None:
            joined[name] = record["joined_weights"]
    els = [] if els is None else [els] if isinstance(els, Mapping) else list(els)
    els_kinds = {}
    for opts in els:
        t0 = time.perf_counter()
        opts = dict(opts)
        els_key = key({**opts, "els": True, "calibration_images": calibration_images})
        target = opts.pop("calibrate_to", None)
        name = "els" if target is None else f"els calibrated to {target}"
        if name in models:
            raise WavescoreError(f"two ELS option sets make a model named {name!r}: drop or change one")
        if target is None:
            models[name] = ELSDenoiser(train, **opts)
        elif target not in nets_by_name:
            raise WavescoreError(f"ELS calibrate_to={target!r} names no reference (have: {', '.join(nets_by_name)}):"
                                 " give its checkpoint among the networks")
        else:
            held, rest = train[-calibration_images:], train[:-calibration_images]
            sched = calibrate_els_schedule(rest, nets_by_name[target], held, sigmas, seed=seed, progress=progress,
                                           **opts)
            sched.reference = target  # the checkpoint's stem, as the row and the matrix name it
            opts["patch_size"] = sched
            models[name] = ELSDenoiser(rest, **opts)
        els_kinds[name] = "els"
        keys[name] = els_key
        fit_seconds[name] = time.perf_counter() - t0
    for name, net in nets_by_name.items():
        if name in models:
            raise WavescoreError(f"network {name!r} is named like a model already in the comparison: "
                                 "rename the checkpoint")
        models[name] = net
        keys[name] = net_hash[name]
    refs = list(nets_by_name)
    kinds = {**{r: "network" for r in refs}, **els_kinds}
    result = compare_models(models, refs, train[:n_test], test, sigmas, seed=seed, n_samples=n_samples,
                            steps=steps, kinds=kinds, progress=progress, cache=partial, keys=keys)
    finals = result.pop("_finals", None)
    if handover:
        result["handover"] = _handovers(result, models, configs, train, nets_by_name, keys, store, handover,
                                        steps, progress, handover_nets)
    schedules = {n: models[n].patch_size.to_dict() for n in els_kinds if hasattr(models[n].patch_size, "to_dict")}
    result.update(data=data, command=" ".join(["python"] + sys.argv), configs=list(configs),
                  els=[{k: str(v) for k, v in o.items()} for o in els], els_schedules=schedules,
                  joined_weights=joined, nets=list(nets), fit_seconds=fit_seconds)
    write_outputs(result, finals, out)
    if result.get("handover"):
        from .analysis import plot_handover

        plot_handover(result["handover"], Path(out) / "handover.png")
    if not keep_partial:
        shutil.rmtree(partial, ignore_errors=True)
    return result


def _handovers(result: dict, models: dict, configs, train, nets: Mapping, keys: Mapping, store, n: int,
               steps: int, progress: bool, only=None) -> dict:
    """``{"MODEL | NET": analysis.handover(MODEL, NET)}`` for every network NET and its best-matching
    machine by median r, and every other network (the ceiling's path); each kept in the partial store."""
    from .analysis import handover

    out = {}
    for ref in [r for r in nets if only is None or r in only]:
        best = (result["best_match"].get(ref) or {}).get("by_samples")
        for name in ([best["model"]] if best else []) + [o for o in nets if o != ref]:
            key = json.dumps([keys.get(name), keys.get(ref), n, steps])
            got = store.load(f"{name} | {ref}", key, "handover")
            if got is None:
                refit = None
                if isinstance(models[name], _Finished):  # skipped by a resumed run: fit it now
                    cfg = next(c for c in configs if config_name(c) == name)
                    fitted, secs = fit_models([cfg], train, progress=progress, references=nets)
                    models[name], refit = fitted[name], secs[name]
                t0 = time.perf_counter()
                got = handover(models[name], nets[ref], n=n, steps=steps, shape=tuple(train.shape[1:]),
                               progress=progress)
                got.update(seconds=time.perf_counter() - t0, refit_seconds=refit)
                store.save(f"{name} | {ref}", key, "handover", got)
            out[f"{name} | {ref}"] = got
    return out
