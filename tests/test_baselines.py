"""Empirical and ELS denoisers against brute-force formulas (method.md §6; Kamb & Ganguli 2025)."""
import pytest
import torch

from wavescore import WavescoreError, load_dataset
from wavescore.baselines import (ELSDenoiser, EmpiricalDenoiser, PatchSchedule, calibrate_els_schedule,
                                 mnist_patch_schedule)


@pytest.fixture(scope="module")
def digits():
    x = load_dataset("digits", limit=60)
    return x[:50], x[50:]


def _brute_empirical(train, x, sigma):
    """Full softmax in float64: D = sum_n x_n softmax_n(-||x - x_n||^2 / (2 s^2))."""
    t = train.reshape(len(train), -1).double()
    q = x.reshape(len(x), -1).double()
    d2 = ((q[:, None, :] - t[None]) ** 2).sum(-1)
    s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
    w = torch.softmax(-d2 / (2 * s**2), dim=1)
    return (w @ t).reshape(x.shape)


def _brute_els(train, x, sigma, p, wrap="periodic", pad_value=-1.0, max_shift=None):
    """Every patch at every position by explicit rolls/pads, full softmax per output pixel;
    with max_shift = k only training patches centred within k pixels per axis (cyclic distance
    when periodic) of the output pixel (k = 0: the local score machine, position by position)."""
    r = p // 2
    n, c, h, w = train.shape

    def patches(img):  # (C,H,W) -> (H, W, C*P*P)
        if wrap == "periodic":
            out = torch.empty(h, w, c, p, p, dtype=torch.float64)
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    out[:, :, :, dy + r, dx + r] = torch.roll(img, (-dy, -dx), (1, 2)).permute(1, 2, 0)
        else:
            padded = torch.nn.functional.pad(img, (r, r, r, r), value=pad_value)
            out = torch.stack([torch.stack([padded[:, i : i + p, j : j + p] for j in range(w)]) for i in range(h)])
        return out.reshape(h, w, -1)

    keys = torch.cat([patches(t.double()).reshape(h * w, -1) for t in train])
    centre = keys.reshape(-1, c, p, p)[:, :, r, r]
    res = torch.empty(x.shape, dtype=torch.float64)
    for i, img in enumerate(x.double()):
        q = patches(img).reshape(h * w, -1)
        logits = -((q[:, None] - keys[None]) ** 2).sum(-1) / (2 * sigma**2)
        if max_shift is not None:
            yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            dy = (yy.reshape(-1, 1) - yy.reshape(1, -1)).abs()
            dx = (xx.reshape(-1, 1) - xx.reshape(1, -1)).abs()
            if wrap == "periodic":
                dy, dx = torch.minimum(dy, h - dy), torch.minimum(dx, w - dx)
            far = ((dy > max_shift) | (dx > max_shift)).repeat(1, n)  # keys are ordered (n, y, x)
            logits = logits.masked_fill(far, -torch.inf)
        res[i] = (torch.softmax(logits, dim=1) @ centre).T.reshape(c, h, w)
    return res


# ---------------------------------------------------------------------------------- empirical
@pytest.mark.parametrize("sigma", [0.1, 0.5, 2.0])
def test_empirical_matches_brute_force(digits, sigma):
    train, test = digits
    noisy = test + sigma * torch.randn(test.shape, generator=torch.Generator().manual_seed(1))
    ours = EmpiricalDenoiser(train).denoise(noisy.double(), sigma)
    assert torch.allclose(ours, _brute_empirical(train, noisy, sigma), atol=1e-10, rtol=0)


def test_empirical_per_image_sigma_and_chunk_invariance(digits):
    train, test = digits
    sig = torch.linspace(0.05, 3.0, len(test))
    x = test.double() + sig.reshape(-1, 1, 1, 1) * torch.randn(test.shape, generator=torch.Generator().manual_seed(2))
    outs = [EmpiricalDenoiser(train, chunk_size=cs, batch_size=bs).denoise(x, sig)
            for cs, bs in [(1, 3), (7, 500), (4096, 1)]]
    assert torch.allclose(outs[0], _brute_empirical(train, x, sig), atol=1e-10, rtol=0)
    for o in outs[1:]:
        assert torch.allclose(o, outs[0], atol=1e-12, rtol=0)


