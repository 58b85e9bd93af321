"""Markdown tables from a `wavescore compare` JSON: MSE on train/test and R² per reference.

    python benchmarks/compare_tables.py benchmarks/results/compare/compare.json
"""
import json
import sys


def main(path: str) -> None:
    r = json.load(open(path))
    sig = r["sigmas"]
    head = "| model | " + " | ".join(f"σ={s:g}" for s in sig) + " |\n|---|" + "---:|" * len(sig)
    print(f"Test MSE (train MSE in brackets; {r['n_test']} images each):\n")
    print(head)
    for name, v in r["models"].items():
        print(f"| {name} | " + " | ".join(f"{a:.2e} ({b:.2e})" for a, b in zip(v["mse_test"], v["mse_train"])) + " |")
    for ref, rows in r["r2"].items():
        print(f"\nR² of the denoiser output (score R² in brackets) against **{ref}**:\n")
        print(head)
        best = [max(v["denoiser"][k] for n, v in rows.items()) for k in range(len(sig))]
        for name, v in rows.items():
            cells = []
            for k, (d, s) in enumerate(zip(v["denoiser"], v["score"])):
                cell = f"{d:.3f} ({s:.2f})"
                cells.append(f"**{cell}**" if d == best[k] else cell)
            print(f"| {name} | " + " | ".join(cells) + " |")
    if "samples" in r:
        print(f"\nFinal samples from shared initial noise ({r['samples']['n']} samples, {r['samples']['steps']} Heun steps): "
              "mean Pearson correlation with the reference's sample (mean r² in brackets):\n")
        refs = list(r["samples"]["correlation"])
        print("| model | " + " | ".join(refs) + " |\n|---|" + "---:|" * len(refs))
        names = [n for n in r["models"]]
        for name in names:
            cells = []
            for ref in refs:
                c = r["samples"]["correlation"][ref].get(name)
                cells.append("" if c is None else f"{c['mean']:.3f} ({c['mean_squared']:.3f})")
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
