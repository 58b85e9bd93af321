"""How decisively each network chooses a digit (issue 16): the global mixture's responsibilities
tempered (method.md §11) until its denoiser best matches the network's.

    python benchmarks/hedging.py --nets benchmarks/checkpoints/unet.pt benchmarks/checkpoints/unet-long.pt benchmarks/checkpoints/transformer.pt

One K = 100 mixture fitted on the training split; for every network, sigma and temperature T
the denoiser R^2 (compare.r2) on ``--n-test`` test digits with shared seeded noise
(analysis.hedging). T = 1 is the data's posterior under the mixture; the best T > 1 means the
network hedges between modes. Writes hedging.{json,md,png} into
benchmarks/results/hedging[-DATA], with the command and the machine.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from wavescore._io import write_bytes_atomic, write_json
from wavescore.analysis import hedging, plot_hedging
from wavescore.datasets import load_dataset
from wavescore.mixture import MixtureMachine
from wavescore.networks import load_network
from wavescore.profiling import machine_description

SIGMAS = (0.5, 1.0, 2.0, 5.0)
TEMPERATURES = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--nets", nargs="+", required=True, help="network checkpoints (.pt)")
    ap.add_argument("--components", type=int, default=100)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("-o", "--output", default=None)
    args = ap.parse_args()
    out = Path(args.output or "benchmarks/results/hedging" + ("" if args.data == "mnist" else f"-{args.data}"))
    nets = {Path(p).stem: load_network(p) for p in args.nets}
    t0 = time.perf_counter()
    mix = MixtureMachine(components=args.components).fit(load_dataset(args.data, "train"))
    fit_s = time.perf_counter() - t0
    res = hedging(mix, nets, load_dataset(args.data, "test", limit=args.n_test), SIGMAS, TEMPERATURES)
    res.update(data=args.data, mixture=mix.name, fit_seconds=fit_s, n_test=args.n_test,
               command=" ".join(["python"] + sys.argv), machine=machine_description())
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "hedging.json", res)
    head = "| network | " + " | ".join(f"σ={s:g}: best T (R² at T=1 → best)" for s in SIGMAS) + " |"
    lines = [f"Denoiser R² of the {mix.name} mixture with tempered responsibilities against each network "
             f"({args.n_test} test digits, {args.data}).", "", head, "|---|" + "---:|" * len(SIGMAS)]
    one = TEMPERATURES.index(1.0)
    for n, grid in res["r2"].items():
        cells = [f"{b:g} ({row[one]:.3f} → {max(row):.3f})" for b, row in zip(res["best"][n], grid)]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    write_bytes_atomic(out / "hedging.md", ("\n".join(lines) + "\n").encode())
    plot_hedging(res, out / "hedging.png", title=f"{args.data}: how decisively each network chooses (T = 1: posterior)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
