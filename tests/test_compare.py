"""Mimicry measures: R² closed cases and an end-to-end comparison on digits."""
import torch

from wavescore import ScoreMachine, load_dataset
from wavescore.compare import compare_models, r2


class _MeanOnly:
    """Predicts the same image whatever the input: the R² baseline."""

    def __init__(self, img):
        self.img = img

    def denoise(self, x, sigma):
        return self.img.expand_as(x).to(x.dtype)


def test_r2_closed_cases():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(50, 1, 4, 4, generator=g, dtype=torch.float64)
    assert r2(ref, ref) == 1.0
    assert abs(r2(ref.mean(0, keepdim=True).expand_as(ref), ref)) < 1e-12  # the mean-only baseline scores 0
    noisy = ref + 0.5 * torch.randn(ref.shape, generator=g, dtype=torch.float64)
    expected = 1 - ((noisy - ref) ** 2).sum() / ((ref - ref.mean(0)) ** 2).sum()
    assert abs(r2(noisy, ref) - float(expected)) < 1e-9


def test_compare_end_to_end_on_digits():
    train, test = load_dataset("digits"), load_dataset("digits", "test")
    a = ScoreMachine(family="local", degree=2).fit(train, progress=False)
    b = ScoreMachine(family="gaussian").fit(train, progress=False)
    models = {"local": a, "local-copy": a, "gaussian": b, "mean": _MeanOnly(train.mean(0, keepdim=True))}
    res = compare_models(models, ["local"], train[:200], test[:200], [0.1, 1.0], n_samples=6, steps=4, progress=False)
    same = res["r2"]["local"]["local-copy"]
    assert same["denoiser"] == [1.0, 1.0] and same["score"] == [1.0, 1.0]
    assert res["samples"]["correlation"]["local"]["local-copy"]["mean"] > 1 - 1e-9
    g = res["r2"]["local"]["gaussian"]
    assert all(0.0 < v < 1.0 for v in g["denoiser"])
    # the machines beat doing nothing: test MSE below sigma^2
    for name in ("local", "gaussian"):
        mse = res["models"][name]["mse_test"]
        assert mse[0] < 0.1**2 and mse[1] < 1.0


# ------------------------------------------------------------------ the machine x network matrix
import json

import numpy as np
import pytest

from wavescore._io import WavescoreError
from wavescore.compare import matrix_markdown, plot_samples


class _Stub:
    """A model that is a fixed mixture of other models' outputs, with a chosen kind."""

    def __init__(self, parts, kind="network"):
        self.parts, self.kind_ = parts, kind

    def denoise(self, x, sigma):
        return sum(w * m.denoise(x, sigma).double() for w, m in self.parts)


@pytest.fixture(scope="module")
def digits_models():
    train = load_dataset("digits")
    g = ScoreMachine(family="gaussian").fit(train, progress=False)
    loc = ScoreMachine(family="local", degree=1).fit(train, progress=False)
    return train, load_dataset("digits", "test"), g, loc


def test_sample_statistics_are_numpys_on_the_per_sample_r(digits_models):
    train, test, g, loc = digits_models
    ref = _Stub([(0.7, loc), (0.3, g)])
    res = compare_models({"g": g, "loc": loc, "net": ref}, ["net"], train[:50], test[:50], [0.5], n_samples=24,
                         steps=4, progress=False)
    finals = res["_finals"]
    for name in ("g", "loc"):
        c = res["samples"]["correlation"]["net"][name]
        # the per-sample r recomputed independently (numpy's corrcoef per pair of images)
        a, b = finals[name].reshape(24, -1).numpy(), finals["net"].reshape(24, -1).numpy()
        r = np.array([np.corrcoef(a[i], b[i])[0, 1] for i in range(24)])
        assert np.allclose(c["r"], r, atol=1e-10)
        assert c["median"] == pytest.approx(np.median(r), abs=1e-12)
        assert c["q25"] == pytest.approx(np.percentile(r, 25), abs=1e-12)
        assert c["q75"] == pytest.approx(np.percentile(r, 75), abs=1e-12)
        assert c["mean"] == pytest.approx(r.mean(), abs=1e-12)
        assert c["q25"] < c["median"] < c["q75"] < 1.0  # real spread, not a degenerate constant


