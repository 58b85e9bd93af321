"""The contracts every model and machine class shares (issue 14): Denoiser (denoise, score by
Tweedie, model(x, sigma)), Estimator (parameters from the constructor), the sums protocol."""
import inspect

import pytest
import torch

from wavescore import GatedMachine, ScoreMachine, WavescoreError, load_dataset


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits"), load_dataset("digits", "test")


def test_every_model_is_a_callable_denoiser_with_tweedie(digits, tmp_path):
    """model(x, s) is model.denoise(x, s), and score and denoise agree by Tweedie, for machines,
    the gated machine, the empirical optimum, ELS and a network."""
    from wavescore import GatedMachine
    from wavescore.baselines import ELSDenoiser, EmpiricalDenoiser
    from wavescore.denoiser import Denoiser
    from wavescore.networks import train

    tr, te = digits
    x = te[:6].double() + 0.3 * torch.randn(te[:6].shape, generator=torch.Generator().manual_seed(1),
                                            dtype=torch.float64)
    net = train("cnn", tr[:64], epochs=1, out=tmp_path / "n.pt", batch_size=32, progress=False,
                arch_kwargs={"width": 8, "depth": 2})
    models = [ScoreMachine(family="local", degree=2).fit(tr, progress=False),
              GatedMachine(select=False, batch_size=500).fit(tr, progress=False),
              EmpiricalDenoiser(tr[:200]), ELSDenoiser(tr[:50]), net]
    for m in models:
        assert isinstance(m, (Denoiser, torch.nn.Module)) and m.shape_ == (1, 8, 8)
        d = m.denoise(x, 0.3)
        assert torch.equal(m(x, 0.3).detach(), d) or torch.allclose(m(x, 0.3).detach(), d, atol=1e-6)
        assert torch.allclose(x + 0.3**2 * m.score(x, 0.3), d, atol=1e-6)
        with pytest.raises(WavescoreError, match="sigma"):
            m.denoise(x, float("nan"))
        with pytest.raises(WavescoreError, match="one value per image"):
            m.denoise(x, torch.ones(2))



@pytest.mark.parametrize("cls", [ScoreMachine, GatedMachine])
def test_parameters_come_from_the_constructor(cls):
    names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    m = cls()
    assert list(m.get_params()) == names
    assert repr(m) == f"{cls.__name__}()"
    m.set_params(ridge=1e-3, levels=2)
    assert m.ridge == 1e-3 and repr(m) == f"{cls.__name__}(levels=2, ridge=0.001)"
    assert repr(eval(repr(m), {cls.__name__: cls})) == repr(m)
    with pytest.raises(WavescoreError, match="no parameter colour"):
        m.set_params(colour="red")
    with pytest.raises(WavescoreError, match="ridge"):
        m.set_params(ridge=float("nan"))
    assert m.ridge == 1e-3  # a refused change leaves the configuration as it was


def test_fitted_machine_takes_only_runtime_settings(digits):
    m = ScoreMachine(family="local").fit(digits[0], progress=False)
    m.set_params(batch_size=64, device="cpu")
    assert m.batch_size == 64
    with pytest.raises(WavescoreError, match="fitted: changing degree needs a new fit"):
        m.set_params(degree=2)
    assert m.degree == 1


@pytest.mark.parametrize("cls", [ScoreMachine, GatedMachine])
def test_both_classes_offer_the_sums_protocol(cls):
    for name in ("begin", "empty_sums", "coefficients", "update_sums", "sums_count", "choose", "merge_sums",
                 "set_sums", "shard_state", "for_shard", "shard_sums"):
        assert callable(getattr(cls, name, None)), name


def test_one_registry_of_families():
    from wavescore.cli import build_parser
    from wavescore.models import build_machine
    from wavescore.presets import PRESETS, make_machine

    fit = next(a for a in build_parser()._subparsers._group_actions[0].choices["fit"]._actions if a.dest == "family")
    assert fit.choices == list(PRESETS)
    assert type(make_machine("gaussian+gates", select=False)) is GatedMachine
    assert type(build_machine({"cls": "gated", "scales": (1,)})) is GatedMachine  # saved configurations still load
    assert make_machine("gaussian+gsm", degree=3).name == ScoreMachine(family="gaussian+gsm", degree=3).name
    with pytest.raises(WavescoreError, match="GatedMachine"):
        ScoreMachine(family="gaussian+gates")
    with pytest.raises(WavescoreError, match="unknown family 'wide'"):
        make_machine("wide")
    for name, preset in PRESETS.items():
        if preset.terms is not None:  # every mixed preset declares a global term and parses
            terms = ScoreMachine(family=name, degree=2).mixed_terms()
            assert terms[0].family == "gaussian" and len(terms) >= 2


