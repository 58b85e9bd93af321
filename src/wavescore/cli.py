"""The ``wavescore`` command line: one command, one subcommand per job.

Every subcommand has ``--help``; failures exit non-zero with a one-line reason.
"""
from __future__ import annotations

import argparse
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
_EXTRA_COMMANDS: list = []


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
