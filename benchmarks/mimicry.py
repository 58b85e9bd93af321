"""The machine x network matrix (issue 16): which machine reproduces which network.

    python benchmarks/mimicry.py --nets benchmarks/checkpoints/cnn-circular.pt benchmarks/checkpoints/unet.pt benchmarks/checkpoints/transformer.pt

Every machine below (fitted on the 60k training digits), ELS (``--els-train``
training digits, its MNIST patch schedule, optionally ``--els-max-shift``/``--els-nearest``
approximations, plus one row per ``--els-calibrate NET`` with the patch schedule calibrated to that
network) and the networks (the references) through
compare.compare_models: denoiser R^2 against each network per sigma on 500 test digits, and the
per-sample correlation r of final samples from the same initial noise (``--samples``, EDM's
Heun sampler, 18 steps); each network's best-matching machine. Writes compare.json,
matrix.md/png and the labelled samples grid into benchmarks/results/mimicry[-DATA].
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from wavescore.experiments import config_name, run_mimicry
from wavescore.joined import DEFAULT_PARTS
from wavescore.networks import load_network

# the joined machine's parts plus smoother global mixtures (K = 10, 30): an undertrained network's
# denoiser at high sigma may sit between the Gaussian score and the K = 100 posterior mean
WIDE_PARTS = [DEFAULT_PARTS[0], dict(family="mixture", components=10), dict(family="mixture", components=30),
              *DEFAULT_PARTS[1:]]
# ... plus the K = 100 mixture hedging between digits (tempered responsibilities, T = 2 and 4;
# method.md §11): a network that is less decisive than the posterior at high sigma
TEMPERED_PARTS = [*WIDE_PARTS, dict(family="mixture", components=100, temperature=2.0),
                  dict(family="mixture", components=100, temperature=4.0)]
# ... plus parts that see one 4x4 block: the Haar coefficients of levels 1-2 at one position are
# exactly one transformer token's pixels. The orientation family (H, V, D at one position, degree 3)
# and the parent family with no window (the position's three orientations and their parents),
# both per position (a transformer has position embeddings); the per-band weights let the fine
# bands take them and the coarse bands the global parts (docs/results.md, "A block-local part")
BLOCK_PARTS = [*TEMPERED_PARTS, dict(family="orientation", degree=3),
               dict(family="parent", degree=1, radius=0, bands="all")]

MACHINES = [
    dict(family="gaussian"),
    dict(family="mixture", components=10),
    dict(family="mixture", components=30),
    dict(family="mixture", components=100),
    # the CNN's class: shared local mixtures over circular pixel patches, 3x3 and 5x5, and the
    # patch growing with sigma (radius 1..3 chosen per sigma on held-out digits, method.md §13)
    dict(family="local-mixture", basis="pixel", components=64, radius=1),
    dict(family="local-mixture", basis="pixel", components=16, radius=2),
    # ... and border-aware (81 border classes, each on at most 20k patches; method.md §12)
    dict(family="local-mixture", basis="pixel", components=16, radius=2, border=4, max_samples=20_000),
    dict(family="scheduled-local-mixture", radii=(1, 2, 3), components=32),
    dict(family="mixture+local-mixture"),
    dict(family="cascade", components=16, radius=1),
    # the transformer's class: each Haar position alone (one 4x4 block at levels 1-2)
    dict(family="orientation", degree=3),
]

# the same machines with their per-sigma weights chosen against a network's denoiser instead of the
# clean digits, one set per architecture (the checkpoint's): the CNNs' scheduled local mixture, the
# U-Net's and the transformer's joined machine with and without tempered and block-local parts
CALIBRATED = {
    "cnn-circular": {"scheduled": dict(family="scheduled-local-mixture", radii=(1, 2, 3), components=32)},
    # the zero-padded CNN also gets the border-aware version (border classes, method.md §12)
    "cnn": {"scheduled": dict(family="scheduled-local-mixture", radii=(1, 2, 3), components=32),
            "scheduled-border": dict(family="scheduled-local-mixture", radii=(1, 2, 3), components=32, border=4,
                                     max_samples=20_000)},
    "unet": {"wide": dict(family="mixture+local-mixture", parts=WIDE_PARTS),
             "tempered": dict(family="mixture+local-mixture", parts=TEMPERED_PARTS),
             "block": dict(family="mixture+local-mixture", parts=BLOCK_PARTS)},
}
CALIBRATED["transformer"] = CALIBRATED["unet"]


OWN_PARTS = ("mixtures", "densities", "more", "all", "patches")


def own_sample_parts(path: str, arch: str = "unet", which: str = "mixtures") -> list[dict]:
    """The parts of the architecture's best-matching machine (the tempered one for the U-Net, the
    block one for the transformer) plus parts fitted on a network's own samples (``path``, the .npz
    of `wavescore sample`): the network's learned distribution as parts (method.md §13, "A part
    fitted on other images"). ``which``:

    - "mixtures": global mixtures (K = 30, 100);
    - "densities": also the tempered K = 100 mixture (T = 2) and the 3x3 local mixture, so that the
      network's own textures compete at low and middle sigma too;
    - "more": "densities" plus a K = 300 mixture and the 5x5 local mixture (K = 16);
    - "all": "densities" plus, for the transformer, the block-local cubic parts;
    - "patches": "densities" plus 5x5 and 7x7 local mixtures (K = 64) of the data and the 5x5 one
      of the samples: handing the sampling path over (analysis.handover) puts what the machine
      loses at sigma 0.1-2, where only 3x3 patches served.

    Every "densities" part is a Gaussian mixture, whose denoiser stays bounded; the cubic parts
    fitted on a transformer's samples sent 86 of 200 final samples beyond ±10 (docs/results.md,
    "More of each network's samples, and its own textures as parts"). Distillation, not a prior:
    rows with these parts are named ``...@<stem>`` and are calibrated to the network whose samples
    they hold."""
    if which not in OWN_PARTS:
        raise ValueError(f"which must be one of {', '.join(OWN_PARTS)}, got {which!r}")
    base = BLOCK_PARTS if arch == "transformer" else TEMPERED_PARTS
    own = [dict(family="mixture", components=30), dict(family="mixture", components=100)]
    if which != "mixtures":
        own += [TEMPERED_PARTS[-2], DEFAULT_PARTS[2]]
    if which == "more":
        own += [dict(family="mixture", components=300), dict(family="local-mixture", basis="pixel", components=16,
                                                               radius=2)]
    if which == "all" and arch == "transformer":
        own += BLOCK_PARTS[-2:]
    wider = []
    if which == "patches":
        patch = dict(family="local-mixture", basis="pixel", components=64, shrinkage=1e-6)
        wider = [dict(patch, radius=2), dict(patch, radius=3)]
        own.append(dict(patch, radius=2))
    return [*base, *wider, *(dict(p, data=path) for p in own)]


def architecture(net) -> str:
    """The CALIBRATED key of a loaded network: its architecture, "-circular" for a circular CNN."""
    cfg = net.config_
    return cfg["arch"] + ("-circular" if cfg["arch_kwargs"].get("padding") == "circular" else "")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--nets", nargs="+", required=True, help="network checkpoints (.pt): the references")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--n-test", type=int, default=500, help="test (and training) digits for the denoiser R^2")
    ap.add_argument("--els-train", type=int, default=0, help="training digits for ELS (0: no ELS row)")
    ap.add_argument("--els-max-shift", type=int, default=None, help="ELSDenoiser max_shift (default: exact ELS)")
    ap.add_argument("--els-nearest", type=int, default=None, help="ELSDenoiser nearest_images (default: all)")
    ap.add_argument("--els-float32", action="store_true", help="ELS in float32 (a third faster; ~5e-5 from float64)")
    ap.add_argument("--els-calibrate", nargs="*", default=[],
                    help="networks (checkpoint stems) to calibrate an extra ELS row's patch schedule against")
    ap.add_argument("--no-els-plain", action="store_true",
                    help="with --els-calibrate: only the calibrated ELS rows, not the one with the MNIST schedule")
    ap.add_argument("--only", nargs="*", default=None, help="only the machines whose family is one of these")
    ap.add_argument("--rows", nargs="*", default=None,
                    help="only the machines with these row names (as in the matrix, e.g. local-mixture-pixel-K16-r2-border4)"
                         " or aliases: joined, scheduled@NET, scheduled-border@NET, wide@NET, tempered@NET, block@NET "
                         "(CALIBRATED), own-WHICH@NET (--own-samples, --own-parts)")
    ap.add_argument("--no-calibrated", action="store_true", help="drop the machines calibrated to a network")
    ap.add_argument("--calibrate", nargs="*", default=None,
                    help="the networks (checkpoint stems) to calibrate their architecture's machines (CALIBRATED) against "
                         "(default: every network)")
    ap.add_argument("--own-samples", nargs="*", default=[], metavar="NET=NPZ",
                    help="add a row calibrated to NET whose parts include mixtures fitted on NET's own samples "
                         "(NPZ from `wavescore sample --model NET.pt -n 4000 --seed 7`; not seed 0, the matrix's noise)")
    ap.add_argument("--own-parts", nargs="+", choices=OWN_PARTS, default=["mixtures"],
                    help="which parts --own-samples fits on the samples (own_sample_parts); one row per choice")
    ap.add_argument("--keep-partial", action="store_true",
                    help="keep OUT/.partial after the run, so that a rerun with one more row or network computes "
                         "only that one")
    ap.add_argument("--handover", type=int, default=0, metavar="N",
                    help="also hand each network's sampling path to its best machine and the other networks at "
                         "each sigma and back, on N samples (analysis.handover; handover.png)")
    ap.add_argument("--handover-nets", nargs="+", default=None, metavar="NET",
                    help="with --handover: only for these networks (checkpoint stems; default: every one)")
    ap.add_argument("-o", "--output", default=None)
    args = ap.parse_args()
    arch = {Path(p).stem: architecture(load_network(p)) for p in args.nets}
    unknown = set(args.calibrate or []) - set(arch)
    if unknown:
        ap.error(f"--calibrate names networks not among --nets: {', '.join(sorted(unknown))}")
    targets = [] if args.no_calibrated else [n for n in arch if args.calibrate is None or n in args.calibrate]
    # every row by its full name (the matrix's) and a short alias: the calibrated and own-sample rows'
    # full names list every part (hundreds of characters)
    configs = [*MACHINES]
    aliases = {"joined": next(c for c in MACHINES if c == dict(family="mixture+local-mixture"))}
    for n in targets:
        for short, c in CALIBRATED[arch[n]].items():
            configs.append(aliases.setdefault(f"{short}@{n}", dict(c, calibrate_to=n)))
    for spec in args.own_samples:
        net, _, path = spec.partition("=")
        if net not in arch or not Path(path).is_file():
            ap.error(f"--own-samples takes NET=NPZ with NET among --nets ({', '.join(arch)}) and an existing NPZ, "
                     f"got {spec!r}")
        for which in args.own_parts:
            configs.append(aliases.setdefault(f"own-{which}@{net}", dict(
                family="mixture+local-mixture", parts=own_sample_parts(path, arch[net], which), calibrate_to=net)))
    configs = [c for c in configs if args.only is None or c["family"] in args.only]
    if args.rows is not None:
        names = {config_name(c): c for c in configs}
        names.update({a: c for a, c in aliases.items() if any(c is k for k in configs)})
        unknown = sorted(set(args.rows) - set(names))
        if unknown:
            have = [n for n in names if len(n) <= 80]  # the long joined names have aliases
            ap.error(f"--rows names no configured machine: {', '.join(unknown)} (have: {', '.join(have)})")
        chosen = [names[r] for r in args.rows]
        configs = [c for c in configs if any(c is k for k in chosen)]
    els = []
    if args.els_train:
        base = {"train_subset": args.els_train, "max_shift": args.els_max_shift, "nearest_images": args.els_nearest}
        base = {k: v for k, v in base.items() if v is not None}
        if args.els_float32:
            base["dtype"] = torch.float32
        els = ([] if args.no_els_plain and args.els_calibrate else [base]) + \
            [dict(base, calibrate_to=n) for n in args.els_calibrate]
    out = args.output or "benchmarks/results/mimicry" + ("" if args.data == "mnist" else f"-{args.data}")
    run_mimicry(configs, args.data, out, nets=args.nets, n_samples=args.samples, n_test=args.n_test,
                els=els, keep_partial=args.keep_partial, handover=args.handover,
                handover_nets=args.handover_nets)