def test_a_new_term_kind_is_one_function(digits):
    """The worked example of docs/architecture.md: kind 'own-products' (u_own u_j) is a sub-family
    of kind 'all' at degree 2, so its machine equals the 'all' machine restricted to its
    features: the same moments, a sub-block solve (method.md §5)."""
    import numpy as np

    from wavescore.neighbourhoods import TERM_KINDS

    e = TERM_KINDS["own-products"](4, 2)
    assert e.tolist() == [[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]]
    tr, te = digits
    op = ScoreMachine(family="mixed", terms=[{"family": "parent", "kind": "own-products"}]).fit(tr, progress=False)
    full = ScoreMachine(family="mixed", terms=[{"family": "parent", "degree": 2}]).fit(tr, progress=False)
    assert op.name == "parent-r1-op"
    kept = [{tuple(r) for r in f.exps} for f in op.moments_.features]
    groups = iter(kept)

    def keep(exps, roles):  # called once per group, in order
        mine = next(groups)
        return [tuple(r) in mine for r in exps]
    sub = full.restrict(keep)
    F_op = [f.F for f in op.moments_.features]
    F_full = [f.F for f in full.moments_.features]
    assert all(a < b for a, b in zip(F_op, F_full) if b > 1)  # really a smaller family
    x = te[:20].double() + 0.3 * torch.randn(te[:20].shape, generator=torch.Generator().manual_seed(2),
                                             dtype=torch.float64)
    for s in (0.1, 0.3, 1.0):
        torch.testing.assert_close(op.denoise(x, s), sub.denoise(x, s), rtol=1e-7, atol=1e-9)
    assert not np.allclose(op.denoise(x, 0.3).numpy(), full.denoise(x, 0.3).numpy())


