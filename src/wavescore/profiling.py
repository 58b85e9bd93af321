"""Measure what fitting costs: peak memory against the prediction, and moment accumulation
against the machine's matrix-multiply throughput.

- :func:`measure_fit_memory` fits one machine in a fresh Python process and reads the
  kernel's high-water mark of resident memory (``VmHWM``, reset through
  ``/proc/self/clear_refs`` once the data is loaded and the libraries are warm), so the
  number is the fit's own peak above what was resident before it, data excluded.
- :func:`gemm_rate` and :func:`accumulation_rate`: float64 GFLOP/s of one large ``A^T B`` and
  of :meth:`MomentAccumulator.update`, with the useful flops of the Gram products
  (:func:`wavescore._gram.gram_flops`).
- :func:`machine_description`: CPU model, cores, threads, memory, torch version.

``python -m wavescore.profiling fit-memory '{"params": {...}, "shape": [1, 64, 64], "n": 500}'``
prints the child's JSON result (what :func:`measure_fit_memory` runs).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from ._io import WavescoreError


# ----------------------------------------------------------------------------- the machine
def machine_description() -> dict:
    """CPU model, logical cores, torch threads, physical memory, torch and Python versions, GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover - not Linux
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        mem = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": None if mem is None else round(mem / 2**30, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "blas": "MKL" if torch.backends.mkl.is_available() else "other",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def interleaved(fns: dict, repeats: int) -> tuple[dict, dict, dict]:
    """Time each of ``fns`` (name -> callable of no arguments) ``repeats`` times, interleaved so
    that drift hits all alike: ({name: median seconds}, {name: all seconds}, {name: last result})."""
    times, out = {k: [] for k in fns}, {}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            out[k] = fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}, times, out