def test_a_copy_of_the_reference_scores_one_everywhere(digits_models):
    train, test, g, loc = digits_models
    res = compare_models({"g": g, "copy": _Stub([(1.0, loc)], kind="machine"), "net": _Stub([(1.0, loc)])}, ["net"],
                         train[:40], test[:40], [0.1, 1.0], n_samples=8, steps=3, progress=False)
    c = res["samples"]["correlation"]["net"]["copy"]
    assert c["median"] == pytest.approx(1.0, abs=1e-12) and c["q25"] == pytest.approx(1.0, abs=1e-12)
    assert res["r2"]["net"]["copy"]["denoiser"] == [1.0, 1.0]
    assert res["best_match"]["net"]["by_samples"]["model"] == "copy"
    assert res["best_match"]["net"]["by_denoiser_r2"] == {"model": "copy", "mean_r2": 1.0}


def test_best_match_is_the_closest_machine_never_a_network(digits_models):
    train, test, g, loc = digits_models
    from wavescore.baselines import EmpiricalDenoiser

    emp = EmpiricalDenoiser(train)
    emp.kind_ = "empirical"
    ref = _Stub([(1.0, loc)])  # a "network" that is the local machine exactly
    twin = _Stub([(1.0, loc)])  # another network, identical to the reference: not a candidate
    models = {"g": g, "loc": loc, "empirical": emp, "twin": twin, "net": ref}
    res = compare_models(models, ["net"], train[:60], test[:60], [0.1, 0.5, 2.0], n_samples=12, steps=4,
                         progress=False)
    assert res["kinds"] == {"g": "machine", "loc": "machine", "empirical": "empirical", "twin": "network",
                            "net": "network"}
    best = res["best_match"]["net"]
    assert best["candidates"] == ["g", "loc", "empirical"]
    assert res["r2"]["net"]["twin"]["denoiser"] == [1.0, 1.0, 1.0]  # it would have won, were it a candidate
    assert best["by_denoiser_r2"] == {"model": "loc", "mean_r2": 1.0}
    assert best["by_samples"]["model"] == "loc" and best["by_samples"]["median_r"] == pytest.approx(1.0, abs=1e-12)
    corr = res["samples"]["correlation"]["net"]
    assert corr["g"]["median"] < 0.99 and corr["empirical"]["median"] < 0.99  # the others are clearly worse
    assert max(np.mean(res["r2"]["net"][n]["denoiser"]) for n in ("g", "empirical")) < 0.99
    md = matrix_markdown(res)
    assert "| model | net |" in md and "best match for net: by median final-sample r: loc" in md
    # rows: machines, then the empirical optimum, then networks; the reference's own cell says so
    rows = [line.split(" | ")[0][2:] for line in md.splitlines() if line.startswith("| ") and "model" not in line]
    assert rows[:5] == ["g", "loc", "empirical", "twin", "net"]
    assert "| net | ref |" in md


def test_a_reference_that_is_not_a_model_is_refused(digits_models):
    train, test, g, _ = digits_models
    with pytest.raises(WavescoreError, match="'unet' are not among the models"):
        compare_models({"g": g}, ["unet"], train[:10], test[:10], [0.5], progress=False)