def test_the_core_imports_no_experiment_reference_or_cli_module():
    """docs/architecture.md: the core (transform, features, moments, solver, machines, presets,
    the fit and the contracts) imports nothing from experiments, references, plots or the CLI."""
    import ast
    from pathlib import Path

    import wavescore

    src = Path(wavescore.__file__).parent
    core = ["transform", "neighbourhoods", "features", "moments", "_gram", "solver", "machine", "gates", "presets",
            "fitting", "denoiser", "_checks", "_io", "gate_moments", "joint", "mixture", "local_mixture", "joined",
            "cascade"]
    outer = {"evaluation", "compare", "analysis", "report", "quality", "profiling", "distributed", "samplers", "plots",
             "cli", "baselines", "networks", "diffusers_ref", "datasets", "models"}
    for name in core:
        tree = ast.parse((src / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                mods = [node.module] if node.module else [a.name for a in node.names]
                assert not set(mods) & outer, f"{name}.py imports {set(mods) & outer}"


def test_one_experiment_runner(tmp_path, capsys):
    """Benchmarks are configuration lists for experiments.run_table: fit, evaluate, JSON after
    every model, a markdown table, a plot; a rerun skips what is done."""
    import json

    from wavescore.experiments import markdown_table, run_table

    cfgs = [dict(family="gaussian"), dict(family="local", degree=2), dict(family="gaussian+gates", sigmas=(0.1, 1.0))]
    res = run_table(cfgs, "digits", tmp_path, stem="t", title="t", limit_test=40, sigmas=(0.1, 1.0), progress=False)
    assert list(res["models"]) == ["gaussian-P1", "local-r1-P2", "gaussian+gates(own 1,2,4; energy-r1 1,2)-select"]
    on_disk = json.loads((tmp_path / "t.json").read_text())
    assert on_disk["models"]["local-r1-P2"]["mse"] == res["models"]["local-r1-P2"]["mse"]
    assert (tmp_path / "t.md").read_text() == markdown_table(on_disk) and (tmp_path / "t.png").stat().st_size > 0
    assert "vs gaussian-P1" in (tmp_path / "t.md").read_text()  # the -select row against the Gaussian score
    before = on_disk["models"]["gaussian-P1"]["fit_seconds"]
    again = run_table(cfgs, "digits", tmp_path, stem="t", title="t", limit_test=40, sigmas=(0.1, 1.0), progress=False)
    assert again["models"]["gaussian-P1"]["fit_seconds"] == before  # resumed, not refitted
    other = run_table(cfgs[:1], "digits", tmp_path, stem="t", title="t", limit_test=30, sigmas=(0.1, 1.0),
                      progress=False)
    assert list(other["models"]) == ["gaussian-P1"] and other["n_test"] == 30  # another protocol: a new table
    assert other["models"]["gaussian-P1"]["fit_seconds"] != before
    resized = run_table(cfgs[:1], "digits", tmp_path, stem="t", title="t", limit_test=30, sigmas=(0.1, 1.0),
                        size=16, progress=False)  # a resized table is another protocol too
    assert resized["size"] == 16 and resized["models"]["gaussian-P1"]["mse"] != other["models"]["gaussian-P1"]["mse"]


def test_resize():
    """datasets.resize is bilinear interpolation (a constant image stays constant; sizes are checked)."""
    import pytest
    import torch

    from wavescore._io import WavescoreError
    from wavescore.datasets import resize

    x = torch.full((2, 1, 8, 8), 0.25)
    assert resize(x, 32).shape == (2, 1, 32, 32) and torch.allclose(resize(x, 32), torch.tensor(0.25))
    ramp = torch.arange(4.0).repeat(4, 1)[None, None]
    assert torch.allclose(resize(ramp, 8)[0, 0, 0], torch.tensor([0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0]))
    with pytest.raises(WavescoreError, match="size must be a whole number"):
        resize(x, 1.5)


def test_sampling_runner(tmp_path, capsys):
    """benchmarks/generation.py is a configuration list for experiments.run_samples."""
    import json

    from wavescore.experiments import run_samples, samples_table

    res = run_samples([dict(family="gaussian"), dict(family="independent", degree=3)], "digits", tmp_path, n=16,
                      steps=4, progress=False)
    assert set(res["models"]) == {"gaussian-P1", "independent-P3"}
    on_disk = json.loads((tmp_path / "generation.json").read_text())
    assert (tmp_path / "generation.md").read_text() == samples_table(on_disk)
    q = on_disk["models"]["gaussian-P1"]
    assert q["wavelet_packet_fd"]["samples"] > 0 and (tmp_path / "gaussian-P1.png").exists()


@pytest.mark.parametrize("make", [lambda: ScoreMachine(family="parent", degree=2, batch_size=479),
                                  lambda: GatedMachine(sigmas=(0.05, 0.5), select=False, batch_size=479)])
def test_partial_fit_equals_fit(digits, make):
    x = digits[0]
    whole = make().fit(x, progress=False)
    parts = make()
    for s in range(0, len(x), 479):
        parts.partial_fit(x[s : s + 479])
    assert parts.n_samples_ == whole.n_samples_ == len(x)
    y = digits[1][:10].double() + 0.3 * torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(3),
                                                    dtype=torch.float64)
    assert torch.equal(parts.denoise(y, 0.3), whole.denoise(y, 0.3))
    with pytest.raises(WavescoreError, match="select=False"):
        ScoreMachine(select=True).partial_fit(x)
    with pytest.raises(WavescoreError, match="shape"):
        parts.partial_fit(torch.zeros(4, 1, 16, 16))


def test_machine_files_of_the_previous_release_still_load(digits):
    """tests/data/v1-*.wsm were written by the code before the redesign (commit ba4ef4d) from the
    first 300 training digits; they load and equal a fresh fit of the same configuration."""
    from pathlib import Path

    from wavescore.models import load_model

    data = Path(__file__).parent / "data"
    x = digits[0][:300]
    fresh = {"local-r1-P1": ScoreMachine(family="local").fit(x, progress=False),
             "gated": GatedMachine(sigmas=(0.05, 0.5), select=False, batch_size=300).fit(x, progress=False)}
    y = digits[1][:8].double() + 0.2
    for stem, new in fresh.items():
        _, old = load_model(str(data / f"v1-{stem}.wsm"))
        assert type(old) is type(new) and old.get_params() == new.get_params()
        for s in (0.05, 0.3, 2.0):
            torch.testing.assert_close(old.denoise(y, s), new.denoise(y, s), rtol=1e-12, atol=1e-12)


def test_public_solver_state_for_benchmarks():
    # benchmarks read the normal equations and score with given parameters through public
    # methods (no private name crosses a layer): theta* solves G theta = -b (ridge 0).
    from wavescore import ScoreMachine, load_dataset

    x = load_dataset("digits", limit=400)
    m = ScoreMachine(family="independent", degree=3, ridge=0.0).fit(x, progress=False)
    thetas = m.parameters(0.3)
    for (G, b), theta in zip(m.noisy_system(0.3), thetas):
        resid = torch.einsum("rfg,rg->rf", G, theta) + b
        assert float(resid.abs().max()) < 1e-8 * float(b.abs().max())
    w = m.transform_.forward(x[:10].double())
    assert torch.equal(m.score_with(w, thetas), m.wavelet_score(w, 0.3))
    m.clear_cache()
    assert torch.allclose(m.parameters(0.3)[1], thetas[1], rtol=0, atol=0)


def test_mimicry_runner(tmp_path):
    """benchmarks/mimicry.py is a configuration list for experiments.run_mimicry: machines and ELS
    are candidates, the checkpoints the references; a network is never a best match; two
    configurations with one machine name are refused instead of one replacing the other."""
    import json

    import pytest

    from wavescore._io import WavescoreError
    from wavescore.datasets import load_dataset
    from wavescore.experiments import run_mimicry
    from wavescore.networks import train

    x = load_dataset("digits", "train")
    train("cnn", x[:64], epochs=1, out=tmp_path / "tinycnn.pt", arch_kwargs={"width": 8, "depth": 3}, progress=False)
    cfgs = [dict(family="gaussian"), dict(family="local-mixture", basis="pixel", components=4, radius=1),
            dict(family="scheduled-local-mixture", radii=(1, 2), components=4, holdout=64, calibrate_to="tinycnn")]
    els = [{"train_subset": 50}, {"train_subset": 50, "max_shift": 1, "calibrate_to": "tinycnn"}]
    res = run_mimicry(cfgs, "digits", tmp_path / "out", nets=[str(tmp_path / "tinycnn.pt")], els=els,
                      n_test=20, n_samples=8, steps=4, sigmas=(0.1, 1.0), calibration_images=4, progress=False)
    best = res["best_match"]["tinycnn"]
    calibrated = "scheduled-local-mixture-pixel-K4-r1-2 calibrated to tinycnn"
    assert best["candidates"] == ["gaussian-P1", "local-mixture-pixel-K4-r1", calibrated, "els",
                                  "els calibrated to tinycnn"]
    # the calibrated ELS row's schedule is the one calibrate_els_schedule picks on the held-out images
    from wavescore.baselines import calibrate_els_schedule
    from wavescore.networks import load_network

    sched = calibrate_els_schedule(x[:-4], load_network(tmp_path / "tinycnn.pt"), x[-4:], (0.1, 1.0),
                                   train_subset=50, max_shift=1)
    assert res["els_schedules"]["els calibrated to tinycnn"]["sizes"] == list(sched.sizes)
    assert res["els_schedules"]["els calibrated to tinycnn"]["reference"] == "tinycnn"
    r = res["samples"]["correlation"]["tinycnn"]
    assert best["by_samples"]["median_r"] == max(r[c]["median"] for c in best["candidates"])
    on_disk = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert on_disk["fit_seconds"].keys() == {"gaussian-P1", "local-mixture-pixel-K4-r1", calibrated, "els",
                                             "els calibrated to tinycnn"}
    assert on_disk["kinds"]["els calibrated to tinycnn"] == "els"
    # the joined (scheduled) row's weights: one radius per grid sigma (select), as its schedule says
    jw = on_disk["joined_weights"]
    assert list(jw) == [calibrated] and jw[calibrated]["parts"] == ["local-mixture-pixel-K4-r1",
                                                                    "local-mixture-pixel-K4-r2"]
    assert all(sorted(w) == [0.0, 1.0] for w in jw[calibrated]["mean_weight"])
    assert (tmp_path / "out" / "samples.png").stat().st_size > 0 and (tmp_path / "out" / "matrix.md").exists()
    assert not (tmp_path / "out" / ".partial").exists()  # kept only while the run is unfinished
    with pytest.raises(WavescoreError, match="calibrate_to='unet' names no reference"):
        run_mimicry([dict(cfgs[2], calibrate_to="unet")], "digits", tmp_path / "bad", nets=[str(tmp_path / "tinycnn.pt")],
                    n_test=20, n_samples=0, progress=False)
    with pytest.raises(WavescoreError, match="ELS calibrate_to='unet' names no reference"):
        run_mimicry(cfgs[:1], "digits", tmp_path / "bad2", nets=[str(tmp_path / "tinycnn.pt")],
                    els=[{"train_subset": 50, "calibrate_to": "unet"}], n_test=20, n_samples=0, progress=False)
    with pytest.raises(WavescoreError, match="two configurations make a machine named 'gaussian-P1'"):
        run_mimicry(cfgs[:1] * 2, "digits", tmp_path / "dup", nets=[str(tmp_path / "tinycnn.pt")], n_test=20,
                    n_samples=0, progress=False)


def test_a_killed_mimicry_run_resumes_from_its_partial_outputs(tmp_path, monkeypatch):
    """An interrupted run keeps each model's outputs and samples in out/.partial; the rerun reads
    them (no denoiser call, no sampling) and writes the same matrix."""
    import json

    import pytest

    import wavescore.compare as compare
    import wavescore.experiments as experiments
    from wavescore.datasets import load_dataset
    from wavescore.experiments import run_mimicry
    from wavescore.networks import train

    x = load_dataset("digits", "train")
    net = tmp_path / "tinycnn.pt"
    train("cnn", x[:64], epochs=1, out=net, arch_kwargs={"width": 8, "depth": 3}, progress=False)
    cfgs = [dict(family="gaussian"), dict(family="local-mixture", basis="pixel", components=4, radius=1),
            dict(family="scheduled-local-mixture", radii=(1, 2), components=4, holdout=64, calibrate_to="tinycnn")]
    kw = dict(nets=[str(net)], n_test=20, n_samples=8, steps=4, sigmas=(0.1, 1.0), progress=False)

    def killed(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(compare, "write_outputs", killed)
    with pytest.raises(KeyboardInterrupt):
        run_mimicry(cfgs, "digits", tmp_path / "out", **kw)
    # outputs, samples and fit record of each machine, outputs and samples of the network
    assert len(list((tmp_path / "out" / ".partial").glob("*.pt"))) == 3 * 3 + 2
    monkeypatch.undo()
    skipped = []
    real_fit = experiments.fit_models
    monkeypatch.setattr(experiments, "fit_models", lambda *a, skip=(), **k: skipped.append(set(skip)) or
                        real_fit(*a, skip=skip, **k))
    calls = []
    for name in ("_outputs", "sample"):
        mod = compare if name == "_outputs" else __import__("wavescore.samplers", fromlist=["sample"])
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k))
    resumed = run_mimicry(cfgs, "digits", tmp_path / "out", **kw)
    assert calls == [] and skipped == [set(resumed["fit_seconds"])]  # nothing fitted, computed or sampled
    monkeypatch.undo()
    fresh = run_mimicry(cfgs, "digits", tmp_path / "fresh", **kw)
    assert resumed["r2"] == fresh["r2"] and resumed["samples"]["correlation"] == fresh["samples"]["correlation"]
    assert resumed["joined_weights"] == fresh["joined_weights"] != {}
    assert json.loads((tmp_path / "out" / "compare.json").read_text())["r2"] == fresh["r2"]
    assert not (tmp_path / "out" / ".partial").exists()


