"""Analysis: exact error split, Shapley efficiency, interpretable pieces."""
import numpy as np
import pytest
import torch

from wavescore import ScoreMachine, WavescoreError, load_dataset
from wavescore.analysis import local_filters, shapley_groups, shrinkage_curves, subband_errors
from wavescore.evaluation import evaluate_denoisers


def test_subband_split_is_exact():
    train, test = load_dataset("digits"), load_dataset("digits", "test")
    m = ScoreMachine(family="local", degree=2).fit(train, progress=False)
    sig = [0.05, 0.5]
    res = subband_errors(m, test, sig, m.transform_)
    total = evaluate_denoisers({"m": m}, test, sig, progress=False)["models"]["m"]["mse"]
    assert np.allclose(np.sum(res["mse"], 1), total, rtol=1e-10)
    assert len(res["bands"]) == 1 + 3 * 3


def test_shapley_efficiency_and_sense():
    train, test = load_dataset("digits"), load_dataset("digits", "test")
    m = ScoreMachine(family="parent", degree=2, bands="all").fit(train, progress=False)
    sig = [0.1, 1.0]
    res = shapley_groups(m, test[:200], sig, progress=False)
    assert res["groups"] == ["orientation", "neighbour", "parent", "nonlinear"]
    # efficiency: the values add up to the full machine's improvement over own-linear
    gain = np.array(res["baseline_mse"]) - np.array(res["full_mse"])
    assert np.allclose(np.sum(list(res["shapley"].values()), 0), gain, rtol=1e-9, atol=1e-12)
    assert (gain > 0).all()
    assert len(res["coalitions"]) == 16


def test_shrinkage_and_filters():
    train = load_dataset("digits")
    ind = ScoreMachine(family="independent", degree=3).fit(train, progress=False)
    sh = shrinkage_curves(ind, [0.1, 5.0], points=11)
    for name, curves in sh["bands"].items():
        w, d = np.array(curves[1]["w"]), np.array(curves[1]["denoised"])
        # at high noise the optimal curve is nearly linear shrinkage (a3 -> 0, Gaussian limit)
        slope, icpt = np.polyfit(w, d, 1)
        assert 0 <= slope < 1, (name, slope)
        assert np.abs(d - (slope * w + icpt)).max() < 0.05 * (np.ptp(d) + 1e-3), name
    loc = ScoreMachine(family="local", degree=1, shared=True).fit(train, progress=False)
    f = local_filters(loc, [0.1, 1.0])
    img = np.array(f["bands"]["h1"][1])
    assert img.shape == (3, 3)
    # the own-coefficient weight is the largest negative score weight (shrinkage toward the mean)
    assert img[1, 1] == img.min() and img[1, 1] < 0


def test_schedule_picks_the_better_candidate_per_sigma():
    from wavescore.analysis import schedule

    train, test = load_dataset("digits"), load_dataset("digits", "test")
    cands = {"independent": ScoreMachine(family="independent").fit(train, progress=False),
             "gaussian": ScoreMachine(family="gaussian").fit(train, progress=False)}
    sig = [0.05, 0.5, 2.0]
    sched, res = schedule(cands, test[:150], sig)
    for k, s in enumerate(sig):
        best = min(cands, key=lambda n: res["scores"][n][k])
        assert res["choice"][k] == best
    # the scheduled machine's error is the per-sigma minimum of its candidates
    ev = evaluate_denoisers({"s": sched, **cands}, test[:150], sig, progress=False)["models"]
    for k in range(len(sig)):
        assert ev["s"]["mse"][k] == min(ev["independent"]["mse"][k], ev["gaussian"]["mse"][k])
    # agreement mode: scheduling against a reference equal to one candidate always picks it
    _, res2 = schedule(cands, test[:150], sig, reference=cands["independent"])
    assert res2["choice"] == ["independent"] * 3


