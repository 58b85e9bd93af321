"""The strongest machine: mixed-degree families against the Gaussian score (issue 8's table).

    python benchmarks/mixed.py --data mnist --nets benchmarks/checkpoints/unet.pt benchmarks/checkpoints/cnn.pt
    python benchmarks/mixed.py --data fashion-mnist

Fits, on the whole training split, the Gaussian score, the best local families, the
mixed presets (global linear terms plus local terms of degree 2..P) and the strongest
machine (``STRONGEST``: global linear + parent 3x3 degree 2 + own cubic + squared
magnitudes over the 5x5 window and parent, with the per-sigma held-out choice of degree and
ridge); evaluates every model, and any trained networks given, on the test split at sigmas
0.01..10 with the same seeded noise. Writes mixed[-DATA].{json,md,png} (the JSON after
every model; a rerun skips models already done).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from wavescore import ScoreMachine, load_dataset
from wavescore.models import build_machine
from wavescore._io import write_bytes_atomic, write_json
from wavescore.evaluation import DEFAULT_SIGMAS, evaluate_denoisers

STRONGEST_TERMS = [
    {"family": "gaussian"},
    {"family": "parent", "radius": 1, "degree": 2},
    {"family": "independent", "degree": 3},
    {"family": "parent", "radius": 2, "kind": "squares"},
]
CONFIGS = [
    dict(family="gaussian"),
    dict(family="local", degree=2),
    dict(family="parent", degree=2),
    dict(family="gaussian+local", degree=2),
    dict(family="gaussian+parent", degree=2),
    dict(family="mixed", terms=STRONGEST_TERMS, select=True),
    dict(cls="gated"),  # GatedMachine defaults: own gates c = 1, 2, 4; energy gates c = 1, 2; select
    dict(cls="gated", energy_scales=()),  # ablations: the own point mass alone ...
    dict(cls="gated", scales=()),  # ... and the neighbourhood energy alone
]



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--limit-test", type=int, default=None)
    ap.add_argument("--nets", nargs="*", default=[], help="trained network checkpoints (.pt) to add as rows")
    ap.add_argument("-o", "--output", default="benchmarks/results")
    ap.add_argument("--save-machines", default=None, help="folder to keep the fitted machines (.wsm)")
    ap.add_argument("--only", nargs="*", default=None,
                    help="fit only the models whose names start with one of these (e.g. gaussian-P1 gaussian+gates)")
    args = ap.parse_args()
    out = Path(args.output)
    stem = "mixed" if args.data == "mnist" else f"mixed-{args.data}"
    path = out / f"{stem}.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result.setdefault("sigmas", list(DEFAULT_SIGMAS))
    result.setdefault("models", {})
    result.update(data=args.data, command=" ".join(["python"] + sys.argv),
                  machine=f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                          f"torch {torch.__version__}")
    train = load_dataset(args.data, "train")
    test = load_dataset(args.data, "test", limit=args.limit_test)
    result.update(n_train=int(train.shape[0]), n_test=int(test.shape[0]))
    for cfg in CONFIGS:
        m = build_machine(cfg)
        name = m.name + ("-select" if m.select else "")
        if name in result["models"] or (args.only is not None and not name.startswith(tuple(args.only))):
            continue
        t0 = time.perf_counter()
        m.fit(train)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if isinstance(m, ScoreMachine):
            m.parameters(0.1234)
        solve_s = time.perf_counter() - t0
        ev = evaluate_denoisers({name: m}, test, result["sigmas"], seed=0)["models"][name]
        ev.update(fit_seconds=fit_s, solve_seconds=solve_s, params=m.get_params(),
                  memory_estimate=m.memory_estimate(m.shape_))
        if m.choice_:
            ev["choice"] = m.choice_
        if args.save_machines:
            m.save(Path(args.save_machines) / f"{name}.wsm")
        result["models"][name] = ev
        print(f"{name:40s} fit {fit_s:6.1f}s  " + " ".join(f"{v:.2e}" for v in ev["mse"]), flush=True)
        write_json(path, result)
    for ckpt in args.nets:
        from wavescore.networks import load_network

        net = load_network(ckpt)
        name = Path(ckpt).stem
        if name in result["models"]:
            continue
        ev = evaluate_denoisers({name: net}, test, result["sigmas"], seed=0)["models"][name]
        ev.update(network=str(ckpt))
        result["models"][name] = ev
        write_json(path, result)
    write_bytes_atomic(out / f"{stem}.md", markdown_table(result).encode())
    from wavescore.plots import plot_mse_curves

    plot_mse_curves(result, out / f"{stem}.png", title=f"{args.data}: mixed-degree machines against the Gaussian score")


def markdown_table(result: dict) -> str:
    """One line per model; best machine per sigma in bold; the last line is the strongest
    machine's MSE relative to the Gaussian score's (negative: better)."""
    sig = result["sigmas"]
    models = result["models"]
    machines = {k: v for k, v in models.items() if "network" not in v}
    best = [min(v["mse"][k] for v in machines.values()) for k in range(len(sig))]
    lines = ["| model | fit (s) | " + " | ".join(f"σ={s:g}" for s in sig) + " |",
             "|---|---:|" + "---:|" * len(sig)]
    ordered = list(machines) + [k for k in models if k not in machines]  # machines first, then networks
    for name in ordered:
        v = models[name]
        cells = [(f"**{x:.3e}**" if name in machines and x == best[k] else f"{x:.3e}") for k, x in enumerate(v["mse"])]
        fit = f"{v['fit_seconds']:.0f}" if "fit_seconds" in v else "(network)"
        lines.append(f"| {name} | {fit} | " + " | ".join(cells) + " |")
    gauss = models.get("gaussian-P1")
    if gauss:
        for name, v in machines.items():
            if name.endswith("-select"):
                # within rounding of the Gaussian score (the same model above a gated machine's grid): 0.0%
                rel = [f"{100 * (a / g - 1):+.1f}%" if abs(a / g - 1) >= 5e-4 else "0.0%"
                       for a, g in zip(v["mse"], gauss["mse"])]
                lines.append(f"| {name} vs gaussian-P1 | | " + " | ".join(rel) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