def write_timings(out, rows: list, title: str, columns: list, **meta) -> list[str]:
    """A speed benchmark's record, atomically: ``out``.json (the command, the machine, ``meta``,
    the rows) and ``out``.md, ``title`` over a table with one line per row and one column per
    ``(header, row -> text)`` in ``columns``. Returns the markdown lines."""
    from pathlib import Path

    from ._io import write_bytes_atomic, write_json

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), {"command": " ".join(["python"] + sys.argv), **meta,
                                          "machine": machine_description(), "threads": torch.get_num_threads(),
                                          "rows": rows})
    lines = [title, "", "| " + " | ".join(h for h, _ in columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    lines += ["| " + " | ".join(fmt(r) for _, fmt in columns) + " |" for r in rows]
    write_bytes_atomic(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    return lines


# ----------------------------------------------------------------------------- memory
def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise WavescoreError(f"/proc/self/status has no {key}: peak memory is measured on Linux only")


def reset_peak() -> int:
    """Reset this process's resident high-water mark to the current RSS; returns RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS") * 1024


def peak_bytes() -> int:
    """Resident high-water mark (VmHWM) of this process, in bytes."""
    return _status_kib("VmHWM") * 1024


def _fit_memory_child(spec: dict) -> dict:
    """Runs in a fresh process: load data, warm up, reset the peak, fit (+ one solve for a
    ScoreMachine), report. ``params`` with a ``family`` of another machine class (cascade,
    mixture, ...) fits that class (presets.make_machine)."""
    from .datasets import load_dataset, resize
    from .machine import ScoreMachine
    from .presets import PRESETS, make_machine

    if "data" in spec:
        x = load_dataset(spec["data"], spec.get("split", "train"), limit=spec.get("n"))
        if spec.get("size"):  # e.g. MNIST upsampled to 64x64
            x = resize(x, int(spec["size"]))
    else:
        g = torch.Generator().manual_seed(0)
        x = torch.rand((int(spec["n"]), *spec["shape"]), generator=g) * 2 - 1
    params = dict(spec["params"])
    params.setdefault("max_memory", float("inf"))
    # Warm-up on a few images of the same shape: loads the BLAS/LAPACK kernels and threads.
    warm = {"family": "independent", "degree": 1, "shared": True}
    if PRESETS[params.get("family", "local")].machine == "score":
        warm = {**params, **warm}
    ScoreMachine(**warm).fit(x[:8], progress=False)
    machine = make_machine(**params)
    predicted = machine.memory_estimate(tuple(x.shape[1:]), n_images=len(x))
    base = reset_peak()
    t0 = time.perf_counter()
    machine.fit(x, progress=False)
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    if hasattr(machine, "parameters"):
        machine.parameters(float(spec.get("sigma", 0.5)))
    solve_s = time.perf_counter() - t1
    return {"name": machine.name, "shape": list(x.shape[1:]), "n": int(x.shape[0]),
            "measured_bytes": peak_bytes() - base, "baseline_bytes": base,
            "predicted_bytes": int(predicted.get("peak_bytes", predicted.get("total", 0))),
            "moments_bytes": int(predicted.get("moments_bytes", 0)),
            "features": predicted.get("features"), "fit_seconds": fit_s, "solve_seconds": solve_s}


def measure_fit_memory(params: dict, *, shape=None, n: int = 1000, data: str | None = None,
                       sigma: float = 0.5, threads: int | None = None, timeout: float = 1800,
                       size: int | None = None) -> dict:
    """Fit ``make_machine(**params)`` in a fresh process and return its measured peak memory
    above the pre-fit baseline (``measured_bytes``) beside ``memory_estimate``'s
    ``predicted_bytes``, with the fit and solve times.

    Data: ``n`` uniform images of ``shape`` (C, H, W), or the first ``n`` of dataset ``data``
    (resized to ``size`` x ``size`` by bilinear interpolation when given).
    """
    if (shape is None) == (data is None):
        raise WavescoreError("give either shape=(C, H, W) for synthetic images or data=<dataset name>")
    spec = {"params": params, "n": int(n), "sigma": float(sigma)}
    if data is not None:
        spec["data"] = data
        if size is not None:
            spec["size"] = int(size)
    else:
        spec["shape"] = [int(s) for s in shape]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(int(threads))
    proc = subprocess.run([sys.executable, "-m", "wavescore.profiling", "fit-memory", json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise WavescoreError(f"the memory-measuring fit of {params} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- throughput
def _best_seconds(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def gemm_rate(n: int = 4096, repeats: int = 3, device="cpu") -> float:
    """Median float64 GFLOP/s of ``A^T @ B`` for two n x n matrices (2 n^3 flops)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g, dtype=torch.float64).to(device)
    b = torch.randn(n, n, generator=g, dtype=torch.float64).to(device)

    def run():
        a.T @ b
        if a.is_cuda:
            torch.cuda.synchronize()

    return 2.0 * n**3 / statistics.median(_best_seconds(run, repeats)) / 1e9


def accumulation_rate(machine, x: torch.Tensor, repeats: int = 3) -> dict:
    """Median GFLOP/s of ``MomentAccumulator.update`` on the coefficients of ``x`` for ``machine``'s
    configuration (the wavelet transform is done once beforehand and not timed)."""
    from ._gram import gram_flops

    acc = machine.new_accumulator(x[: min(len(x), 1000)])
    w = machine.transform_.forward(x.to(device=machine.device, dtype=torch.float64))

    def run():
        acc.update(w)
        if w.is_cuda:
            torch.cuda.synchronize()

    times = _best_seconds(run, repeats)
    flops = gram_flops(len(x), acc.groups, acc.features)
    return {"seconds": statistics.median(times), "gflop": flops / 1e9,
            "gflops_per_s": flops / statistics.median(times) / 1e9}


def _main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] != "fit-memory":
        raise SystemExit("usage: python -m wavescore.profiling fit-memory '<json spec>'")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    print(json.dumps(_fit_memory_child(json.loads(argv[1]))))


if __name__ == "__main__":
    _main(sys.argv[1:])