def test_empirical_float32_matches_float64_at_low_sigma(digits):
    """At sigma = 0.01 the posterior is one-hot on the nearest training image in both precisions
    (the gap between nearest and second-nearest squared distances dwarfs float32 rounding)."""
    train, test = digits
    x = test + 0.01 * torch.randn(test.shape, generator=torch.Generator().manual_seed(3))
    d64 = EmpiricalDenoiser(train).denoise(x.double(), 0.01)
    d32 = EmpiricalDenoiser(train, dtype=torch.float32).denoise(x, 0.01)
    assert d32.dtype == torch.float32
    assert (d32.double() - d64).abs().max() < 1e-5


def test_empirical_memorises_and_averages(digits):
    train, _ = digits
    den = EmpiricalDenoiser(train)
    assert torch.allclose(den.denoise(train, 1e-3), train, atol=1e-6)
    mean = train.double().mean(0, keepdim=True).expand(5, -1, -1, -1)
    assert torch.allclose(den.denoise(train[:5].double(), 1e6), mean, atol=1e-9)


def test_nearest(digits):
    train, test = digits
    den = EmpiricalDenoiser(train, chunk_size=7, batch_size=4)
    idx, dist = den.nearest(test, k=3)
    full = torch.cdist(test.reshape(len(test), -1).double(), train.reshape(len(train), -1).double())
    ref = torch.sort(full, dim=1)
    assert torch.equal(idx, ref.indices[:, :3])
    assert torch.allclose(dist, ref.values[:, :3], atol=1e-10)
    i0, d0 = den.nearest(train[:4])
    assert torch.equal(i0[:, 0], torch.arange(4)) and torch.all(d0 == 0)


def test_empirical_errors(digits):
    train, test = digits
    den = EmpiricalDenoiser(train)
    with pytest.raises(WavescoreError, match="sigma"):
        den.denoise(test, 0.0)
    with pytest.raises(WavescoreError, match="one value per image"):
        den.denoise(test, torch.ones(3))
    with pytest.raises(WavescoreError, match="shape"):
        den.denoise(test[:, :, :4], 0.1)
    with pytest.raises(WavescoreError, match="channel axis"):
        EmpiricalDenoiser(train[:, 0])


# ---------------------------------------------------------------------------------- ELS
@pytest.fixture(scope="module")
def tiny():
    g = torch.Generator().manual_seed(0)
    return torch.rand(5, 2, 6, 6, generator=g) * 2 - 1, torch.rand(2, 2, 6, 6, generator=g) * 2 - 1


@pytest.mark.parametrize("wrap", ["periodic", "pad"])
@pytest.mark.parametrize("sigma", [0.2, 1.0])
def test_els_matches_brute_force(tiny, wrap, sigma):
    train, test = tiny
    ours = ELSDenoiser(train, patch_size=3, wrap=wrap).denoise(test.double(), sigma)
    assert torch.allclose(ours, _brute_els(train, test, sigma, 3, wrap), atol=1e-10, rtol=0)


def test_els_chunk_invariance(tiny):
    train, test = tiny
    outs = [ELSDenoiser(train, patch_size=5, chunk_size=cs, batch_size=bs).denoise(test.double(), 0.5)
            for cs, bs in [(1, 1), (7, 2), (100000, None)]]
    for o in outs[1:]:
        assert torch.allclose(o, outs[0], atol=1e-12, rtol=0)


def test_els_whole_image_periodic_is_empirical_over_cyclic_shifts():
    """With a periodic patch covering the whole (odd-sized) image, the patch at p is the image
    rolled to centre p, and the training patches are all rolls of all training images, so
    D_ELS(x)[p] = sum_{n, shift} roll(x_n, shift)[p] softmax(-||x - roll(x_n, shift)||^2 / 2s^2):
    exactly the empirical denoiser of the training set augmented with every cyclic shift."""
    g = torch.Generator().manual_seed(4)
    train = torch.rand(4, 1, 5, 5, generator=g, dtype=torch.float64) * 2 - 1
    x = torch.rand(3, 1, 5, 5, generator=g, dtype=torch.float64) * 2 - 1
    shifted = torch.cat([torch.roll(train, (i, j), (2, 3)) for i in range(5) for j in range(5)])
    for sigma in (0.05, 0.7, 5.0):
        els = ELSDenoiser(train, patch_size=5).denoise(x, sigma)
        emp = EmpiricalDenoiser(shifted).denoise(x, sigma)
        assert torch.allclose(els, emp, atol=1e-10, rtol=0)


