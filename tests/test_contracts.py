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
