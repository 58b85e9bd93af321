"""The ``wavescore`` command line: one command, one subcommand per job.

Every subcommand has ``--help``; failures exit non-zero with a one-line reason.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ._io import WavescoreError


# ----------------------------------------------------------------------------- data
def _cmd_data_list(args: argparse.Namespace) -> None:
    from . import datasets

    for name, info in datasets.list_datasets().items():
        print(f"{name:15s} {info}")


def _cmd_data_fetch(args: argparse.Namespace) -> None:
    from . import datasets

    path = datasets.fetch(args.name)
    print(f"{args.name}: ready at {path}")


def _cmd_data_show(args: argparse.Namespace) -> None:
    from . import datasets, plots

    x = datasets.load_dataset(args.name, args.split, limit=args.n)
    out = Path(args.output or f"{Path(str(args.name)).stem}_{args.split}.png")
    plots.save_image_grid(x, out)
    print(f"wrote {out} ({x.shape[0]} images of shape {tuple(x.shape[1:])})")


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="list, fetch and look at datasets")
    dsub = p.add_subparsers(dest="data_cmd", required=True, metavar="{list,fetch,show}")
    q = dsub.add_parser("list", help="the datasets wavescore knows")
    q.set_defaults(func=_cmd_data_list)
    q = dsub.add_parser("fetch", help="fetch/extract a dataset into the cache, verified by sha256")
    q.add_argument("name")
    q.set_defaults(func=_cmd_data_fetch)
    q = dsub.add_parser("show", help="write a PNG grid of examples")
    q.add_argument("name")
    q.add_argument("--split", default="train")
    q.add_argument("-n", type=int, default=64, help="number of images (default 64)")
    q.add_argument("-o", "--output", help="PNG path (default NAME_SPLIT.png)")
    q.set_defaults(func=_cmd_data_show)


# ----------------------------------------------------------------------------- fit / evaluate
def _add_machine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", default="local",
                   choices=["independent", "orientation", "local", "parent", "gaussian", "gaussian+independent",
                            "gaussian+orientation", "gaussian+local", "gaussian+parent", "gaussian+gsm", "gaussian+gates",
                            "mixed"],
                   help="gaussian+FAMILY: global linear terms plus FAMILY's features of degree 2..P; "
                        "gaussian+gates: the Gaussian score plus sigma-scaled shrinkage gates (with the held-out "
                        "choice, except on a cluster); mixed: the terms given by --terms")
    p.add_argument("--gate-scales", default="1,2,4", help="gaussian+gates: own-coefficient gate widths, in sigmas")
    p.add_argument("--energy-scales", default="1,2",
                   help="gaussian+gates: widths of the gates on the window-and-parent energy, in sigmas")
    p.add_argument("--terms", help='for --family mixed: a JSON list of terms, e.g. \'[{"family": "gaussian"}, '
                                   '{"family": "parent", "degree": 2}, {"family": "local", "radius": 2, "kind": "squares"}]\'')
    p.add_argument("--select", action="store_true",
                   help="choose the sub-family degree and ridge per sigma by held-out denoising error")
    p.add_argument("--holdout", type=float, default=0.1, help="fraction of training images held out for --select")
    p.add_argument("--degree", type=int, default=1, choices=[1, 2, 3])
    p.add_argument("--radius", type=int, default=1)
    p.add_argument("--bands", default="same", choices=["same", "all"])
    p.add_argument("--shared", action="store_true", help="one parameter vector per band (translation-equivariant)")
    p.add_argument("--wavelet", default="haar")
    p.add_argument("--levels", type=int, default=None)
    p.add_argument("--ridge", type=float, default=1e-6)


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise WavescoreError(f"{flag} takes comma-separated numbers, e.g. 1,2,4; got {text!r}") from None


def _cmd_fit(args: argparse.Namespace) -> None:
    from . import datasets
    from ._io import write_json
    from .machine import ScoreMachine

    terms = None
    if args.terms is not None:
        try:
            terms = json.loads(args.terms)
        except json.JSONDecodeError as exc:
            raise WavescoreError(f"--terms must be a JSON list of terms ({exc}); see `wavescore fit --help`") from None
    if args.family == "gaussian+gates":
        from .gates import GatedMachine

        distributed = bool(args.workers or args.scheduler)
        # A cluster fit has no held-out split: it keeps the gated solution at every grid sigma.
        m = GatedMachine(scales=_floats(args.gate_scales, "--gate-scales"),
                         energy_scales=_floats(args.energy_scales, "--energy-scales"), radius=args.radius,
                         bands=args.bands, wavelet=args.wavelet, levels=args.levels, ridge=args.ridge,
                         holdout=args.holdout, select=not distributed)
        if distributed:
            print("gaussian+gates on a cluster: no held-out choice (the gated solution at every grid sigma)")
    else:
        m = ScoreMachine(family=args.family, degree=args.degree, radius=args.radius, shared=args.shared,
                         bands=args.bands, wavelet=args.wavelet, levels=args.levels, ridge=args.ridge, terms=terms,
                         select=args.select, holdout=args.holdout)
    sources = args.data or ["mnist"]
    if args.select and (args.workers or args.scheduler):
        raise WavescoreError("--select runs in one process: drop --workers/--scheduler, or fit without --select")
    if args.workers or args.scheduler:
        from .distributed import fit_distributed, row_shards

        shards = row_shards(sources[0], args.shards, split=args.split) if len(sources) == 1 else sources
        fit_distributed(m, shards, workers=args.workers, scheduler=args.scheduler, split=args.split)
    else:
        if len(sources) > 1:
            raise WavescoreError("several --data sources need --workers N or --scheduler ADDRESS")
        m.fit(datasets.load_dataset(sources[0], args.split, limit=args.limit))
    out = m.save(args.output)
    meta = {"command": " ".join(sys.argv), "data": sources, "split": args.split, "n_images": m.n_samples_,
            "params": m.get_params(), "name": m.name, "fit_seconds": m.fit_time_}
    write_json(Path(str(out) + ".json"), meta)
    print(f"fitted {m.name} on {m.n_samples_} images {m.shape_} in {m.fit_time_:.1f}s -> {out}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from . import datasets
    from ._io import write_json
    from .evaluation import evaluate_denoisers, format_table, parse_sigmas
    from .models import load_model

    sigmas = parse_sigmas(args.sigmas)
    x = datasets.load_dataset(args.data, args.split, limit=args.limit)
    models = {}
    for spec in args.model:
        name, model = load_model(spec, data=args.data)
        models[name] = model
    result = evaluate_denoisers(models, x, sigmas, seed=args.seed)
    result.update(data=str(args.data), split=args.split, command=" ".join(sys.argv))
    print(format_table(result))
    out = Path(args.output)
    write_json(out, result)
    print(f"wrote {out}")


def _add_fit_evaluate(sub: argparse._SubParsersAction) -> None:
    from .evaluation import DEFAULT_SIGMAS

    p = sub.add_parser("fit", help="fit a score machine from data moments (one pass)")
    p.add_argument("--data", action="append", help="dataset name or path (default mnist); repeat for shards")
    p.add_argument("--workers", type=int, default=None, help="fit on a local Dask cluster of N workers")
    p.add_argument("--scheduler", default=None, help="fit on the Dask cluster at this address")
    p.add_argument("--shards", type=int, default=8, help="row shards of a single --data source (default 8)")
    p.add_argument("--split", default="train")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    _add_machine_args(p)
    p.add_argument("-o", "--output", required=True, help="machine file to write (.wsm)")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("evaluate", help="denoising MSE/PSNR per sigma on fixed seeded noise")
    p.add_argument("--model", nargs="+", required=True, help="machine files (.wsm)")
    p.add_argument("--data", default="mnist")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--sigmas", default=",".join(f"{s:g}" for s in DEFAULT_SIGMAS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default="evaluation.json", help="JSON results (default evaluation.json)")
    p.set_defaults(func=_cmd_evaluate)


# ----------------------------------------------------------------------------- sample
def _cmd_sample(args: argparse.Namespace) -> None:
    import numpy as np

    from . import plots
    from ._io import atomic_path, write_json
    from .models import load_model
    from .samplers import sample

    name, model = load_model(args.model, data=args.data)
    t0 = time.perf_counter()
    x = sample(model, args.n, steps=args.steps, sampler=args.sampler, seed=args.seed)
    seconds = time.perf_counter() - t0
    out = Path(args.output)
    plots.save_image_grid(x, out)
    npz = out.with_suffix(".npz")
    with atomic_path(npz) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, samples=x.float().numpy())
    meta = {"command": " ".join(sys.argv), "model": args.model, "name": name, "n": args.n, "steps": args.steps,
            "sampler": args.sampler, "seed": args.seed, "seconds": seconds}
    if args.quality:
        from .quality import sample_quality

        meta["quality"] = sample_quality(x, args.data, figure=out.with_name(out.stem + "_nearest.png"))
    write_json(out.with_suffix(".json"), meta)
    print(f"{args.n} samples from {name} in {seconds:.1f}s -> {out}, {npz}")
    if args.quality:
        print(_quality_summary(meta["quality"]))


def _cmd_sample_quality(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from ._io import write_json
    from .quality import sample_quality

    try:
        x = torch.from_numpy(np.load(args.samples)["samples"])
    except (OSError, KeyError, ValueError) as exc:
        raise WavescoreError(f"cannot read samples from {args.samples} ({exc}): give the .npz written by `wavescore sample`")
    out = Path(args.output)
    q = sample_quality(x, args.data, figure=out.with_suffix(".png"))
    write_json(out, {"command": " ".join(sys.argv), "samples": args.samples, "data": args.data, **q})
    print(_quality_summary(q))


def _quality_summary(q: dict) -> str:
    nn, wp, clf = q["nearest_train_distance"], q["wavelet_packet_fd"], q["classifier_fd"]
    lines = [f"nearest-train RMS distance: samples median {nn['samples_median']:.3f}, test median {nn['test_median']:.3f}, "
             f"samples closer than the test's 1st percentile {100 * nn['samples_below_test_1pct']:.1f}%",
             f"wavelet-packet FD: {wp['samples']:.3f} (held-out test reference {wp['test_reference']:.3f})"]
    if "samples" in clf:
        lines.append(f"classifier FD: {clf['samples']:.3f} (reference {clf['test_reference']:.3f}; classifier test "
                     f"accuracy {100 * clf['classifier_test_accuracy']:.1f}%), class histogram {clf['class_histogram']}")
    else:
        lines.append(f"classifier FD: skipped ({clf['skipped']})")
    return "\n".join(lines)


def _add_sample(sub: argparse._SubParsersAction) -> None:
    from .samplers import SAMPLERS

    p = sub.add_parser("sample", help="draw samples by reverse diffusion with a model's denoiser")
    p.add_argument("--model", required=True, help="machine (.wsm) or network checkpoint")
    p.add_argument("-n", type=int, default=64)
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--sampler", default="heun", choices=list(SAMPLERS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="mnist", help="training data (for --quality)")
    p.add_argument("--quality", action="store_true", help="also measure sample quality against --data")
    p.add_argument("-o", "--output", default="samples.png", help="PNG grid; .npz and .json are written beside it")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("sample-quality", help="memorisation, classifier Frechet distance, wavelet-packet Frechet distance")
    p.add_argument("--samples", required=True, help=".npz written by `wavescore sample`")
    p.add_argument("--data", default="mnist")
    p.add_argument("-o", "--output", default="quality.json")
    p.set_defaults(func=_cmd_sample_quality)


# ----------------------------------------------------------------------------- compare
def _cmd_compare(args: argparse.Namespace) -> None:
    from . import datasets
    from ._io import write_json
    from .compare import compare_models, plot_r2
    from .evaluation import parse_sigmas
    from .models import REFERENCE_KINDS, load_model

    sigmas = parse_sigmas(args.sigmas)
    models = {}
    for spec in args.models:
        name, model = load_model(spec, data=args.data, limit=args.train_limit)
        models[name] = model
    refs = args.reference or [n for n, m in models.items() if getattr(m, "kind_", "") in REFERENCE_KINDS]
    if not refs:
        raise WavescoreError("no reference to compare against: add a network (.pt), 'empirical' or 'els', or --reference")
    train = datasets.load_dataset(args.data, "train", limit=args.n)
    test = datasets.load_dataset(args.data, args.split, limit=args.n)
    result = compare_models(models, refs, train, test, sigmas, seed=args.seed, n_samples=args.samples,
                            steps=args.steps)
    finals = result.pop("_finals", None)
    result.update(data=str(args.data), command=" ".join(sys.argv))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", result)
    plot_r2(result, out / "r2_denoiser.png", "denoiser")
    plot_r2(result, out / "r2_score.png", "score")
    if finals:
        from .plots import save_image_grid
        import torch

        k = min(8, args.samples)
        save_image_grid(torch.cat([f[:k] for f in finals.values()]), out / "samples.png", ncol=k)
    for ref, rows in result["r2"].items():
        print(f"R² of the denoiser output against {ref}:")
        print(f"{'model':28s} " + " ".join(f"{s:>7g}" for s in sigmas))
        for name, v in rows.items():
            print(f"{name:28s} " + " ".join(f"{x:7.3f}" for x in v["denoiser"]))
    print(f"wrote {out}/compare.json and plots")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="MSE on train/test and R² of each machine against networks / empirical / ELS")
    p.add_argument("--models", nargs="+", required=True, help="*.wsm, *.pt, empirical, els")
    p.add_argument("--reference", nargs="*", help="names of the references (default: every non-machine model)")
    p.add_argument("--data", default="mnist")
    p.add_argument("--split", default="test")
    p.add_argument("--sigmas", default="0.02,0.05,0.1,0.2,0.5,1,2,5")
    p.add_argument("-n", type=int, default=1000, help="images per split (default 1000)")
    p.add_argument("--train-limit", type=int, default=None, help="training images for empirical/els (default all)")
    p.add_argument("--samples", type=int, default=0, help="also sample this many from shared initial noise")
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default="compare", help="output folder")
    p.set_defaults(func=_cmd_compare)


# ----------------------------------------------------------------------------- train
def _cmd_train(args: argparse.Namespace) -> None:
    from . import datasets
    from .networks import train

    x = datasets.load_dataset(args.data, "train", limit=args.limit)
    arch_kwargs = {}
    if args.arch == "cnn":
        arch_kwargs = {"width": args.width or 64, "depth": args.depth}
    elif args.width:
        arch_kwargs = {"base": args.width}
    t0 = time.perf_counter()
    net = train(args.arch, x, epochs=args.epochs, out=args.output, batch_size=args.batch_size, lr=args.lr,
                seed=args.seed, max_minutes=args.max_minutes, arch_kwargs=arch_kwargs)
    last = net.history_[-1] if net.history_ else {}
    print(f"trained {args.arch} to epoch {net.epoch_} in {time.perf_counter() - t0:.0f}s "
          f"(last epoch loss {last.get('loss', float('nan')):.4f}) -> {args.output}")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a small CNN or U-Net denoiser (EDM preconditioning and loss)")
    p.add_argument("--arch", choices=["unet", "cnn"], required=True)
    p.add_argument("--data", default="mnist")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--width", type=int, default=None, help="CNN width / U-Net base channels")
    p.add_argument("--depth", type=int, default=8, help="CNN depth (receptive field 1 + 2 depth)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=None, help="stop after the epoch that passes this budget")
    p.add_argument("-o", "--output", required=True, help="checkpoint (.pt); resumed if it exists")
    p.set_defaults(func=_cmd_train)


# ----------------------------------------------------------------------------- report / run
def _cmd_report(args: argparse.Namespace) -> None:
    from .report import run_report

    t0 = time.perf_counter()
    run_report(args.data, args.output, n_test=args.n_test, n_train=args.n_train, network=args.network)
    print(f"report written to {Path(args.output) / 'index.html'} in {time.perf_counter() - t0:.0f}s")


def _add_report(sub: argparse._SubParsersAction) -> None:
    for name, help_ in (("report", "run the standard analysis and write a self-contained HTML report"),
                        ("run", "the main job: fit the standard machines, evaluate, sample, analyse, report")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--data", default="mnist")
        p.add_argument("--n-test", type=int, default=2000, help="held-out images to evaluate on")
        p.add_argument("--n-train", type=int, default=None, help="training images (default all)")
        p.add_argument("--network", default=None, help="a trained network (.pt) to also schedule locality against")
        p.add_argument("-o", "--output", default="report")
        p.set_defaults(func=_cmd_report)


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wavescore",
        description="Wavelet score machines: fit the optimal score from data moments, denoise, sample, analyse.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    _add_data(sub)
    for add in _EXTRA_COMMANDS:
        add(sub)
    return parser


# Later modules (fit, evaluate, ...) register their subcommand adders here.
_EXTRA_COMMANDS: list = [_add_fit_evaluate, _add_sample, _add_compare, _add_train, _add_report]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except WavescoreError as exc:
        print(f"wavescore: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wavescore: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