def test_els_callable_schedule_is_used(tiny):
    train, test = tiny
    calls = []

    def schedule(s):
        calls.append(s)
        return 1 if s < 0.5 else 3

    sig = torch.tensor([0.1, 1.0], dtype=torch.float64)
    els = ELSDenoiser(train, patch_size=schedule).denoise(test.double(), sig)
    assert sorted(set(calls)) == [0.1, 1.0]
    assert torch.allclose(els[0], ELSDenoiser(train, patch_size=1).denoise(test[:1].double(), 0.1)[0], atol=1e-12)
    assert torch.allclose(els[1], ELSDenoiser(train, patch_size=3).denoise(test[1:].double(), 1.0)[0], atol=1e-12)


def test_default_schedule_and_clamping(tiny):
    sizes = [mnist_patch_schedule(s) for s in (0.002, 0.05, 0.3, 1.0, 2.0, 80.0)]
    assert sizes[0] == 3 and sizes[-1] == 27 and sizes == sorted(sizes) and all(s % 2 for s in sizes)
    train, _ = tiny
    assert ELSDenoiser(train).patch_size_for(80.0) == 5           # periodic on 6x6: largest odd <= 6
    assert ELSDenoiser(train, wrap="pad").patch_size_for(80.0) == 11
    with pytest.raises(WavescoreError, match="odd"):
        ELSDenoiser(train, patch_size=4)
    with pytest.raises(WavescoreError, match="odd"):
        ELSDenoiser(train, patch_size=lambda s: 2).denoise(train, 0.1)
    with pytest.raises(WavescoreError, match="wrap"):
        ELSDenoiser(train, wrap="reflect")


# ---------------------------------------------------------------------------------- ELS box path
def _rand_images(n, c, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g, dtype=torch.float64) * 2 - 1


@pytest.mark.parametrize("wrap", ["periodic", "pad"])
@pytest.mark.parametrize("patch", [1, 3, 5, 99])  # 99: clamped (periodic 7 / 5, pad 15 / 13)
@pytest.mark.parametrize("shape", [(1, 8, 8), (2, 6, 7)])
def test_els_box_matches_unfold_and_brute_force(wrap, patch, shape):
    train, x = _rand_images(16, *shape, seed=5), _rand_images(2, *shape, seed=6)
    box = ELSDenoiser(train, patch_size=patch, wrap=wrap, method="box")
    unfold = ELSDenoiser(train, patch_size=patch, wrap=wrap, method="unfold")
    for sigma in (0.05, 0.5, 5.0):
        ref = _brute_els(train, x, sigma, box.patch_size_for(sigma), wrap)
        ours = box.denoise(x, sigma)
        assert torch.allclose(ours, ref, atol=1e-10, rtol=0)
        assert torch.allclose(ours, unfold.denoise(x, sigma), atol=1e-10, rtol=0)


@pytest.mark.parametrize("wrap", ["periodic", "pad"])
def test_els_box_schedule_and_per_image_sigma(wrap):
    """A callable schedule (several patch sizes in one call) and one sigma per image take the
    box path exactly as the unfold path."""
    train, x = _rand_images(15, 2, 8, 8, seed=7), _rand_images(5, 2, 8, 8, seed=8)

    def schedule(s):
        return 1 if s < 0.1 else 3 if s < 0.4 else 5 if s < 1.0 else 99

    sig = torch.tensor([0.05, 0.2, 0.3, 0.8, 3.0], dtype=torch.float64)
    box = ELSDenoiser(train, patch_size=schedule, wrap=wrap, method="box").denoise(x, sig)
    unfold = ELSDenoiser(train, patch_size=schedule, wrap=wrap, method="unfold").denoise(x, sig)
    assert torch.allclose(box, unfold, atol=1e-10, rtol=0)
    one = ELSDenoiser(train, patch_size=3, wrap=wrap, method="box").denoise(x[1:2], 0.2)
    assert torch.allclose(box[1:2], one, atol=1e-12, rtol=0)


@pytest.mark.parametrize("wrap", ["periodic", "pad"])
def test_els_box_chunk_and_batch_invariance(wrap):
    """Blocks that split the displacements within a row (chunk 7 on 8 columns), across rows
    (chunk 50), or several training images per block with a short last one (11 images),
    and any test batch, give the same output."""
    train, x = _rand_images(11, 1, 8, 8, seed=9), _rand_images(3, 1, 8, 8, seed=10)
    outs = [ELSDenoiser(train, patch_size=5, wrap=wrap, method="box", chunk_size=cs, batch_size=bs).denoise(x, 0.3)
            for cs, bs in [(100000, None), (1, 1), (7, 2), (50, 3)]]
    for o in outs[1:]:
        assert torch.allclose(o, outs[0], atol=1e-12, rtol=0)