def test_block_edges_closed_forms():
    """The identity on white noise has no preferred grid (ratio 1 in expectation); a denoiser
    constant on 4x4 blocks has no jump inside them (ratio inf); a grid that is not the model's
    (2x2 blocks for a 4x4 model) sees jumps inside its blocks too."""
    from wavescore.analysis import block_edges

    class Identity:
        def denoise(self, y, s):
            return y

    class Blocks:
        def __init__(self, b):
            self.b = b

        def denoise(self, y, s):
            pooled = torch.nn.functional.avg_pool2d(y, self.b)
            return pooled.repeat_interleave(self.b, -1).repeat_interleave(self.b, -2)

    x = torch.zeros(400, 1, 32, 32, dtype=torch.float64)
    res = block_edges(Identity(), x, (1.0, 3.0))
    assert all(abs(r - 1) < 0.02 for r in res["ratio"])
    assert len(res["columns"][0]) == 31
    assert block_edges(Blocks(4), x, (1.0,))["ratio"] == [float("inf")]
    assert block_edges(Blocks(4), x, (1.0,), block=2)["ratio"] == [float("inf")]  # nothing inside 2x2 either
    # a 2x2 model on the 4x4 grid: every 4x4 edge jumps; of the other 24 neighbour pairs in 31, the
    # 8 at 2x2 edges jump (alike in law), so the ratio is 24 / 8 = 3 in expectation
    assert abs(block_edges(Blocks(2), x, (1.0,), block=4)["ratio"][0] - 3) < 0.1
    with pytest.raises(WavescoreError, match="block must"):
        block_edges(Identity(), x, (1.0,), block=5)


class _DiagonalGaussian:
    """The exact denoiser of N(0, diag(v)): v / (v + s^2) y per pixel; ``low`` below ``switch``."""

    def __init__(self, v, low=None, switch=0.0):
        self.v, self.low, self.switch, self.shape_ = v, low, switch, tuple(v.shape)

    def denoise(self, y, s):
        v = self.low if self.low is not None and s < self.switch else self.v
        return v / (v + s**2) * y


def test_handover_is_exact_where_the_two_models_agree():
    from wavescore.analysis import handover
    from wavescore.compare import sample_correlations
    from wavescore.samplers import sample

    gen = torch.Generator().manual_seed(0)
    v = torch.rand(1, 8, 8, generator=gen, dtype=torch.float64) * 2 + 0.1
    w = torch.rand(1, 8, 8, generator=gen, dtype=torch.float64) * 2 + 0.1
    model = _DiagonalGaussian(v)
    ref = _DiagonalGaussian(v, low=w, switch=1.0)  # the same model above sigma 1, another below
    res = handover(model, ref, at=(20.0, 5.0, 1.5, 0.5, 0.1), n=64, steps=18, progress=False)
    sig = np.asarray(res["sigmas"])
    assert np.all(np.diff(sig) < 0) and len(sig) == 5
    # the model alone is compare_models' protocol: the same noise, Heun, 18 steps
    own = sample_correlations(sample(model, 64, steps=18, seed=0), sample(ref, 64, steps=18, seed=0))
    assert abs(res["model_alone"]["median"] - float(np.median(own.numpy()))) < 1e-12
    assert res["model_alone"]["median"] < 0.99  # the two really differ below sigma 1
    # above sigma 1 the two models are one: the model's path there is the reference's, so handing
    # it to the reference reproduces the reference's samples exactly; below, it does not
    m_then_r = np.asarray([x["median"] for x in res["model_then_reference"]])
    exact = sig >= 1.0
    assert np.allclose(m_then_r[exact], 1.0, atol=1e-12) and (m_then_r[~exact] < 1 - 1e-6).all()
    # the reference's path handed to the model: below sigma 1 the model differs, so r < 1 at every
    # hand-over sigma, and it rises as less is left to the model
    r_then_m = np.asarray([x["median"] for x in res["reference_then_model"]])
    assert (r_then_m < 1 - 1e-6).all() and r_then_m[-1] > r_then_m[0]
    # the same model on both sides: r = 1 everywhere
    same = handover(model, model, at=(5.0, 0.5), n=16, progress=False)
    assert all(abs(x["median"] - 1) < 1e-12 for k in ("reference_then_model", "model_then_reference")
               for x in same[k])


def test_handover_refuses_what_it_cannot_do():
    from wavescore.analysis import handover

    model = _DiagonalGaussian(torch.ones(1, 4, 4, dtype=torch.float64))
    with pytest.raises(WavescoreError, match="sigma_max"):
        handover(model, model, at=(80.0, 1000.0), n=4, progress=False)
    with pytest.raises(WavescoreError, match="positive"):
        handover(model, model, at=(0.0,), n=4, progress=False)
    with pytest.raises(WavescoreError, match="shape"):
        handover(object(), object(), n=4, progress=False)