def test_a_kept_partial_store_makes_one_more_row_cost_only_that_row(tmp_path, monkeypatch):
    """run_mimicry(keep_partial=True) keeps out/.partial; a rerun with one more configuration fits,
    denoises and samples only that one, and its matrix equals a fresh run's."""
    import wavescore.compare as compare
    import wavescore.experiments as experiments
    import wavescore.samplers as samplers
    from wavescore.datasets import load_dataset
    from wavescore.experiments import run_mimicry
    from wavescore.networks import train

    x = load_dataset("digits", "train")
    net = tmp_path / "tinycnn.pt"
    train("cnn", x[:64], epochs=1, out=net, arch_kwargs={"width": 8, "depth": 3}, progress=False)
    cfgs = [dict(family="gaussian"), dict(family="local-mixture", basis="pixel", components=4, radius=1)]
    extra = dict(family="local-mixture", basis="pixel", components=2, radius=1)
    kw = dict(nets=[str(net)], n_test=20, n_samples=8, steps=4, sigmas=(0.1, 1.0), progress=False)
    first = run_mimicry(cfgs, "digits", tmp_path / "out", keep_partial=True, **kw)
    assert (tmp_path / "out" / ".partial").is_dir()
    skipped, calls = [], []
    real_fit = experiments.fit_models
    monkeypatch.setattr(experiments, "fit_models", lambda *a, skip=(), **k: skipped.append(set(skip)) or
                        real_fit(*a, skip=skip, **k))
    for mod, name in ((compare, "_outputs"), (samplers, "sample")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _real=real, _n=name, **k: calls.append(_n) or _real(*a, **k))
    more = run_mimicry([*cfgs, extra], "digits", tmp_path / "out", **kw)
    assert skipped == [set(first["fit_seconds"])]  # the two first machines are not fitted again
    assert calls == ["_outputs", "_outputs", "sample"]  # the new row's train and test outputs, its samples
    assert not (tmp_path / "out" / ".partial").exists()  # this run did not ask to keep it
    monkeypatch.undo()
    fresh = run_mimicry([*cfgs, extra], "digits", tmp_path / "fresh", **kw)
    assert more["r2"] == fresh["r2"] and more["samples"]["correlation"] == fresh["samples"]["correlation"]
    assert set(more["r2"]["tinycnn"]) == {*first["r2"]["tinycnn"], "local-mixture-pixel-K2-r1"}


