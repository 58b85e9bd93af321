"""The ``wavescore`` command line: one command, one subcommand per job.

Every subcommand has ``--help``; failures exit non-zero with a one-line reason.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from . import _checks as checks
from ._io import WavescoreError
from .models import DIFFUSERS_PREFIX

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MODEL_HELP = ("models: machine files (.wsm), network checkpoints (.pt or .safetensors), 'diffusers:DIR' (a "
              "diffusers UNet2DModel and its scheduler), 'empirical' or 'els'")


# ----------------------------------------------------------------------------- argument checks
# Every number and path a user types is checked here, before any work: a bad one ends the
# command with one line on stderr and exit status 2 (argparse's own convention for usage errors).
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _argument(check):
    """An argparse type from a ``_checks`` function: the constructors' check, its message as argparse's."""
    def parse(text: str):
        try:
            return check(text)
        except WavescoreError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def _whole(minimum: int):
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = text  # refused by checks.whole with the text in its message
        return checks.whole("the value", value, minimum)
    return _argument(check)


@_argument
def _whole_or_auto(text: str):
    return "auto" if text == "auto" else checks.whole("the value", int(text) if text.lstrip("-").isdigit() else text, 1)


def _real(**bounds):
    return _argument(lambda text: checks.real("the value", text, **bounds))


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _writable_folder(folder: Path, flag: str, text: str) -> None:
    """The nearest existing folder above ``folder`` must take a new file (probed, then removed)."""
    q = Path(os.path.abspath(folder))
    while not q.exists() and q != q.parent:
        q = q.parent
    if not q.is_dir():
        raise WavescoreError(f"{flag} {text}: {q} is a file, not a folder; choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".wavescore-probe-", dir=q)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise WavescoreError(f"{flag} {text}: cannot write in {q} ({exc.strerror or exc}); choose a writable place") from None


def _input_paths(*specs) -> list[Path]:
    """The existing files and folders among the inputs (dataset names and 'empirical' are not paths)."""
    out = []
    for spec in specs:
        for item in (spec if isinstance(spec, (list, tuple)) else [spec]):
            if item is None:
                continue
            item = str(item).removeprefix(DIFFUSERS_PREFIX)
            if item and Path(item).exists():
                out.append(Path(item))
    return out


def _output_file(text, inputs=(), *, suffixes=None, flag: str = "-o", also=()) -> Path:
    """Check an output file before any work: a name, a known suffix, not a folder, not one of the
    inputs (nor are the files written ``also`` beside it), and a folder that takes files."""
    if text is None or not str(text).strip():
        raise WavescoreError(f"{flag} needs a file name, got {text!r}")
    path = Path(text)
    if suffixes and path.suffix.lower() not in suffixes:
        raise WavescoreError(f"{flag} {text}: the file name must end in {' or '.join(suffixes)}")
    for p in (path, *also):
        if p.is_dir():
            raise WavescoreError(f"{flag} {text}: {p} is a folder; give a file name")
        for i in inputs:
            if _same_file(p, i):
                raise WavescoreError(f"{flag} {text}: writing {p} would overwrite the input {i}; choose another name")
    _writable_folder(path.parent, flag, text)
    return path


def _output_folder(text, inputs=(), *, flag: str = "-o") -> Path:
    if text is None or not str(text).strip():
        raise WavescoreError(f"{flag} needs a folder name, got {text!r}")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise WavescoreError(f"{flag} {text} is a file; give a folder for the outputs")
    for i in inputs:
        if _same_file(path, i):
            raise WavescoreError(f"{flag} {text} is also an input; choose another folder")
    _writable_folder(path, flag, text)
    return path


def _load_models(specs, data, *, limit=None) -> dict:
    """{name: model} for ``specs``; the same file twice is refused, and two different models
    with one name (``a.wsm`` and ``b/a.wsm``, or two machines of one family) are told apart by
    their spec instead of one silently replacing the other."""
    from .models import load_model

    keys = {}
    for spec in specs:
        key = os.path.realpath(spec) if Path(spec).exists() else spec
        if key in keys:
            raise WavescoreError(f"model {spec!r} is given twice (as {keys[key]!r} too): give each model once")
        keys[key] = spec
    loaded = [(spec, *load_model(spec, data=data, limit=limit)) for spec in specs]
    names = [name for _, name, _ in loaded]
    models, source = {}, {}
    for spec, name, model in loaded:
        key = f"{name} [{spec}]" if names.count(name) > 1 else name
        # a model literally named like another's disambiguated name would replace it in the dict
        if key in models:
            raise WavescoreError(f"models {source[key]!r} and {spec!r} both end up named {key!r}: rename or "
                                 "refit one of them so that their names differ")
        models[key], source[key] = model, spec
    return models


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

    out = _output_file(args.output or f"{Path(str(args.name)).stem}_{args.split}.png", _input_paths(args.name),
                       suffixes=IMAGE_SUFFIXES)
    x = datasets.load_dataset(args.name, args.split, limit=args.n)
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
    q.add_argument("-n", type=_whole(1), default=64, help="number of images (default 64)")
    q.add_argument("-o", "--output", help="PNG or JPEG path (default NAME_SPLIT.png)")
    q.set_defaults(func=_cmd_data_show)


# ----------------------------------------------------------------------------- fit / evaluate
def _add_machine_args(p: argparse.ArgumentParser) -> None:
    from .presets import PRESETS

    p.add_argument("--family", default="local", choices=list(PRESETS), metavar="FAMILY",
                   help="; ".join(f"{n}: {p.description}" for n, p in PRESETS.items()).replace("%", "%%"))
    p.add_argument("--gate-scales", default=None,
                   help="gaussian+gates: own-coefficient gate widths, in sigmas (default 1,2,4)")
    p.add_argument("--energy-scales", default=None,
                   help="gaussian+gates: widths of the gates on the window-and-parent energy, in sigmas (default 1,2)")
    p.add_argument("--components", type=_whole_or_auto, default=None,
                   help="mixture (and mixture+local-mixture's global part): the number of Gaussian components "
                        "(default 100; auto: chosen by held-out denoising error); local-mixture: per band (default 64)")
    p.add_argument("--basis", default=None, choices=["wavelet", "pixel"],
                   help="local-mixture: neighbourhoods of wavelet coefficients or pixel patches (default pixel)")
    p.add_argument("--covariance", default=None, choices=["full", "lowrank"],
                   help="mixture: full covariances (default) or low rank plus diagonal, U U^T + diag(d), with --rank "
                        "factors (method.md §11)")
    p.add_argument("--rank", type=_whole(1), default=None,
                   help="mixture with --covariance lowrank: the number of factors per component (e.g. 20)")
    p.add_argument("--temperature", type=_real(above=0), default=None,
                   help="mixture: the responsibilities' temperature T (default 1, the exact score; T > 1 hedges "
                        "between components; method.md §11)")
    p.add_argument("--border", type=_whole(0), default=None,
                   help="local-mixture and scheduled-local-mixture with pixel patches: one mixture per class of "
                        "distance (< B pixels) to the edge, the interior shared (default 0: all shared; method.md §12)")
    p.add_argument("--terms", help='for --family mixed: a JSON list of terms, e.g. \'[{"family": "gaussian"}, '
                                   '{"family": "parent", "degree": 2}, {"family": "local", "radius": 2, "kind": "squares"}]\'')
    p.add_argument("--select", action="store_true",
                   help="choose the sub-family degree and ridge per sigma by held-out denoising error "
                        "(gaussian+gates always chooses)")
    p.add_argument("--holdout", type=_real(above=0), default=0.1,
                   help="fraction of training images held out for the choice, in (0, 0.5)")
    p.add_argument("--degree", type=int, default=None, choices=[1, 2, 3], help="polynomial degree P (default 1)")
    p.add_argument("--radius", type=_whole(0), default=1)
    p.add_argument("--bands", default="same", choices=["same", "all"])
    p.add_argument("--shared", action="store_true", help="one parameter vector per band (translation-equivariant)")
    p.add_argument("--wavelet", default="haar")
    p.add_argument("--levels", type=_whole(1), default=None)
    p.add_argument("--ridge", type=_real(minimum=0), default=1e-6)


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(not (math.isfinite(v) and v > 0) for v in values):
        raise WavescoreError(f"{flag} takes comma-separated positive numbers, e.g. 1,2,4; got {text!r}")
    return values


def _build_fit_machine(args: argparse.Namespace):
    """The machine the fit arguments describe; an option the chosen family would ignore is refused."""
    from .machine import ScoreMachine

    distributed = bool(args.workers or args.scheduler)
    if args.family in ("mixture", "local-mixture", "mixture+local-mixture", "cascade", "scheduled-local-mixture"):
        ignored = [flag for flag, given in (("--degree", args.degree is not None), ("--shared", args.shared),
                                            ("--terms", args.terms is not None), ("--select", args.select),
                                            ("--gate-scales", args.gate_scales is not None),
                                            ("--energy-scales", args.energy_scales is not None),
                                            ("--basis", args.family not in ("local-mixture", "scheduled-local-mixture")
                                             and args.basis is not None),
                                            ("--bands", args.family != "local-mixture" and args.bands != "same"),
                                            ("--covariance", args.family != "mixture" and args.covariance is not None),
                                            ("--rank", args.family != "mixture" and args.rank is not None),
                                            ("--temperature", args.family != "mixture" and args.temperature is not None),
                                            ("--border", args.family not in ("local-mixture", "scheduled-local-mixture")
                                             and args.border is not None))
                   if given]
        settable = {"mixture": "--components, --covariance, --rank, --temperature",
                    "local-mixture": "--components, --radius, --basis, --bands, --border",
                    "mixture+local-mixture": "--components for the global mixture, --radius for the local one",
                    "cascade": "--components and --radius of the conditionals, --levels",
                    "scheduled-local-mixture": "--components, --basis, --radius (the largest; radii 1..R), --border"}
        settable = settable[args.family]
        if ignored:
            raise WavescoreError(f"{', '.join(ignored)} does not apply to --family {args.family} (set {settable}): "
                                 "drop it")
        if distributed:
            raise WavescoreError("a mixture fit runs in one process (its clustering sees every image): "
                                 "drop --workers/--scheduler")
        if args.family == "mixture":
            from .mixture import MixtureMachine

            if args.rank is not None and args.covariance is None:
                args.covariance = "lowrank"  # --rank alone means the low-rank form
            return MixtureMachine(components=100 if args.components is None else args.components,
                                  wavelet=args.wavelet, levels=args.levels, covariance=args.covariance or "full",
                                  rank=args.rank, temperature=1.0 if args.temperature is None else args.temperature)
        if args.family == "cascade":
            from .cascade import CascadeMachine

            return CascadeMachine(components=16 if args.components is None else args.components, radius=args.radius,
                                  levels=args.levels, wavelet=args.wavelet)
        if args.family == "mixture+local-mixture":
            from .joined import DEFAULT_PARTS, JoinedMachine

            gaussian, mixture, local, gated = (dict(p) for p in DEFAULT_PARTS)
            if args.components is not None:
                mixture["components"] = args.components
            local["radius"] = args.radius
            for part in (gaussian, mixture, gated):
                part.update(wavelet=args.wavelet, levels=args.levels)
            return JoinedMachine(parts=[gaussian, mixture, local, gated], wavelet=args.wavelet, levels=args.levels)
        if args.family == "scheduled-local-mixture":
            from .joined import scheduled_local_mixture

            if args.radius < 2:
                raise WavescoreError(f"--family scheduled-local-mixture chooses among radii 1..R per sigma and needs "
                                     f"--radius R >= 2, got {args.radius}: e.g. --radius 3")
            return scheduled_local_mixture(radii=range(1, args.radius + 1), basis=args.basis or "pixel",
                                           components=64 if args.components is None else args.components,
                                           wavelet=args.wavelet, levels=args.levels, border=args.border or 0)
        from .local_mixture import LocalMixtureMachine

        return LocalMixtureMachine(components=64 if args.components is None else args.components, radius=args.radius,
                                   bands=args.bands, basis=args.basis or "pixel", wavelet=args.wavelet,
                                   levels=args.levels, border=args.border or 0)
    if args.components is not None:
        raise WavescoreError("--components applies only to --family mixture, local-mixture or mixture+local-mixture: "
                             "drop it")
    if args.basis is not None:
        raise WavescoreError("--basis applies only to --family local-mixture: drop it")
    if args.covariance is not None or args.rank is not None or args.temperature is not None:
        raise WavescoreError("--covariance, --rank and --temperature apply only to --family mixture: drop them")
    if args.border is not None:
        raise WavescoreError("--border applies only to --family local-mixture or scheduled-local-mixture: drop it")
    if args.family == "strongest":
        from .joint import JointMachine

        ignored = [flag for flag, given in (("--shared", args.shared), ("--terms", args.terms is not None)) if given]
        if ignored:
            raise WavescoreError(f"{', '.join(ignored)} does not apply to --family strongest (its polynomial terms "
                                 "are gaussian+gsm's, its gates set by --gate-scales and --energy-scales): drop it")
        return JointMachine(degree=3 if args.degree is None else args.degree,
                            scales=_floats(args.gate_scales or "1,2,4", "--gate-scales"),
                            energy_scales=_floats(args.energy_scales or "1,2", "--energy-scales"),
                            radius=args.radius, bands=args.bands, wavelet=args.wavelet, levels=args.levels,
                            ridge=args.ridge, holdout=args.holdout, select=not distributed)
    if args.family == "gaussian+gates":
        from .gates import GatedMachine

        ignored = [flag for flag, given in (("--degree", args.degree is not None), ("--shared", args.shared),
                                            ("--terms", args.terms is not None)) if given]
        if ignored:
            raise WavescoreError(f"{', '.join(ignored)} does not apply to --family gaussian+gates "
                                 "(its gates are set by --gate-scales and --energy-scales): drop it")
        # A cluster fit has no held-out split: it keeps the gated solution at every grid sigma.
        return GatedMachine(scales=_floats(args.gate_scales or "1,2,4", "--gate-scales"),
                            energy_scales=_floats(args.energy_scales or "1,2", "--energy-scales"),
                            radius=args.radius, bands=args.bands, wavelet=args.wavelet, levels=args.levels,
                            ridge=args.ridge, holdout=args.holdout, select=not distributed)
    ignored = [flag for flag, given in (("--gate-scales", args.gate_scales is not None),
                                        ("--energy-scales", args.energy_scales is not None)) if given]
    if ignored:
        raise WavescoreError(f"{', '.join(ignored)} applies only to --family gaussian+gates and strongest: drop it")
    terms = None
    if args.terms is not None:
        try:
            terms = json.loads(args.terms)
        except json.JSONDecodeError as exc:
            raise WavescoreError(f"--terms must be a JSON list of terms ({exc}); see `wavescore fit --help`") from None
    if args.select and distributed:
        raise WavescoreError("--select runs in one process: drop --workers/--scheduler, or fit without --select")
    return ScoreMachine(family=args.family, degree=1 if args.degree is None else args.degree, radius=args.radius,
                        shared=args.shared, bands=args.bands, wavelet=args.wavelet, levels=args.levels,
                        ridge=args.ridge, terms=terms, select=args.select, holdout=args.holdout)


def _cmd_fit(args: argparse.Namespace) -> None:
    from . import datasets
    from ._io import sha256_file, write_json

    sources = args.data or ["mnist"]
    out = _output_file(args.output, _input_paths(sources), suffixes=(".wsm",),
                       also=[Path(str(args.output) + ".json")])
    if out.exists():
        from .gates import read_format

        if read_format(out) is None:
            raise WavescoreError(f"-o {out} exists and is not a wavescore machine: fitting would destroy it; "
                                 "choose another name")
    m = _build_fit_machine(args)
    if len(sources) > 1 and not (args.workers or args.scheduler):
        raise WavescoreError("several --data sources need --workers N or --scheduler ADDRESS")
    if args.workers or args.scheduler:
        from .distributed import fit_distributed, row_shards

        if args.family in ("gaussian+gates", "strongest"):
            print(f"{args.family} on a cluster: no held-out choice (the joined solution at every grid sigma)")
        shards = row_shards(sources[0], args.shards, split=args.split) if len(sources) == 1 else sources
        fit_distributed(m, shards, workers=args.workers, scheduler=args.scheduler, split=args.split)
    else:
        from .experiments import part_images

        own = part_images(m)  # a joined machine's parts fitted on their own images
        m.fit(datasets.load_dataset(sources[0], args.split, limit=args.limit), **({"images": own} if own else {}))
    # The old description goes before the new machine is written: a kill in between leaves no
    # JSON describing another machine (and the JSON names the sha256 of the machine it describes).
    meta_path = Path(str(out) + ".json")
    meta_path.unlink(missing_ok=True)
    m.save(out)
    meta = {"command": " ".join(sys.argv), "data": sources, "split": args.split, "n_images": m.n_samples_,
            "params": m.get_params(), "name": m.name, "fit_seconds": m.fit_time_, "machine_sha256": sha256_file(out)}
    write_json(meta_path, meta)
    print(f"fitted {m.name} on {m.n_samples_} images {m.shape_} in {m.fit_time_:.1f}s -> {out}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from . import datasets
    from ._io import write_json
    from .evaluation import evaluate_denoisers, format_table, parse_sigmas

    sigmas = parse_sigmas(args.sigmas)
    out = _output_file(args.output, _input_paths(args.model, args.data), suffixes=(".json",))
    models = _load_models(args.model, args.data)
    x = datasets.load_dataset(args.data, args.split, limit=args.limit)
    result = evaluate_denoisers(models, x, sigmas, seed=args.seed)
    result.update(data=str(args.data), split=args.split, command=" ".join(sys.argv))
    print(format_table(result))
    write_json(out, result)
    print(f"wrote {out}")


def _add_fit_evaluate(sub: argparse._SubParsersAction) -> None:
    from .evaluation import DEFAULT_SIGMAS

    p = sub.add_parser("fit", help="fit a score machine from data moments (one pass)")
    p.add_argument("--data", action="append", help="dataset name or path (default mnist); repeat for shards")
    p.add_argument("--workers", type=_whole(1), default=None, help="fit on a local Dask cluster of N workers")
    p.add_argument("--scheduler", default=None, help="fit on the Dask cluster at this address")
    p.add_argument("--shards", type=_whole(1), default=8, help="row shards of a single --data source (default 8)")
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.add_argument("--limit", type=_whole(1), default=None, help="use only the first N images")
    _add_machine_args(p)
    p.add_argument("-o", "--output", required=True, help="machine file to write (.wsm)")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("evaluate", help="denoising MSE/PSNR per sigma on fixed seeded noise")
    p.add_argument("--model", nargs="+", required=True, help=MODEL_HELP)
    p.add_argument("--data", default="mnist")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--limit", type=_whole(1), default=None)
    p.add_argument("--sigmas", default=",".join(f"{s:g}" for s in DEFAULT_SIGMAS))
    p.add_argument("--seed", type=_whole(0), default=0)
    p.add_argument("-o", "--output", default="evaluation.json", help="JSON results (default evaluation.json)")
    p.set_defaults(func=_cmd_evaluate)


# ----------------------------------------------------------------------------- sample
def _cmd_sample(args: argparse.Namespace) -> None:
    import numpy as np

    from . import plots
    from ._io import atomic_path, write_json
    from .samplers import sample

    inputs = _input_paths(args.model, args.data if args.quality else None)
    out = Path(args.output)
    beside = [out.with_suffix(".npz"), out.with_suffix(".json")] + (
        [out.with_name(out.stem + "_nearest.png")] if args.quality else [])
    out = _output_file(args.output, inputs, suffixes=IMAGE_SUFFIXES, also=beside)
    (name, model), = _load_models([args.model], args.data).items()
    t0 = time.perf_counter()
    sampler = args.sampler or ("cascade" if getattr(model, "coarse_to_fine", False) else "heun")
    x = sample(model, args.n, steps=args.steps, sampler=sampler, seed=args.seed)
    seconds = time.perf_counter() - t0
    out.with_suffix(".json").unlink(missing_ok=True)  # never a description of other samples
    plots.save_image_grid(x, out)
    npz = out.with_suffix(".npz")
    with atomic_path(npz) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, samples=x.float().numpy())
    meta = {"command": " ".join(sys.argv), "model": args.model, "name": name, "n": args.n, "steps": args.steps,
            "sampler": sampler, "seed": args.seed, "seconds": seconds}
    if args.quality:
        from .quality import sample_quality

        meta["quality"] = sample_quality(x, args.data, figure=out.with_name(out.stem + "_nearest.png"))
    write_json(out.with_suffix(".json"), meta)
    print(f"{args.n} samples from {name} in {seconds:.1f}s -> {out}, {npz}")
    if args.quality:
        print(_quality_summary(meta["quality"]))


def _read_samples(path: str):
    """Samples (N, C, H, W) from the .npz `wavescore sample` writes (key 'samples') or a .npy array."""
    import zipfile

    import numpy as np
    import torch

    p = Path(path)
    if not p.is_file():
        raise WavescoreError(f"--samples {path}: no such file; give the .npz written by `wavescore sample`")
    try:
        obj = np.load(p, allow_pickle=False)
        if isinstance(obj, np.ndarray):
            a = obj
        else:
            with obj as z:
                if "samples" not in z:
                    raise WavescoreError(f"--samples {path} has no 'samples' array (found {list(z.keys())}): "
                                         "give the .npz written by `wavescore sample`")
                a = z["samples"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise WavescoreError(f"cannot read samples from {path} ({type(exc).__name__}: {exc}): "
                             "give the .npz written by `wavescore sample`") from None
    if a.ndim != 4 or a.dtype.kind != "f" or a.shape[0] < 1:
        raise WavescoreError(f"--samples {path}: expected float images (N, C, H, W), got {a.dtype} {a.shape}")
    if not np.isfinite(a).all():
        raise WavescoreError(f"--samples {path} holds NaN or inf values (the sampler diverged?)")
    return torch.from_numpy(np.ascontiguousarray(a))


def _cmd_sample_quality(args: argparse.Namespace) -> None:
    from ._io import write_json
    from .quality import sample_quality

    out = _output_file(args.output, _input_paths(args.samples, args.data), suffixes=(".json",),
                       also=[Path(args.output).with_suffix(".png")])
    x = _read_samples(args.samples)
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
    p.add_argument("--model", required=True, help=MODEL_HELP.replace("models:", "a model:"))
    p.add_argument("-n", type=_whole(1), default=64, help="number of samples (default 64)")
    p.add_argument("--steps", type=_whole(1), default=18)
    p.add_argument("--sampler", default=None, choices=list(SAMPLERS) + ["cascade"],
                   help="default: cascade for a cascade machine (coarse to fine, --steps per scale), else heun")
    p.add_argument("--seed", type=_whole(0), default=0)
    p.add_argument("--data", default="mnist", help="training data (for --quality)")
    p.add_argument("--quality", action="store_true", help="also measure sample quality against --data")
    p.add_argument("-o", "--output", default="samples.png", help="PNG or JPEG grid; .npz and .json are written beside it")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("sample-quality", help="memorisation, classifier Frechet distance, wavelet-packet Frechet distance")
    p.add_argument("--samples", required=True, help=".npz written by `wavescore sample` (or a .npy (N, C, H, W))")
    p.add_argument("--data", default="mnist")
    p.add_argument("-o", "--output", default="quality.json", help="JSON (a .png of nearest neighbours beside it)")
    p.set_defaults(func=_cmd_sample_quality)


# ----------------------------------------------------------------------------- compare
def _cmd_compare(args: argparse.Namespace) -> None:
    import shutil

    from . import datasets
    from ._io import sha256_file
    from .compare import compare_models, matrix_markdown, write_outputs
    from .evaluation import parse_sigmas
    from .models import REFERENCE_KINDS

    sigmas = parse_sigmas(args.sigmas)
    out = _output_folder(args.output, _input_paths(args.models, args.data))
    models = _load_models(args.models, args.data, limit=args.train_limit)
    if args.reference is not None:
        unknown = [r for r in args.reference if r not in models]
        if unknown or not args.reference:
            raise WavescoreError(f"--reference {' '.join(unknown) or '(none)'}: name references among the models "
                                 f"({', '.join(models)})")
    refs = args.reference or [n for n, m in models.items() if getattr(m, "kind_", "") in REFERENCE_KINDS]
    if not refs:
        raise WavescoreError("no reference to compare against: add a network (.pt), 'empirical' or 'els', or --reference")
    train = datasets.load_dataset(args.data, "train", limit=args.n)
    test = datasets.load_dataset(args.data, args.split, limit=args.n)
    # a killed run resumes from out/.partial (compare.PartialStore): model files are known by their
    # hash, 'empirical' / 'els' by the data they read; a diffusers folder is always recomputed
    keys = {}
    for name, spec in zip(models, args.models):  # _load_models keeps the specs' order
        if Path(spec).is_file():
            keys[name] = sha256_file(spec)
        elif not Path(spec).exists() and ":" not in spec:
            keys[name] = f"{spec} data={args.data} limit={args.train_limit}"
    partial = out / ".partial"
    result = compare_models(models, refs, train, test, sigmas, seed=args.seed, n_samples=args.samples,
                            steps=args.steps, cache=partial, keys=keys)
    finals = result.pop("_finals", None)
    result.update(data=str(args.data), split=args.split, specs=list(args.models), command=" ".join(sys.argv))
    paths = write_outputs(result, finals, out)
    shutil.rmtree(partial, ignore_errors=True)
    print(matrix_markdown(result), end="")
    print(f"wrote {paths['json']}, {paths['matrix_md'].name} and the figures beside it")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="MSE on train/test and R² of each machine against networks / empirical / ELS")
    p.add_argument("--models", nargs="+", required=True, help=MODEL_HELP)
    p.add_argument("--reference", nargs="*", help="names of the references (default: every non-machine model)")
    p.add_argument("--data", default="mnist")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--sigmas", default="0.02,0.05,0.1,0.2,0.5,1,2,5")
    p.add_argument("-n", type=_whole(1), default=1000, help="images per split (default 1000)")
    p.add_argument("--train-limit", type=_whole(1), default=None, help="training images for empirical/els (default all)")
    p.add_argument("--samples", type=_whole(0), default=0,
                   help="also sample this many from shared initial noise and correlate the finals with each "
                        "reference's (the protocol: 200 or more, with --steps 18; default 0, none)")
    p.add_argument("--steps", type=_whole(1), default=18, help="Heun steps per sample (default 18)")
    p.add_argument("--seed", type=_whole(0), default=0)
    p.add_argument("-o", "--output", default="compare", help="output folder")
    p.set_defaults(func=_cmd_compare)


# ----------------------------------------------------------------------------- train
def _cmd_train(args: argparse.Namespace) -> None:
    from . import datasets
    from .networks import train

    out = _output_file(args.output, _input_paths(args.data), suffixes=(".pt",),
                       also=[Path(args.output).with_name(Path(args.output).stem + ".log.json")])
    # Which flag sets which constructor option of each architecture; a flag an architecture has
    # no use for is refused rather than silently ignored.
    table = {"cnn": {"width": "width", "depth": "depth", "padding": "padding"},
             "unet": {"width": "base"},  # the U-Net's depth is fixed by its mults
             "transformer": {"width": "dim", "depth": "depth", "patch": "patch", "heads": "heads"}}
    options = table[args.arch]
    for flag in ("width", "depth", "padding", "patch", "heads"):
        if getattr(args, flag) is not None and flag not in options:
            users = " or ".join(a for a, o in table.items() if flag in o)
            raise WavescoreError(f"--{flag} applies only to --arch {users}, not {args.arch}: drop it")
    # Only the flags given go into arch_kwargs (the constructor defaults fill the rest), so a
    # checkpoint trained without a flag resumes without it; but --padding zeros is the default
    # and stays out too, for the same reason. The CNN's width default is the CLI's own, 64.
    arch_kwargs = {options[f]: getattr(args, f) for f in options if getattr(args, f) is not None}
    if args.arch == "cnn":
        arch_kwargs.setdefault("width", 64)
        if arch_kwargs.get("padding") == "zeros":
            del arch_kwargs["padding"]
    x = datasets.load_dataset(args.data, "train", limit=args.limit)
    t0 = time.perf_counter()
    val = datasets.load_dataset(args.data, "test", limit=args.validate) if args.validate else None
    net = train(args.arch, x, epochs=args.epochs, out=out, batch_size=args.batch_size, lr=args.lr,
                seed=args.seed, max_minutes=args.max_minutes, arch_kwargs=arch_kwargs, validation=val,
                plateau=args.plateau)
    last = net.history_[-1] if net.history_ else {}
    val = f", validation loss {last['val_loss']:.4f}" if "val_loss" in last else ""
    print(f"trained {args.arch} to epoch {net.epoch_} in {time.perf_counter() - t0:.0f}s "
          f"(last epoch loss {last.get('loss', float('nan')):.4f}{val}) -> {out}")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a small CNN, U-Net or transformer denoiser (EDM preconditioning and loss)")
    p.add_argument("--arch", choices=["unet", "cnn", "transformer"], required=True)
    p.add_argument("--data", default="mnist")
    p.add_argument("--limit", type=_whole(1), default=None)
    p.add_argument("--epochs", type=_whole(1), default=5)
    p.add_argument("--batch-size", type=_whole(1), default=128)
    p.add_argument("--lr", type=_real(above=0), default=2e-4)
    p.add_argument("--width", type=_whole(1), default=None,
                   help="CNN width (default 64) / U-Net base channels (default 32) / transformer dim (default 128)")
    p.add_argument("--depth", type=_whole(1), default=None,
                   help="CNN depth (default 8; receptive field 1 + 2 depth) / transformer blocks (default 4)")
    p.add_argument("--padding", choices=["zeros", "circular"], default=None,
                   help="CNN border padding (default zeros); circular makes it exactly translation-equivariant "
                        "on the torus")
    p.add_argument("--patch", type=_whole(1), default=None,
                   help="transformer patch size (default 4: 64 tokens for 32x32); must divide H and W")
    p.add_argument("--heads", type=_whole(1), default=None, help="transformer attention heads (default 4)")
    p.add_argument("--seed", type=_whole(0), default=0)
    p.add_argument("--max-minutes", type=_real(above=0), default=None,
                   help="stop after the epoch that passes this budget")
    p.add_argument("--validate", type=_whole(0), default=0,
                   help="test-split images whose EDM loss (fixed draws) is logged after every epoch as val_loss "
                        "(default 0: none)")
    p.add_argument("--plateau", type=_real(above=0), default=None,
                   help="with --validate: stop once an epoch lowers val_loss by less than this fraction (e.g. 0.01); "
                        "--epochs stays the most")
    p.add_argument("-o", "--output", required=True, help="checkpoint (.pt); resumed if it exists")
    p.set_defaults(func=_cmd_train)


def _cmd_export(args: argparse.Namespace) -> None:
    from .networks import save_safetensors

    src = Path(args.model)
    if not src.is_file():
        raise WavescoreError(f"--model {args.model}: no such network checkpoint (.pt)")
    out = _output_file(args.output, [src], suffixes=(".safetensors",), also=[Path(args.output).with_suffix(".json")])
    save_safetensors(src, out)
    print(f"exported {src} -> {out} (weights) and {out.with_suffix('.json')} (configuration)")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a network checkpoint as weights-only .safetensors plus its JSON")
    p.add_argument("--model", required=True, help="a checkpoint written by `wavescore train` (.pt)")
    p.add_argument("-o", "--output", required=True, help=".safetensors file; the .json is written beside it")
    p.set_defaults(func=_cmd_export)


# ----------------------------------------------------------------------------- report / run
def _cmd_report(args: argparse.Namespace) -> None:
    from .report import run_report

    out = _output_folder(args.output, _input_paths(args.data, args.network))
    network = None
    if args.network is not None:  # read before the fits, so a bad file fails in a second, not minutes later
        from .models import load_model

        _, network = load_model(args.network, data=args.data)
        if getattr(network, "kind_", "") != "network":
            raise WavescoreError(f"--network {args.network}: give a trained network (.pt, .safetensors or diffusers:DIR)")
    t0 = time.perf_counter()
    run_report(args.data, out, n_test=args.n_test, n_train=args.n_train, network=network)
    print(f"report written to {out / 'index.html'} in {time.perf_counter() - t0:.0f}s")


def _add_report(sub: argparse._SubParsersAction) -> None:
    for name, help_ in (("report", "run the standard analysis and write a self-contained HTML report"),
                        ("run", "the main job: fit the standard machines, evaluate, sample, analyse, report")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--data", default="mnist")
        p.add_argument("--n-test", type=_whole(1), default=2000, help="held-out images to evaluate on")
        p.add_argument("--n-train", type=_whole(1), default=None, help="training images (default all)")
        p.add_argument("--network", default=None,
                       help="a trained network (.pt) to also schedule locality against and to measure each "
                            "machine's mimicry of (wavescore compare's matrix and samples grid)")
        p.add_argument("-o", "--output", default="report")
        p.set_defaults(func=_cmd_report)


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="wavescore",
        description="Wavelet score machines: fit the optimal score from data moments, denoise, sample, analyse.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    _add_data(sub)
    for add in _EXTRA_COMMANDS:
        add(sub)
    for p in _all_subparsers(parser):  # --debug also after the subcommand; only the top level sets the default
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _all_subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for p in dict.fromkeys(action.choices.values()):
                yield p
                yield from _all_subparsers(p)


# Later modules (fit, evaluate, ...) register their subcommand adders here.
_EXTRA_COMMANDS: list = [_add_fit_evaluate, _add_sample, _add_compare, _add_train, _add_export, _add_report]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 2 bad input (one line on stderr), 1 an unexpected failure (one line;
    ``--debug`` shows the traceback), 130 interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except WavescoreError as exc:
        if args.debug:
            raise
        print(f"wavescore: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wavescore: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug or an environment failure: one line, the trace on request
        if args.debug:
            raise
        print(f"wavescore: unexpected error: {type(exc).__name__}: {_one_line(exc)} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
