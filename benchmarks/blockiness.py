"""How blocky each network's denoiser is on its transformer's 4x4 patch grid (issue 16):
analysis.block_edges, the mean |jump| between neighbouring output pixels across the grid's edges
over the mean elsewhere (1: no grid; inf: constant blocks), beside the Gaussian score's.

    python benchmarks/blockiness.py --nets benchmarks/checkpoints/transformer.pt benchmarks/checkpoints/transformer-long.pt benchmarks/checkpoints/unet.pt

Writes blockiness.{json,md} into benchmarks/results/blockiness[-DATA], with the command and machine.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wavescore._io import write_bytes_atomic, write_json
from wavescore.analysis import block_edges
from wavescore.datasets import load_dataset
from wavescore.networks import load_network
from wavescore.presets import make_machine
from wavescore.profiling import machine_description

SIGMAS = (0.5, 1.0, 2.0, 5.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--nets", nargs="+", required=True, help="network checkpoints (.pt)")
    ap.add_argument("--block", type=int, default=4)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("-o", "--output", default=None)
    args = ap.parse_args()
    out = Path(args.output or "benchmarks/results/blockiness" + ("" if args.data == "mnist" else f"-{args.data}"))
    models = {"gaussian-P1": make_machine("gaussian").fit(load_dataset(args.data, "train"), progress=False)}
    models.update({Path(p).stem: load_network(p) for p in args.nets})
    x = load_dataset(args.data, "test", limit=args.n_test)
    res = {n: block_edges(m, x, SIGMAS, block=args.block) for n, m in models.items()}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "blockiness.json", {"results": res, "data": args.data, "n_test": args.n_test, "block": args.block,
                                         "command": " ".join(["python"] + sys.argv), "machine": machine_description()})
    lines = [f"Mean |jump| across the {args.block}x{args.block} grid's edges over the mean elsewhere, denoiser "
             f"outputs on {args.n_test} noisy test digits ({args.data}; 1: no grid).", "",
             "| model | " + " | ".join(f"σ={s:g}" for s in SIGMAS) + " |", "|---|" + "---:|" * len(SIGMAS)]
    lines += [f"| {n} | " + " | ".join(f"{r:.2f}" for r in v["ratio"]) + " |" for n, v in res.items()]
    write_bytes_atomic(out / "blockiness.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
