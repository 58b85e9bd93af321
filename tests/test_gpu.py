"""Every core operation on a CUDA device equals the CPU result (skipped without a GPU).

Fit (transform, accumulation), solve, score, denoise, save/load, the samplers and the
accumulation kernel, each on ``device="cuda"`` against the same call on the CPU.
"""
import pytest
import torch

from wavescore import ScoreMachine, WaveletTransform
from wavescore import _gram
from wavescore.samplers import sample

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _data(n=400, side=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, side, side, generator=g) * 2 - 1
    return (base + 0.5 * base.roll(1, dims=-1)).clamp(-1, 1)  # some neighbour dependence


def test_transform_on_cuda():
    t = WaveletTransform((1, 16, 16), wavelet="db2")
    x = _data(8)
    w = t.forward(x.cuda().double())
    assert w.is_cuda
    assert torch.allclose(w.cpu(), t.forward(x.double()), atol=1e-12)
    assert torch.allclose(t.inverse(w).cpu(), x.double(), atol=1e-12)


@pytest.mark.parametrize("cfg", [
    dict(family="local", degree=2),
    dict(family="local", degree=2, shared=True),
    dict(family="parent", degree=2, bands="all"),
    dict(family="independent", degree=3),
    dict(family="gaussian"),
])
def test_fit_solve_denoise_on_cuda_equal_cpu(cfg, tmp_path):
    x = _data()
    cpu = ScoreMachine(**cfg).fit(x, progress=False)
    gpu = ScoreMachine(**cfg, device="cuda").fit(x, progress=False)
    for a, b in zip(gpu.moments_.grams, cpu.moments_.grams):
        assert a.is_cuda
        assert torch.allclose(a.cpu(), b, rtol=1e-10, atol=1e-10)
    for ta, tb in zip(gpu.parameters(0.3), cpu.parameters(0.3)):
        assert ta.is_cuda
        assert torch.allclose(ta.cpu(), tb, rtol=1e-6, atol=1e-8)
    xs = x[:6] + 0.3 * torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    ref = cpu.denoise(xs, 0.3)
    out = gpu.denoise(xs.cuda(), 0.3)
    assert out.is_cuda and out.dtype == xs.dtype
    assert torch.allclose(out.cpu(), ref, atol=1e-5)
    assert gpu.denoise(xs, 0.3).device.type == "cpu"  # results come back on the input's device
    sig = torch.tensor([0.1, 0.3, 0.3, 1.0, 2.0, 0.05])
    assert torch.allclose(gpu.score(xs.cuda(), sig.cuda()).cpu(), cpu.score(xs, sig), rtol=1e-4, atol=1e-4)
    assert torch.allclose(gpu.denoise(xs.cuda(), sig).cpu(), cpu.denoise(xs, sig), atol=1e-5)
    path = gpu.save(tmp_path / "m.wsm")
    back = ScoreMachine.load(path).to("cuda")
    assert torch.allclose(back.denoise(xs.cuda(), 0.3).cpu(), ref, atol=1e-5)


def test_accumulation_kernel_on_cuda():
    x = _data(300, 32)
    for cfg in (dict(family="local", degree=2), dict(family="local", degree=2, shared=True), dict(family="gaussian")):
        m = ScoreMachine(**cfg)
        acc = m.new_accumulator(x)
        w = m.transform_.forward(x.double())
        ut = acc.standardise(w).T.contiguous()
        for g, f, gram in zip(acc.groups, acc.features, acc.grams):
            on_gpu = gram.cuda()
            _gram.accumulate_group(on_gpu, ut.cuda(), g.nbr, f)
            _gram.accumulate_group(gram, ut, g.nbr, f)
            assert torch.allclose(on_gpu.cpu(), gram, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("sampler", ["heun", "edm", "ddim"])
def test_samplers_on_cuda(sampler):
    x = _data()
    cpu = ScoreMachine(family="local", degree=1).fit(x, progress=False)
    gpu = ScoreMachine(family="local", degree=1, device="cuda").fit(x, progress=False)
    kw = {"eta": 0.5} if sampler == "ddim" else {}
    a = sample(gpu, 4, steps=6, sampler=sampler, seed=3, **kw)
    b = sample(cpu, 4, steps=6, sampler=sampler, seed=3, **kw)
    assert a.is_cuda and torch.isfinite(a).all()
    assert torch.allclose(a.cpu(), b, atol=1e-4)