def test_els_box_float32():
    train, x = _rand_images(10, 1, 8, 8, seed=11), _rand_images(2, 1, 8, 8, seed=12)
    d64 = ELSDenoiser(train, patch_size=5, method="box").denoise(x, 0.5)
    d32 = ELSDenoiser(train.float(), patch_size=5, method="box", dtype=torch.float32).denoise(x.float(), 0.5)
    assert d32.dtype == torch.float32
    assert (d32.double() - d64).abs().max() < 1e-4


@pytest.mark.parametrize("wrap", ["periodic", "pad"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (2, 6, 7)])
def test_els_max_shift_matches_brute_force(wrap, shape):
    """max_shift = k keeps the training patches centred within k pixels (per axis) of each
    output pixel: k = 0 is the local score machine, position by position; blocks that split
    the displacements (chunk_size 5, 3 images per block) change nothing."""
    train, x = _rand_images(9, *shape, seed=21), _rand_images(2, *shape, seed=22)
    for k in (0, 1, 2):
        for patch, sigma in ((3, 0.3), (5, 0.8), (1, 0.5)):
            ref = _brute_els(train, x, sigma, patch, wrap, max_shift=k)
            for cs in (8192, 5, 100):
                ours = ELSDenoiser(train, patch_size=patch, wrap=wrap, max_shift=k, chunk_size=cs).denoise(x, sigma)
                assert torch.allclose(ours, ref, atol=1e-10, rtol=0), (k, patch, cs)


@pytest.mark.parametrize("wrap", ["periodic", "pad"])
def test_els_max_shift_large_is_els(wrap):
    """A max_shift that reaches every position is ELS exactly (periodic: 2k + 1 >= the side;
    pad: k >= side - 1), and max_shift=None (default) is the unrestricted machine."""
    train, x = _rand_images(10, 1, 8, 7, seed=23), _rand_images(2, 1, 8, 7, seed=24)
    for patch in (3, 5):
        els = ELSDenoiser(train, patch_size=patch, wrap=wrap, method="box").denoise(x, 0.4)
        assert torch.allclose(els, _brute_els(train, x, 0.4, patch, wrap), atol=1e-10, rtol=0)
        for k in ((4, 7, 20) if wrap == "periodic" else (7, 20)):
            far = ELSDenoiser(train, patch_size=patch, wrap=wrap, max_shift=k).denoise(x, 0.4)
            assert torch.allclose(far, els, atol=1e-12, rtol=0), k
        # A shift that misses positions differs.
        near = ELSDenoiser(train, patch_size=patch, wrap=wrap, max_shift=2)
        assert not torch.allclose(near.denoise(x, 0.4), els, atol=1e-6, rtol=0)


def test_els_nearest_images():
    """nearest_images = M: each test image against its own M training images nearest in
    whole-image distance, on both paths; M >= the training set is plain ELS."""
    train, x = _rand_images(12, 1, 8, 8, seed=25), _rand_images(3, 1, 8, 8, seed=26)
    d2 = ((x[:, None] - train[None]) ** 2).flatten(2).sum(-1)
    for method in ("box", "unfold"):
        ours = ELSDenoiser(train, patch_size=3, nearest_images=4, method=method).denoise(x, 0.3)
        for i in range(len(x)):
            idx = torch.sort(torch.topk(d2[i], 4, largest=False).indices).values
            ref = _brute_els(train[idx], x[i : i + 1], 0.3, 3)
            assert torch.allclose(ours[i : i + 1], ref, atol=1e-10, rtol=0)
    both = ELSDenoiser(train, patch_size=3, nearest_images=4, max_shift=1).denoise(x, 0.3)
    idx = torch.sort(torch.topk(d2[0], 4, largest=False).indices).values
    assert torch.allclose(both[:1], _brute_els(train[idx], x[:1], 0.3, 3, max_shift=1), atol=1e-10, rtol=0)
    full = ELSDenoiser(train, patch_size=3).denoise(x, 0.3)
    assert torch.allclose(ELSDenoiser(train, patch_size=3, nearest_images=12).denoise(x, 0.3), full, atol=1e-12)