def test_mimicry_hands_each_network_path_to_its_best_machine_and_the_other_network(tmp_path, monkeypatch):
    """run_mimicry(handover=n): for each network, analysis.handover with its best-matching machine
    and with every other network, on the run's noise and steps (the machine alone is the matrix's
    r); kept in the partial store, so a rerun fits and samples nothing."""
    import json

    import pytest

    import wavescore.experiments as experiments
    from wavescore._io import WavescoreError
    from wavescore.datasets import load_dataset
    from wavescore.experiments import run_mimicry
    from wavescore.networks import train

    x = load_dataset("digits", "train")
    nets = []
    for seed in (0, 1):
        nets.append(str(tmp_path / f"cnn{seed}.pt"))
        train("cnn", x[:64], epochs=1, out=nets[-1], arch_kwargs={"width": 8, "depth": 3}, seed=seed,
              progress=False)
    cfgs = [dict(family="gaussian"), dict(family="local-mixture", basis="pixel", components=4, radius=1)]
    kw = dict(nets=nets, n_test=20, n_samples=8, steps=4, sigmas=(0.1, 1.0), progress=False, handover=8,
              keep_partial=True)
    res = run_mimicry(cfgs, "digits", tmp_path / "out", **kw)
    corr = res["samples"]["correlation"]
    best = {ref: res["best_match"][ref]["by_samples"]["model"] for ref in ("cnn0", "cnn1")}
    assert set(res["handover"]) == {f"{best['cnn0']} | cnn0", "cnn1 | cnn0", f"{best['cnn1']} | cnn1", "cnn0 | cnn1"}
    for pair, h in res["handover"].items():
        name, ref = pair.split(" | ")
        assert h["steps"] == 4 and h["n"] == 8
        assert abs(h["model_alone"]["median"] - corr[ref][name]["median"]) < 1e-12
    assert json.loads((tmp_path / "out" / "compare.json").read_text())["handover"].keys() == res["handover"].keys()
    assert (tmp_path / "out" / "handover.png").stat().st_size > 0
    fits = []
    real_fit = experiments.fit_models
    monkeypatch.setattr(experiments, "fit_models", lambda *a, skip=(), **k: fits.append(len(a[0]) - len(skip))
                        or real_fit(*a, skip=skip, **k))
    again = run_mimicry(cfgs, "digits", tmp_path / "out", **kw)
    assert fits == [0] and again["handover"] == res["handover"]
    one = run_mimicry(cfgs, "digits", tmp_path / "out", **dict(kw, handover_nets=["cnn1"]))
    assert set(one["handover"]) == {f"{best['cnn1']} | cnn1", "cnn0 | cnn1"}
    with pytest.raises(WavescoreError, match="handover"):
        run_mimicry(cfgs, "digits", tmp_path / "out", **dict(kw, handover=-1))
    with pytest.raises(WavescoreError, match="handover_nets names no network: unet"):
        run_mimicry(cfgs, "digits", tmp_path / "out", **dict(kw, handover_nets=["unet"]))
