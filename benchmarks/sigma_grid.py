"""Per-step closed-form solve vs a dense sigma grid fitted once and interpolated.

    python benchmarks/sigma_grid.py

For each machine: median time of one fresh solve theta*(sigma) (what a sampler pays per new
sigma), the time to precompute a 256-point log grid, and the relative error of the denoiser
when theta is linearly interpolated in log sigma from that grid, at the 18-step EDM sigmas.
"""
from __future__ import annotations

import json
import platform
import statistics
import time

import torch

from wavescore import ScoreMachine, load_dataset
from wavescore._io import write_json
from wavescore.samplers import edm_sigmas


def main() -> None:
    train = load_dataset("mnist", limit=20000)
    x = load_dataset("mnist", "test", limit=200).double()
    sig = [float(s) for s in edm_sigmas(18)[:-1]]
    out = {}
    for cfg in (dict(family="local", degree=2), dict(family="parent", degree=2), dict(family="independent", degree=3)):
        m = ScoreMachine(**cfg).fit(train, progress=False)
        times = []
        for s in sig:
            m.clear_cache()
            t0 = time.perf_counter()
            m.parameters(s)
            times.append(time.perf_counter() - t0)
        grid = torch.logspace(torch.log10(torch.tensor(0.002)), torch.log10(torch.tensor(80.0)), 256).tolist()
        t0 = time.perf_counter()
        thetas = [m.parameters(s) for s in grid]
        grid_s = time.perf_counter() - t0
        errs = []
        lg = torch.log(torch.tensor(grid))
        for s in sig[1:-1]:
            j = int(torch.searchsorted(lg, torch.log(torch.tensor(s)))) - 1
            w = float((torch.log(torch.tensor(s)) - lg[j]) / (lg[j + 1] - lg[j]))
            interp = [(1 - w) * a + w * b for a, b in zip(thetas[j], thetas[j + 1])]
            z = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
            w = m.transform_.forward(x + s * z)
            exact = w + s * s * m.score_with(w, m.parameters(s))
            approx = w + s * s * m.score_with(w, interp)  # the sampler would use the interpolated parameters
            errs.append(float((approx - exact).norm() / exact.norm()))  # orthonormal: the pixel-domain ratio
        out[m.name] = {"solve_median_s": statistics.median(times), "grid256_s": grid_s,
                       "interp_max_rel_error": max(errs)}
        print(m.name, out[m.name], flush=True)
    out["machine"] = f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    write_json("benchmarks/results/sigma_grid.json", out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