def test_samples_grid_rows_are_labelled_in_kind_order(monkeypatch, tmp_path):
    import wavescore.plots as plots

    seen = {}

    def capture(fig, path, dpi=110):
        seen["labels"] = [ax.get_ylabel() for ax in fig.axes]
        plots.pyplot().close(fig)
        return path

    monkeypatch.setattr(plots, "save_figure", capture)
    finals = {n: torch.zeros(3, 1, 4, 4) for n in ("unet", "els", "local", "gauss")}
    plot_samples(finals, {"unet": "network", "els": "els", "local": "machine", "gauss": "machine"}, tmp_path / "s.png")
    assert seen["labels"] == ["local", "gauss", "els", "unet"]
    # a joined machine's long name is wrapped at its parts, so the images keep most of the width
    seen.clear()
    long = ("joined(gaussian-P1+mixture-K10+mixture-K30+mixture-K100+local-mixture-pixel-K64-r1+gaussian+gates(own 1,2,4))"
            " calibrated to transformer")

    def capture_size(fig, path, dpi=110):
        seen["labels"], seen["size"] = [ax.get_ylabel() for ax in fig.axes], fig.get_size_inches()
        plots.pyplot().close(fig)
        return path
    monkeypatch.setattr(plots, "save_figure", capture_size)
    plot_samples({long: torch.zeros(8, 1, 4, 4), "unet": torch.zeros(8, 1, 4, 4)},
                 {long: "machine", "unet": "network"}, tmp_path / "s.png")
    lines = seen["labels"][0].split("\n")
    assert len(lines) == 4 and max(map(len, lines)) <= 44
    assert " ".join(lines).replace("+ ", "+") == long
    assert seen["size"][0] < 2 * 0.9 * 8  # labels narrower than the 8 images (they were 1.4x wider)


def test_wrap_label_breaks_only_between_parts():
    from wavescore.plots import wrap_label

    assert wrap_label("unet") == "unet"
    assert wrap_label("a+b+c", width=2) == "a+\nb+\nc"
    assert wrap_label("x" * 50 + "+y", width=10) == "x" * 50 + "+\ny"  # a long part keeps its line


def test_the_matrix_heatmap_wraps_long_row_labels(monkeypatch, tmp_path):
    import wavescore.plots as plots

    seen = {}

    def capture(fig, path, dpi=110):
        seen["rows"] = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        seen["size"] = fig.get_size_inches()
        plots.pyplot().close(fig)
        return path
    monkeypatch.setattr(plots, "save_figure", capture)
    long = "joined(gaussian-P1+mixture-K10+mixture-K30+mixture-K100+local-mixture-pixel-K64-r1) calibrated to unet"
    plots.heatmap([[0.5, 0.6], [0.7, 0.8]], [long, "unet"], ["a", "b"], tmp_path / "h.png")
    assert seen["rows"] == [plots.wrap_label(long), "unet"] and "\n" in seen["rows"][0]
    assert seen["size"][0] < 1.2 * 2 + 0.07 * 45 + 2 + 1e-9


def test_two_models_given_one_name_are_told_apart_or_refused(monkeypatch):
    import wavescore.models as models
    from wavescore.cli import _load_models

    names = {"p.wsm": "m", "q.wsm": "m", "r.wsm": "m [q.wsm]", "s.wsm": "other"}
    monkeypatch.setattr(models, "load_model", lambda spec, data=None, limit=None: (names[spec], object()))
    # the same name twice: each keeps its spec in its name, in the order given
    assert list(_load_models(["p.wsm", "q.wsm", "s.wsm"], None)) == ["m [p.wsm]", "m [q.wsm]", "other"]
    # a model literally named like another's disambiguated name would replace it: refused
    with pytest.raises(WavescoreError, match=r"models 'q.wsm' and 'r.wsm' both end up named 'm \[q.wsm\]'"):
        _load_models(["p.wsm", "q.wsm", "r.wsm"], None)


