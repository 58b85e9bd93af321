"""The cascade's fit time and measured peak memory against image size (issue 15).

    python benchmarks/cascade_scale.py [-n 500] [-o benchmarks/results/cascade_scale]

Each fit runs in a fresh process (profiling.measure_fit_memory: the kernel's high-water mark of
resident memory above the pre-fit baseline, data excluded) on ``n`` greyscale photo tiles of
side 32, 64 and 128 (the photo-tiles datasets) and 256 (the 128 tiles upsampled, a size point
only), and on MNIST upsampled to 64x64. CascadeMachine(components=16, radius=1), its default
levels (coarse image 8x8) and coarse model (global mixture, K = 100). Writes cascade_scale.json
and cascade_scale.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wavescore._io import write_bytes_atomic, write_json
from wavescore.profiling import machine_description, measure_fit_memory

CASCADE = dict(family="cascade", components=16, radius=1)
RUNS = [dict(data="photo-tiles-32"), dict(data="photo-tiles-64"), dict(data="photo-tiles-128"),
        dict(data="photo-tiles-128", size=256), dict(data="mnist", size=64)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=500, help="images per fit")
    ap.add_argument("-o", "--output", default="benchmarks/results/cascade_scale")
    args = ap.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    result = {"command": " ".join(["python"] + sys.argv), "machine": machine_description(), "params": CASCADE,
              "runs": []}
    for run in RUNS:
        r = measure_fit_memory(CASCADE, n=args.n, **run)
        r.update(run)
        result["runs"].append(r)
        print(run, r["shape"], f"{r['fit_seconds']:.1f}s", f"{r['measured_bytes'] / 2**20:.0f} MiB", flush=True)
        write_json(out / "cascade_scale.json", result)
    lines = ["| data | image | pixels | images | fit (s) | peak (MiB) | peak per pixel (KiB) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in result["runs"]:
        px = r["shape"][1] * r["shape"][2]
        name = r["data"] + (f" upsampled to {r['size']}" if r.get("size") else "")
        lines.append(f"| {name} | {r['shape'][1]}x{r['shape'][2]} | {px} | {r['n']} | {r['fit_seconds']:.1f} | "
                     f"{r['measured_bytes'] / 2**20:.0f} | {r['measured_bytes'] / px / 1024:.1f} |")
    write_bytes_atomic(out / "cascade_scale.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