def test_els_option_errors():
    train = _rand_images(4, 1, 6, 6, seed=27)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(WavescoreError, match="max_shift"):
            ELSDenoiser(train, max_shift=bad)
    with pytest.raises(WavescoreError, match="method='box'"):
        ELSDenoiser(train, max_shift=1, method="unfold")
    with pytest.raises(WavescoreError):
        ELSDenoiser(train, nearest_images=0)


def test_els_method_and_train_subset():
    train, x = _rand_images(12, 1, 6, 6, seed=13), _rand_images(2, 1, 6, 6, seed=14)
    assert ELSDenoiser(train, method="auto")._use_box(ELSDenoiser.BOX_MIN_PATCH)
    assert not ELSDenoiser(train, method="unfold")._use_box(27)
    with pytest.raises(WavescoreError, match="method"):
        ELSDenoiser(train, method="fft")
    sub = ELSDenoiser(train, patch_size=3, train_subset=5, seed=3)
    idx = sub.train_index_
    assert idx.numel() == 5 and torch.equal(idx, torch.sort(idx).values)
    assert torch.equal(idx, ELSDenoiser(train, train_subset=5, seed=3).train_index_)
    assert not torch.equal(idx, ELSDenoiser(train, train_subset=5, seed=4).train_index_)
    assert torch.allclose(sub.denoise(x, 0.4), ELSDenoiser(train[idx], patch_size=3).denoise(x, 0.4), atol=1e-12, rtol=0)
    assert ELSDenoiser(train, train_subset=100).n_train_ == 12
    with pytest.raises(WavescoreError, match="positive whole number"):
        ELSDenoiser(train, train_subset=0)


# ---------------------------------------------------------------------------------- calibrated schedule
def test_calibrate_els_schedule_recovers_a_fixed_size_and_round_trips(digits):
    import json
    import pickle

    train, test = digits
    train, x = train.double(), test[:2].double()
    ref = ELSDenoiser(train, patch_size=5)
    sigmas = (0.1, 1.0, 3.0)
    sched = calibrate_els_schedule(train, ref, x, sigmas, sizes=(3, 5, 7, 9))
    assert sched.sizes == (5, 5, 5) and sched.sigmas == sigmas and sched.reference == "ELSDenoiser"
    assert sched.candidates == (3, 5, 7)  # 9 clamps to 7 on 8x8 periodic images: tried once
    assert all(row[1] == 0.0 for row in sched.mse)  # the reference's own size reproduces it exactly
    again = PatchSchedule.from_dict(json.loads(json.dumps(sched.to_dict())))
    assert again == sched and pickle.loads(pickle.dumps(sched)) == sched
    y = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    assert torch.equal(ELSDenoiser(train, patch_size=again).denoise(y, 0.3), ref.denoise(y, 0.3))


def test_calibrate_els_schedule_follows_a_growing_reference(digits):
    train, test = digits
    train, x = train.double(), test[:2].double()
    ref = ELSDenoiser(train, patch_size=PatchSchedule([0.1, 1.0], [3, 7]))
    assert calibrate_els_schedule(train, ref, x, (0.1, 1.0), sizes=(3, 5, 7)).sizes == (3, 7)


def test_patch_schedule_is_nearest_in_log_sigma():
    sched = PatchSchedule([0.1, 1.0], [3, 7])
    # the log-midpoint of 0.1 and 1 is sqrt(0.1) = 0.316; outside the grid the nearest end's size
    assert [sched(s) for s in (1e-4, 0.1, 0.3, 0.32, 1.0, 100.0)] == [3, 3, 3, 7, 7, 7]
    assert "0.1: 3" in repr(sched)


def test_calibration_bad_input_is_one_line(digits):
    train, test = digits
    ref = ELSDenoiser(train, patch_size=5)
    for sizes in ((4, 6), (), (3, 5.0)):
        with pytest.raises(WavescoreError, match="odd positive whole"):
            calibrate_els_schedule(train, ref, test[:2], (0.5,), sizes=sizes)
    with pytest.raises(WavescoreError, match="denoise"):
        calibrate_els_schedule(train, object(), test[:2], (0.5,))
    with pytest.raises(WavescoreError, match="increasing"):
        calibrate_els_schedule(train, ref, test[:2], (0.5, 0.1))
    with pytest.raises(WavescoreError, match="one size per grid sigma"):
        PatchSchedule([0.1, 1.0], [3])
    with pytest.raises(WavescoreError, match="sigmas"):
        PatchSchedule.from_dict({"sizes": [3]})