def test_cli_writes_the_matrix_heatmap_and_grid(tmp_path, capsys):
    from PIL import Image

    from wavescore.cli import main

    wsm = tmp_path / "g.wsm"
    assert main(["fit", "--data", "digits", "--family", "gaussian", "-o", str(wsm)]) == 0
    out = tmp_path / "cmp"
    assert main(["compare", "--models", str(wsm), "empirical", "--data", "digits", "-n", "30", "--sigmas", "0.2,1",
                 "--samples", "6", "--steps", "3", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "compare.json").read_text())
    (machine,) = [n for n, k in res["kinds"].items() if k == "machine"]
    assert res["references"] == ["empirical"] and res["kinds"]["empirical"] == "empirical"
    c = res["samples"]["correlation"]["empirical"][machine]
    assert len(c["r"]) == 6 and c["median"] == pytest.approx(float(np.median(c["r"])))
    assert res["best_match"]["empirical"]["by_samples"] == {"model": machine, "median_r": c["median"]}
    assert res["best_match"]["empirical"]["by_denoiser_r2"]["model"] == machine
    assert res["outputs"] == {"matrix_md": "matrix.md", "matrix_png": "matrix.png", "r2_denoiser": "r2_denoiser.png",
                              "r2_score": "r2_score.png", "samples": "samples.png",
                              "samples_grid": "samples_grid.npz"}
    md = (out / "matrix.md").read_text()
    assert f"| {machine} | {c['median']:.3f} [{c['q25']:.3f}, {c['q75']:.3f}] |" in md
    assert f"best match for empirical: by median final-sample r: {machine}" in printed
    for name in ("matrix.png", "samples.png", "r2_denoiser.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width > 200
    # every figure is drawn again from the files alone, the same pixels
    from wavescore.compare import redraw

    before = {n: np.asarray(Image.open(out / n)) for n in ("matrix.png", "samples.png", "r2_denoiser.png")}
    for n in before:
        (out / n).unlink()
    assert set(redraw(out)) == set(res["outputs"])
    for n, img in before.items():
        assert np.array_equal(np.asarray(Image.open(out / n)), img)
    # without samples: no grid, the heatmap shows R² and the JSON no sample keys
    out2 = tmp_path / "cmp2"
    assert main(["compare", "--models", str(wsm), "empirical", "--data", "digits", "-n", "30", "--sigmas", "0.5",
                 "-o", str(out2)]) == 0
    res2 = json.loads((out2 / "compare.json").read_text())
    assert "samples" not in res2 and "samples" not in res2["outputs"] and not (out2 / "samples.png").exists()
    assert res2["best_match"]["empirical"]["by_samples"] is None
    assert not (out / ".partial").exists() and not (out2 / ".partial").exists()


def test_a_killed_cli_compare_resumes_from_its_partial_outputs(tmp_path, monkeypatch):
    import wavescore.compare as compare
    from wavescore.cli import main

    wsm = tmp_path / "g.wsm"
    assert main(["fit", "--data", "digits", "--family", "gaussian", "-o", str(wsm)]) == 0
    out = tmp_path / "cmp"
    argv = ["compare", "--models", str(wsm), "empirical", "--data", "digits", "-n", "30", "--sigmas", "0.2,1",
            "--samples", "6", "--steps", "3", "-o", str(out)]

    def killed(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(compare, "write_outputs", killed)
    assert main(argv) == 130  # main reports the interrupt, with the shell's status for SIGINT
    assert len(list((out / ".partial").glob("*.pt"))) == 4
    monkeypatch.undo()
    monkeypatch.setattr(compare, "_outputs", killed)  # every output must come from the store now
    monkeypatch.setattr("wavescore.samplers.sample", killed)
    assert main(argv) == 0
    assert (out / "compare.json").exists() and not (out / ".partial").exists()


# ------------------------------------------------------------------ where the best match misses (issue 16)
from wavescore.compare import write_outputs
from wavescore.transform import WaveletTransform


def test_residual_shares_sum_to_one_and_deficits_to_one_minus_r2(digits_models):
    train, test, g, loc = digits_models
    net = _Stub([(0.7, loc), (0.3, g)])
    sig = [0.1, 0.5, 2.0]
    res = compare_models({"g": g, "loc": loc, "net": net}, ["net"], train[:40], test[:60], sig, progress=False)
    split = res["residual_by_band"]["net"]
    best = res["best_match"]["net"]["by_denoiser_r2"]["model"]
    assert split["model"] == best and split["bands"] == ["L1", "L2", "L3", "a3"]  # 8x8: three Haar levels
    r2s = res["r2"]["net"][best]["denoiser"]
    for k in range(len(sig)):
        assert sum(split["share"][k]) == pytest.approx(1.0, abs=1e-12)
        assert all(v >= 0 for v in split["share"][k])
        assert sum(split["deficit"][k]) == pytest.approx(1 - r2s[k], abs=1e-12)
        assert split["deficit"][k] == pytest.approx([v * (1 - r2s[k]) for v in split["share"][k]], abs=1e-12)


class _Shrink:
    """The linear shrinkage x / (1 + s^2): a cheap machine for the constructed case."""

    kind_ = "machine"

    def denoise(self, x, sigma):
        return x.double() / (1 + sigma**2)


class _Plus:
    """A "network": another model's output plus a fixed image."""

    kind_ = "network"

    def __init__(self, model, image):
        self.model, self.image = model, image

    def denoise(self, x, sigma):
        return self.model.denoise(x, sigma).double() + self.image


def test_a_residual_in_the_finest_band_is_reported_there(tmp_path):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 1, 8, 8, generator=g, dtype=torch.float64)
    tr = WaveletTransform((1, 8, 8), "haar")
    w = torch.zeros(1, tr.size, dtype=torch.float64)
    for o in "hvd":  # coefficients only in level 1 (the finest details)
        b = tr.layout.band(1, o)
        w[:, b.start : b.stop] = torch.randn(1, b.size, generator=g, dtype=torch.float64)
    machine = _Shrink()
    res = compare_models({"shrink": machine, "net": _Plus(machine, tr.inverse(w))}, ["net"], x, x, [0.2, 1.0],
                         progress=False)
    split = res["residual_by_band"]["net"]
    assert split["model"] == "shrink"
    for row in split["share"]:
        assert row[0] == pytest.approx(1.0, abs=1e-10) and sum(row[1:]) == pytest.approx(0.0, abs=1e-10)
    # the JSON keys and the markdown table, as written
    paths = write_outputs(res, None, tmp_path)
    saved = json.loads(paths["json"].read_text())["residual_by_band"]["net"]
    assert set(saved) >= {"model", "bands", "share", "deficit"} and saved["bands"] == ["L1", "L2", "L3", "a3"]
    md = paths["matrix_md"].read_text()
    assert "### Where shrink misses net: denoiser R² deficit per haar wavelet band" in md
    assert "| σ | L1 | L2 | L3 | a3 | 1 − R² |" in md
    d = split["deficit"][1]
    assert f"| 1 | {d[0]:.3f} | {d[1]:.3f} | {d[2]:.3f} | {d[3]:.3f} | {1 - res['r2']['net']['shrink']['denoiser'][1]:.3f} |" in md
    assert "largest R² deficit of shrink:" in md and "in L1" in md


def test_no_candidate_no_split():
    x = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    res = compare_models({"a": _Plus(_Shrink(), 0.0), "b": _Plus(_Shrink(), 0.1)}, ["a"], x, x, [0.5],
                         progress=False)
    assert res["residual_by_band"] == {"a": None}
    assert "Where" not in matrix_markdown(res)


class _Counting:
    """Wraps a model and counts its denoiser calls."""

    def __init__(self, model, kind="machine"):
        self.model, self.kind_, self.calls = model, kind, 0

    def denoise(self, x, sigma):
        self.calls += 1
        return self.model.denoise(x, sigma)


def test_a_rerun_reads_each_keyed_model_from_the_partial_store(digits_models, tmp_path, capsys):
    train, test, g, loc = digits_models

    def run(keys, **kw):
        models = {"loc": _Counting(loc), "g": _Counting(g), "net": _Counting(_Stub([(0.7, loc), (0.3, g)]), "network")}
        res = compare_models(models, ["net"], train[:60], test[:60], [0.1, 1.0], n_samples=8, steps=3,
                             progress=False, cache=tmp_path / ".partial", keys=keys, **kw)
        return res, {n: m.calls for n, m in models.items()}

    keys = {"loc": "local P1", "g": "gaussian", "net": "0.7 loc + 0.3 g"}
    first, calls = run(keys)
    assert min(calls.values()) > 0
    assert len(list((tmp_path / ".partial").glob("*.pt"))) == 6  # outputs and samples of each model
    again, calls = run(keys)
    assert calls == {"loc": 0, "g": 0, "net": 0}
    for k in ("r2", "models", "best_match", "residual_by_band"):
        assert again[k] == first[k]
    assert again["samples"]["correlation"] == first["samples"]["correlation"]
    assert torch.equal(again["_finals"]["loc"], first["_finals"]["loc"])
    # another key, an unkeyed model, another protocol (sigmas) or images: computed again
    _, calls = run({**keys, "g": "gaussian, refitted", "loc": None})
    assert calls["g"] > 0 and calls["loc"] > 0 and calls["net"] == 0
    _, calls = run(keys, seed=1)
    assert min(calls.values()) > 0
    # a truncated file is said and computed again, never trusted
    for f in (tmp_path / ".partial").glob("*.pt"):
        f.write_bytes(f.read_bytes()[:100])
    capsys.readouterr()
    res, calls = run(keys)
    assert min(calls.values()) > 0 and res["r2"] == first["r2"]
    assert "unreadable" in capsys.readouterr().err


def test_r2_plot_has_one_legend_and_one_colour_per_model(monkeypatch, tmp_path):
    import wavescore.plots as plots
    from wavescore.compare import plot_r2

    seen = {}

    def capture(fig, path, dpi=110, rect=None):
        seen["fig"] = fig
        return path
    monkeypatch.setattr(plots, "save_figure", capture)
    curve = {"denoiser": [0.9, 0.5], "score": [0.5, 0.9]}
    result = {"sigmas": [0.1, 1.0], "kinds": {"m": "machine", "a": "network", "b": "network", "c": "network", "d": "network"},
              "r2": {r: {n: curve for n in ("m", "a", "b", "c", "d") if n != r} for r in ("a", "b", "c", "d")}}
    plot_r2(result, tmp_path / "r2.png")
    fig = seen["fig"]
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 4 and len(fig.axes) == 6  # three to a row, the unused slots hidden
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["m", "b", "c", "d", "a"]  # machines first
    colour_of_m = {tuple(ax.get_lines()[0].get_color()) for ax in panels}
    assert len(colour_of_m) == 1 and all(ax.get_lines()[0].get_linestyle() == "-" for ax in panels)
    assert all(line.get_linestyle() == "--" for ax in panels for line in ax.get_lines()[1:4])
    plots.pyplot().close(fig)


def test_final_samples_that_run_away_are_counted_not_averaged_away(digits_models):
    """A model whose samples end far outside the data (here every one at 20, ten times beyond the
    digits' range of 1) is counted in samples.out_of_range and named in the matrix; the Gaussian
    score's samples are not."""
    train, test, g, loc = digits_models
    away = _MeanOnly(torch.full_like(train[:1], 20.0))
    res = compare_models({"g": g, "away": away, "net": _Stub([(1.0, loc)])}, ["net"], train[:30], test[:30], [0.5],
                         n_samples=8, steps=4, progress=False)
    assert res["samples"]["out_of_range"] == {"bound": 10.0 * float(test[:30].abs().max()), "count": {"away": 8}}
    assert float(res["_finals"]["away"].min()) > 19.0  # they are where the denoiser sent them
    assert "away: 8 of 8 final samples beyond ±10" in matrix_markdown(res)
