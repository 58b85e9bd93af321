"""Time and memory of mixed-degree machines (global linear + local terms) at 32x32 and 64x64.

    python benchmarks/mixed_scaling.py [--n 5000] [-o benchmarks/results]

Each configuration runs in its own process, which reports its peak resident memory (VmHWM)
above the baseline after imports and data loading, beside `memory_estimate`'s prediction.
Data: MNIST digits at 32x32, and upsampled (bilinear, 28 -> 56) and padded to 64x64.
Writes mixed_scaling.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

CONFIGS = [
    dict(family="gaussian"),
    dict(family="gaussian+local", degree=2),
    dict(family="gaussian+parent", degree=2),
]

CHILD = r"""
import json, sys, time, torch
import torch.nn.functional as F
from wavescore import ScoreMachine, load_dataset

def vm(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
res, n, cfg = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
x = load_dataset("mnist", "train", limit=n, pad_to=False)
if res == 64:
    x = F.pad(F.interpolate(x, size=(56, 56), mode="bilinear", align_corners=False), (4, 4, 4, 4), value=-1.0)
else:
    x = F.pad(x, (2, 2, 2, 2), value=-1.0)
x = x.contiguous()
m = ScoreMachine(**cfg)
est = m.memory_estimate(tuple(x.shape[1:]))
base = vm("VmRSS")
t0 = time.perf_counter(); m.fit(x, progress=False); fit = time.perf_counter() - t0
t0 = time.perf_counter(); m.parameters(0.2); solve = time.perf_counter() - t0
t0 = time.perf_counter(); m.denoise(x[:100] + 0.2 * torch.randn_like(x[:100]), 0.2); den = time.perf_counter() - t0
print(json.dumps({"name": m.name, "resolution": res, "n_images": n, "fit_seconds": fit, "solve_seconds": solve,
                  "denoise_100_seconds": den, "peak_bytes_measured": vm("VmHWM") - base,
                  "peak_bytes_predicted": est["peak_bytes"], "distinct_monomials": est.get("distinct_monomials", 0),
                  "features": est["features"]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("-o", "--output", default="benchmarks/results")
    args = ap.parse_args()
    rows = []
    for res in (32, 64):
        for cfg in CONFIGS:
            out = subprocess.run([sys.executable, "-c", CHILD, str(res), str(args.n), json.dumps(cfg)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    from wavescore._io import write_json

    result = {"command": " ".join(["python"] + sys.argv), "machine": platform.processor() or platform.machine(),
              "rows": rows}
    write_json(Path(args.output) / "mixed_scaling.json", result)
    print("| machine | pixels | distinct monomials Q | fit (s) | solve per sigma (s) | peak GiB measured | predicted |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['resolution']}x{r['resolution']} | {r['distinct_monomials']} | {r['fit_seconds']:.0f} | "
              f"{r['solve_seconds']:.1f} | {r['peak_bytes_measured'] / 2**30:.2f} | {r['peak_bytes_predicted'] / 2**30:.2f} |")


if __name__ == "__main__":
    main()
