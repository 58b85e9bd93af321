"""Scale and speed of the score machine, each figure a ratio measured in one run (issue 7).

    python benchmarks/scale.py [--quick] [-o benchmarks/results/scale] [--only a,b,c,d,e]

(a) closed form vs Adam: the same model (local-r1-P2-shared: same features, same
    parameters) trained by Adam on the denoising-score-matching loss at one sigma; both are
    scored on the exact expected loss (from the clean moments: no sampling error); time for
    Adam to come within 1% of the closed-form loss (or the loss reached in its budget).
(b) closed form + evaluation vs the baselines' U-Net: the logged training of
    benchmarks/checkpoints/unet.pt and its test MSE, and a fresh U-Net trained here with
    periodic evaluation until it reaches the best machine's test MSE at one sigma.
(c) denoising throughput (images/s) of each machine, the U-Net and the empirical denoiser
    at 2-3 training-set sizes.
(d) fit time and measured peak memory (fresh process per fit) against dataset size (MNIST)
    and against resolution (photo tiles 32/64/128), beside memory_estimate's prediction.
(e) moment accumulation GFLOP/s against one large float64 GEMM on this machine.
(f) shared P=2 machines fitted on 64x64 and 128x128 photo tiles: fit time and test MSE.

Every timing is the median of ``--repeats``; ratios are taken inside one run. Writes
scale.json, scale.md and PNG plots into the output folder; the machine is described in
scale.json (CPU model, cores, threads, torch).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from wavescore import ScoreMachine, load_dataset
from wavescore._io import write_bytes_atomic, write_json
from wavescore.evaluation import evaluate_denoisers, noise_for
from wavescore.plots import pyplot, save_figure
from wavescore.profiling import accumulation_rate, gemm_rate, machine_description, measure_fit_memory

UNET = Path(__file__).parent / "checkpoints" / "unet.pt"


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ----------------------------------------------------------------------------- (e)
def bench_accumulation(x, cfgs, repeats: int) -> dict:
    """GEMM and accumulation measured back to back, repeats times; medians and the ratio."""
    out = {}
    for cfg in cfgs:
        m = ScoreMachine(**cfg)
        gemm, acc, ratio = [], [], []
        for _ in range(repeats):
            g = gemm_rate(2048, repeats=3)
            a = accumulation_rate(m, x, repeats=1)["gflops_per_s"]
            gemm.append(g), acc.append(a), ratio.append(a / g)
        out[m.name] = {"gemm_gflops": statistics.median(gemm), "accumulation_gflops": statistics.median(acc),
                       "ratio": statistics.median(ratio), "n_images": len(x), "shape": list(x.shape[1:])}
        print(f"(e) {m.name:22s} accumulation {out[m.name]['accumulation_gflops']:5.1f} GFLOP/s, "
              f"GEMM {out[m.name]['gemm_gflops']:5.1f}: ratio {out[m.name]['ratio']:.2f}", flush=True)
    return out


# ----------------------------------------------------------------------------- (a)
def exact_loss(m: ScoreMachine, thetas, sigma: float) -> float:
    """Expected DSM loss per coefficient, E|c(w_s) + z/s|^2 = 1/s^2 + theta^T G theta + 2 theta^T b
    (Stein), averaged over coefficients, from the clean moments (no sampling)."""
    acc = m.moments_
    total, count = 0.0, 0
    for g, (G, b), theta in zip(acc.groups, m.noisy_system(sigma), thetas):
        th = theta.to(torch.float64)
        j = (torch.einsum("rf,rfg,rg->r", th, G, th) + 2 * (th * b).sum(-1)).mean()
        total += float(j) * g.n + g.n / sigma**2
        count += g.n
    return total / count


def bench_gradient_descent(train, sigma: float, budget_s: float, lr: float = 0.01, batch: int = 128) -> dict:
    """Closed form vs Adam on the same shared local P=2 model and the same DSM loss."""
    cfg = dict(family="local", degree=2, radius=1, shared=True)
    t0 = time.perf_counter()
    m = ScoreMachine(**cfg).fit(train, progress=False)
    theta_star = m.parameters(sigma)
    closed_s = time.perf_counter() - t0
    target = exact_loss(m, theta_star, sigma)
    acc = m.moments_
    params = [torch.zeros(1, f.F, dtype=torch.float32, requires_grad=True) for f in acc.features]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(0)
    w0 = m.transform_.forward(train.to(torch.float64))
    nbrs = [torch.as_tensor(g.nbr) for g in acc.groups]
    outs = [torch.as_tensor(g.out) for g in acc.groups]
    curve, reached, step, train_s = [], None, 0, 0.0
    next_eval = 0.0
    while train_s < budget_s:
        t1 = time.perf_counter()
        idx = torch.randint(len(w0), (batch,), generator=gen)
        z = torch.randn(batch, w0.shape[1], generator=gen, dtype=torch.float64)
        u = acc.standardise(w0[idx] + sigma * z).float()
        loss = 0.0
        for f, nbr, out, th in zip(acc.features, nbrs, outs, params):
            pred = f(u[:, nbr]) @ th[0]  # (batch, rows)
            loss = loss + ((pred + z[:, out].float() / sigma) ** 2).sum()
        loss = loss / (batch * w0.shape[1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        train_s += time.perf_counter() - t1
        if train_s >= next_eval:  # exact loss of the current parameters (not timed)
            with torch.no_grad():
                value = exact_loss(m, [p.detach().double() for p in params], sigma)
            curve.append((train_s, step, value))
            if reached is None and value <= target + 0.01 * abs(target):
                reached = train_s
                break
            next_eval = train_s + max(0.5, 0.05 * train_s)
    final = curve[-1][2]
    res = {"sigma": sigma, "model": m.name, "closed_form_seconds": closed_s, "closed_form_loss": target,
           "adam_lr": lr, "adam_batch": batch, "adam_steps": step, "adam_seconds": train_s,
           "adam_final_loss": final, "adam_reached_1pct_seconds": reached,
           "excess_loss_ratio": (final - target) / abs(target),
           "speedup": (reached if reached is not None else train_s) / closed_s,
           "speedup_is_lower_bound": reached is None, "curve": curve}
    print(f"(a) sigma {sigma}: closed form {closed_s:.1f} s (loss {target:.4f}); Adam {step} steps, {train_s:.0f} s, "
          f"loss {final:.4f}{'' if reached is None else f', within 1% after {reached:.1f} s'}: "
          f"ratio {'>=' if reached is None else ''}{res['speedup']:.1f}", flush=True)
    return res


# ----------------------------------------------------------------------------- (b)
def bench_unet(train, test, sigma: float, budget_s: float, eval_every_s: float, best_machine) -> dict:
    """The logged U-Net against the best machine, and a fresh U-Net trained until it matches."""
    import json

    from wavescore.networks import EDMDenoiser, SmallUNet, load_network

    name, machine, fit_s = best_machine
    t0 = time.perf_counter()
    machine_mse = evaluate_denoisers({name: machine}, test, [sigma], progress=False)["models"][name]["mse"][0]
    eval_s = time.perf_counter() - t0
    res = {"sigma": sigma, "machine": name, "machine_fit_seconds": fit_s, "machine_eval_seconds": eval_s,
           "machine_mse": machine_mse, "n_test": len(test)}
    if UNET.exists():
        net = load_network(UNET)
        log = json.loads(UNET.with_name("unet.log.json").read_text())
        res["logged_unet"] = {"epochs": len(log["epochs"]),
                              "train_seconds": sum(e["seconds"] for e in log["epochs"]),
                              "mse": evaluate_denoisers({"unet": net}, test, [sigma], progress=False)["models"]["unet"]["mse"][0]}
    # A fresh U-Net, the baselines' architecture and EDM loss (networks.train's loop), evaluated
    # on the same noisy test images every eval_every_s seconds of training.
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = EDMDenoiser(SmallUNet(channels=1), sigma_data=0.5, shape=tuple(train.shape[1:]))
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    curve, reached, train_s, next_eval, steps = [], None, 0.0, eval_every_s, 0
    data = train.float()
    while train_s < budget_s:
        t1 = time.perf_counter()
        model.train()
        x0 = data[torch.randint(len(data), (128,), generator=gen)]
        s = torch.exp(-1.2 + 1.2 * torch.randn(128, generator=gen))
        noise = torch.randn(x0.shape, generator=gen)
        weight = (s**2 + 0.25) / (s * 0.5) ** 2
        loss = (weight.reshape(-1, 1, 1, 1) * (model(x0 + s.reshape(-1, 1, 1, 1) * noise, s) - x0) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        train_s += time.perf_counter() - t1
        if train_s >= next_eval:
            mse = evaluate_denoisers({"u": model}, test, [sigma], progress=False)["models"]["u"]["mse"][0]
            curve.append((train_s, steps, mse))
            print(f"    U-Net {train_s:6.0f} s, {steps} steps: MSE {mse:.3e} (machine {machine_mse:.3e})", flush=True)
            if mse <= machine_mse:
                reached = train_s
                break
            next_eval = train_s + eval_every_s
    res.update(unet_curve=curve, unet_reached_seconds=reached, unet_trained_seconds=train_s,
               ratio=(reached if reached is not None else train_s) / (fit_s + eval_s),
               ratio_is_lower_bound=reached is None)
    print(f"(b) sigma {sigma}: {name} fit {fit_s:.1f} s + eval {eval_s:.1f} s, MSE {machine_mse:.3e}; fresh U-Net "
          + (f"matched it after {reached:.0f} s" if reached is not None else f"not there after {train_s:.0f} s")
          + f": ratio {'>=' if reached is None else ''}{res['ratio']:.1f}", flush=True)
    return res


# ----------------------------------------------------------------------------- (c)
def bench_throughput(models: dict, train, test, sizes, sigma: float, repeats: int) -> dict:
    from wavescore.baselines import EmpiricalDenoiser
    from wavescore.networks import load_network

    x = test.to(torch.float64)
    y = x + sigma * noise_for(x.shape, 0, 0)
    runners = dict(models)
    if UNET.exists():
        runners["unet"] = load_network(UNET)
    for n in sizes:
        runners[f"empirical-{n // 1000}k"] = EmpiricalDenoiser(train[:n])
    out = {}
    for name, model in runners.items():
        model.denoise(y[:8], sigma)  # warm-up (and the machines' solve at this sigma)
        t = median_time(lambda: model.denoise(y, sigma), repeats)
        out[name] = {"images_per_s": len(y) / t, "seconds": t, "n_images": len(y)}
        print(f"(c) {name:22s} {len(y) / t:9.1f} images/s", flush=True)
    return out


# ----------------------------------------------------------------------------- (d)
def bench_size_resolution(sizes, n_res: int, res_sides) -> dict:
    out = {"dataset_size": {}, "resolution": {}}
    for cfg in (dict(family="local", degree=2), dict(family="local", degree=2, shared=True)):
        name = ScoreMachine(**cfg).name
        out["dataset_size"][name] = [measure_fit_memory(cfg, data="mnist", n=n) for n in sizes]
        for r in out["dataset_size"][name]:
            print(f"(d) {name:22s} n={r['n']:6d}: fit {r['fit_seconds']:6.1f} s, peak {r['measured_bytes'] / 2**20:7.0f} MiB "
                  f"(predicted {r['predicted_bytes'] / 2**20:7.0f})", flush=True)
    for cfg in (dict(family="local", degree=2, shared=True), dict(family="parent", degree=2, shared=True),
                dict(family="local", degree=2)):
        name = ScoreMachine(**cfg).name
        out["resolution"][name] = [measure_fit_memory(cfg, data=f"photo-tiles-{s}", n=n_res) for s in res_sides]
        for r in out["resolution"][name]:
            print(f"(d) {name:22s} {r['shape'][-1]:3d} px: fit {r['fit_seconds']:6.1f} s, peak "
                  f"{r['measured_bytes'] / 2**20:7.0f} MiB (predicted {r['predicted_bytes'] / 2**20:7.0f})", flush=True)
    return out


# ----------------------------------------------------------------------------- (f)
def bench_tiles(sides, sigmas, n_test: int) -> dict:
    """Shared P=2 machines on 64x64 and 128x128 photo tiles: fit time, predicted peak memory
    and test MSE against the independent (per-band Wiener-like) shared machine."""
    out = {}
    for side in sides:
        train = load_dataset(f"photo-tiles-{side}")
        test = load_dataset(f"photo-tiles-{side}", "test", limit=n_test)
        models, info = {}, {}
        for cfg in (dict(family="independent", degree=1, shared=True), dict(family="local", degree=2, shared=True),
                    dict(family="parent", degree=2, shared=True)):
            m = ScoreMachine(**cfg)
            t0 = time.perf_counter()
            m.fit(train, progress=False)
            info[m.name] = {"fit_seconds": time.perf_counter() - t0,
                            "predicted_peak_bytes": m.memory_estimate((1, side, side), n_images=len(train))["peak_bytes"]}
            models[m.name] = m
        ev = evaluate_denoisers(models, test, sigmas, progress=False)["models"]
        for name in models:
            info[name]["mse"] = ev[name]["mse"]
            print(f"(f) {side}px {name:22s} fit {info[name]['fit_seconds']:5.1f} s  MSE "
                  + " ".join(f"{v:.2e}" for v in ev[name]["mse"]), flush=True)
        out[str(side)] = {"n_train": len(train), "n_test": len(test), "sigmas": list(sigmas), "models": info}
    return out


# ----------------------------------------------------------------------------- how far each family scales
MEMORY_CONFIGS = [dict(family="independent", degree=3), dict(family="orientation", degree=3),
                  dict(family="local", degree=1), dict(family="local", degree=2),
                  dict(family="local", degree=2, shared=True), dict(family="local", degree=3),
                  dict(family="local", degree=3, shared=True), dict(family="local", degree=2, bands="all"),
                  dict(family="local", degree=2, bands="all", shared=True), dict(family="parent", degree=2),
                  dict(family="parent", degree=2, shared=True), dict(family="parent", degree=3, shared=True),
                  dict(family="gaussian")]


def memory_table(sides=(32, 64, 128, 256, 512), budget_gib: float = 0.6 * 24) -> str:
    """Predicted peak GiB (memory_estimate) per configuration and resolution, default batch of
    1000 images and a batch of 100; a cross where it exceeds what a 24 GiB machine allows."""
    def cell(m, side):
        g = m.memory_estimate((1, side, side))["peak_bytes"] / 2**30
        return (f"{g:.2f}" if g < 10 else f"{g:.0f}") + (" ✗" if g > budget_gib else "")

    head = ["machine", "features"] + [f"{s}x{s}" for s in sides] + [f"{sides[-1]}x{sides[-1]}, batch 100"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for cfg in MEMORY_CONFIGS:
        m, small = ScoreMachine(**cfg), ScoreMachine(**cfg, batch_size=100)
        feats = m.memory_estimate((1, 32, 32))["features"]
        lines.append(f"| {m.name} | {feats if cfg['family'] != 'gaussian' else 'D + 1'} | "
                     + " | ".join(cell(m, s) for s in sides) + f" | {cell(small, sides[-1])} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- report
def plots(result: dict, out: Path) -> None:
    plt = pyplot()
    if "d" in result:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for key, ax, xlab in (("dataset_size", axes[0], "training images (MNIST 32x32)"),
                              ("resolution", axes[1], "tile side (px), photo tiles")):
            twin = ax.twinx()
            for k, (name, rows) in enumerate(result["d"][key].items()):
                xs = [r["n"] if key == "dataset_size" else r["shape"][-1] for r in rows]
                ax.plot(xs, [r["fit_seconds"] for r in rows], "o-", color=f"C{k}", label=f"{name}: fit time")
                twin.plot(xs, [r["measured_bytes"] / 2**20 for r in rows], "s--", color=f"C{k}", alpha=0.7,
                          label=f"{name}: peak memory")
                twin.plot(xs, [r["predicted_bytes"] / 2**20 for r in rows], "x:", color=f"C{k}", alpha=0.5)
            ax.set(xscale="log", xlabel=xlab, ylabel="fit time (s), solid")
            twin.set(ylabel="peak memory (MiB): measured dashed, predicted dotted")
            ax.legend(fontsize=7, loc="upper left")
        save_figure(fig, out / "fit_time_memory.png")
    if "a" in result or "b" in result:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for r in result.get("a", []):
            t, _, v = zip(*r["curve"])
            axes[0].semilogy(t, [x - r["closed_form_loss"] + 1e-6 for x in v], label=f"Adam, σ={r['sigma']}")
            axes[0].axhline(0.01 * abs(r["closed_form_loss"]), ls=":", color="k")
            axes[0].axvline(r["closed_form_seconds"], ls="--", color="C3")
        axes[0].set(xlabel="seconds", ylabel="excess DSM loss over the closed form",
                    title="(a) closed form (dashed: its fit time) vs Adam")
        axes[0].legend(fontsize=8)
        if "b" in result:
            b = result["b"]
            if b["unet_curve"]:
                t, _, v = zip(*b["unet_curve"])
                axes[1].plot(t, v, "o-", label="U-Net trained here")
            axes[1].axhline(b["machine_mse"], color="C3", label=f"{b['machine']} (fit {b['machine_fit_seconds']:.0f} s)")
            if "logged_unet" in b:
                axes[1].axhline(b["logged_unet"]["mse"], color="C2", ls="--",
                                label=f"checkpoint U-Net ({b['logged_unet']['train_seconds']:.0f} s logged)")
            axes[1].set(xlabel="U-Net training seconds", ylabel=f"test MSE at σ={b['sigma']}", yscale="log",
                        title="(b) U-Net training vs the machine")
            axes[1].legend(fontsize=8)
        save_figure(fig, out / "training_vs_closed_form.png")
    if "c" in result:
        fig, ax = plt.subplots(figsize=(8, 4))
        names = list(result["c"])
        ax.barh(names, [result["c"][n]["images_per_s"] for n in names])
        ax.set(xscale="log", xlabel="images / s (denoise, 32x32)", title="(c) denoising throughput")
        save_figure(fig, out / "throughput.png")


def markdown(result: dict) -> str:
    mach = result["machine"]
    lines = [f"Machine: {mach['cpu']}, {mach['cores']} cores ({mach['torch_threads']} torch threads), "
             f"{mach['memory_gib']} GiB, torch {mach['torch']}, {mach['blas']}. Command: `{result['command']}`.", ""]
    if "e" in result:
        lines += ["| (e) accumulation | GFLOP/s | GEMM GFLOP/s | ratio |", "|---|---:|---:|---:|"]
        lines += [f"| {k} | {v['accumulation_gflops']:.1f} | {v['gemm_gflops']:.1f} | {v['ratio']:.2f} |"
                  for k, v in result["e"].items()]
        lines.append("")
    if "a" in result:
        lines += ["| (a) σ | closed form (s) | Adam (s) | Adam steps | Adam excess loss | time ratio |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for r in result["a"]:
            lines.append(f"| {r['sigma']} | {r['closed_form_seconds']:.1f} | {r['adam_seconds']:.0f} | {r['adam_steps']} | "
                         f"{100 * r['excess_loss_ratio']:.1f}% | {'>=' if r['speedup_is_lower_bound'] else ''}{r['speedup']:.1f} |")
        lines.append("")
    if "b" in result:
        b = result["b"]
        lines += ["| (b) | seconds | test MSE at σ=%g |" % b["sigma"], "|---|---:|---:|",
                  f"| {b['machine']} fit + evaluation | {b['machine_fit_seconds'] + b['machine_eval_seconds']:.1f} | {b['machine_mse']:.3e} |"]
        if "logged_unet" in b:
            lines.append(f"| checkpoint U-Net ({b['logged_unet']['epochs']} epochs, logged) | "
                         f"{b['logged_unet']['train_seconds']:.0f} | {b['logged_unet']['mse']:.3e} |")
        lines.append(f"| fresh U-Net to the machine's MSE | {'>=' if b['ratio_is_lower_bound'] else ''}"
                     f"{b['unet_reached_seconds'] or b['unet_trained_seconds']:.0f} | "
                     f"{b['unet_curve'][-1][2] if b['unet_curve'] else float('nan'):.3e} |")
        lines += [f"| ratio (U-Net time / machine time) | {'>=' if b['ratio_is_lower_bound'] else ''}{b['ratio']:.1f} | |", ""]
    if "c" in result:
        lines += ["| (c) denoiser | images/s |", "|---|---:|"]
        lines += [f"| {k} | {v['images_per_s']:.1f} |" for k, v in result["c"].items()]
        lines.append("")
    if "f" in result:
        for side, r in result["f"].items():
            lines += [f"| (f) {side}x{side} photo tiles ({r['n_train']} train / {r['n_test']} test) | fit (s) | "
                      + " | ".join(f"MSE σ={x:g}" for x in r["sigmas"]) + " |", "|---|---:|" + "---:|" * len(r["sigmas"])]
            lines += [f"| {k} | {v['fit_seconds']:.1f} | " + " | ".join(f"{x:.2e}" for x in v["mse"]) + " |"
                      for k, v in r["models"].items()]
            lines.append("")
    if "d" in result:
        lines += ["| (d) machine | data | n | fit (s) | peak measured (MiB) | predicted (MiB) | predicted / measured |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for key in ("dataset_size", "resolution"):
            for name, rows in result["d"][key].items():
                for r in rows:
                    lines.append(f"| {name} | {'x'.join(map(str, r['shape'][1:]))} | {r['n']} | {r['fit_seconds']:.1f} | "
                                 f"{r['measured_bytes'] / 2**20:.0f} | {r['predicted_bytes'] / 2**20:.0f} | "
                                 f"{r['predicted_bytes'] / r['measured_bytes']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes and budgets (a few minutes)")
    ap.add_argument("--only", default="e,a,b,c,d,f", help="comma-separated parts to run (default all); "
                    "the other parts' results already in scale.json are kept")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("-o", "--output", default="benchmarks/results/scale")
    args = ap.parse_args()
    out = Path(args.output)
    parts = set(args.only.split(","))
    q = args.quick
    path = out / "scale.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result.update(command=" ".join(["python"] + sys.argv), quick=q, machine=machine_description())
    print(result["machine"], flush=True)

    def save():
        write_json(path, result)

    mnist = load_dataset("mnist", limit=10000 if q else 60000)
    test = load_dataset("mnist", "test", limit=200 if q else 500)
    if "e" in parts:
        cfgs = [dict(family="local", degree=2), dict(family="local", degree=2, shared=True), dict(family="parent", degree=2),
                dict(family="local", degree=3), dict(family="gaussian"), dict(family="independent", degree=1)]
        result["e"] = bench_accumulation(mnist[: 2000 if q else 5000], cfgs, args.repeats)
        save()
    if "a" in parts:
        result["a"] = [bench_gradient_descent(mnist[: 10000 if q else 20000], s, 40 if q else 120)
                       for s in ([0.5] if q else [0.1, 0.5])]
        save()
    if "b" in parts or "c" in parts:
        machines = {}
        fit_s = {}
        for cfg in (dict(family="independent", degree=1), dict(family="local", degree=2, shared=True),
                    dict(family="local", degree=2), dict(family="parent", degree=2), dict(family="gaussian")):
            m = ScoreMachine(**cfg)
            t0 = time.perf_counter()
            m.fit(mnist, progress=False)
            fit_s[m.name] = time.perf_counter() - t0
            machines[m.name] = m
        result["machine_fit_seconds"] = fit_s
        if "b" in parts:
            sigma = 0.5
            ev = evaluate_denoisers(machines, test, [sigma], progress=False)["models"]
            best = min(ev, key=lambda k: ev[k]["mse"][0])
            result["b"] = bench_unet(mnist, test, sigma, 120 if q else 360, 30 if q else 60,
                                     (best, machines[best], fit_s[best]))
            save()
        if "c" in parts:
            result["c"] = bench_throughput(machines, mnist, test, [1000, 10000] if q else [1000, 10000, 60000],
                                           0.5, args.repeats)
            save()
    if "f" in parts:
        result["f"] = bench_tiles([64, 128], [0.05, 0.2, 0.5], 64 if q else 92)
        save()
    if "d" in parts:
        result["d"] = bench_size_resolution([1000, 4000] if q else [2000, 8000, 32000], 200 if q else 500,
                                            [32, 64, 128])
        save()
    plots(result, out)
    write_bytes_atomic(out / "memory_table.md", memory_table().encode())
    write_bytes_atomic(out / "scale.md", markdown(result).encode())
    print(markdown(result))


if __name__ == "__main__":
    main()
