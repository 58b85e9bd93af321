"""The wavelet transform against PyWavelets, and its orthonormality."""
import warnings

import numpy as np
import pytest
import pywt
import torch

from wavescore import WaveletTransform, WavescoreError
from wavescore.transform import max_levels

WAVELETS = ["haar", "db2", "db4", "sym4"]
SIZES = [8, 32, 64]


def _pywt_flat(img: np.ndarray, wavelet: str, levels: int) -> np.ndarray:
    """pywt.wavedec2 per channel, arranged in our flat layout (bands coarse to fine, C inside)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pywt warns when a level is shorter than the filter
        per_channel = [pywt.wavedec2(ch, wavelet, mode="periodization", level=levels) for ch in img]
    parts = [np.stack([c[0] for c in per_channel]).ravel()]
    for lev in range(1, levels + 1):
        for o in range(3):
            parts.append(np.stack([c[lev][o] for c in per_channel]).ravel())
    return np.concatenate(parts)


@pytest.mark.parametrize("wavelet", WAVELETS)
@pytest.mark.parametrize("size", SIZES)
def test_matches_pywt_every_level(wavelet, size):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, size, size))
    for levels in range(1, max_levels(size, size) + 1):
        t = WaveletTransform((2, size, size), wavelet, levels)
        ours = t.forward(torch.from_numpy(x)).numpy()
        for n in range(2):
            ref = _pywt_flat(x[n], wavelet, levels)
            # 1e-11: pywt's published sym4 taps are orthogonal only to ~5e-13 per level,
            # ours are snapped to exact orthogonality, so the two differ by that much.
            np.testing.assert_allclose(ours[n], ref, rtol=0, atol=1e-11)


def test_rectangular_matches_pywt():
    x = np.random.default_rng(1).standard_normal((1, 1, 16, 32))
    t = WaveletTransform((1, 16, 32), "db2", 3)
    np.testing.assert_allclose(t.forward(torch.from_numpy(x)).numpy()[0], _pywt_flat(x[0], "db2", 3), atol=1e-12)


@pytest.mark.parametrize("wavelet", WAVELETS)
def test_inverse_and_parseval_float64(wavelet):
    x = torch.randn(5, 3, 32, 32, dtype=torch.float64)
    t = WaveletTransform((3, 32, 32), wavelet)
    w = t.forward(x)
    assert torch.allclose(t.inverse(w), x, rtol=0, atol=1e-12)
    rel = (w.norm(dim=1) / x.flatten(1).norm(dim=1) - 1).abs().max().item()
    assert rel < 1e-12


def test_matrix_is_orthogonal():
    t = WaveletTransform((1, 8, 8), "db4")
    m = t.matrix
    assert torch.allclose(m @ m.T, torch.eye(64, dtype=torch.float64), atol=1e-12)


def test_float32_and_autograd():
    t = WaveletTransform((1, 16, 16), "db2")
    x = torch.randn(3, 1, 16, 16, requires_grad=True)
    w = t.forward(x)
    assert w.dtype == torch.float32
    assert torch.allclose(t.inverse(w), x, atol=1e-5)
    # d/dx of <v, Wx> is W^T v: the gradient is the inverse transform of v.
    v = torch.randn_like(w)
    (w * v).sum().backward()
    assert torch.allclose(x.grad, t.inverse(v), atol=1e-5)


def test_default_levels_and_errors():
    assert WaveletTransform((1, 32, 32)).levels == 5
    assert WaveletTransform((1, 28, 28)).levels == 2
    with pytest.raises(WavescoreError, match="cannot take 3 orthonormal levels"):
        WaveletTransform((1, 28, 28), levels=3)
    with pytest.raises(WavescoreError, match="not orthogonal"):
        WaveletTransform((1, 8, 8), "bior2.2")
    with pytest.raises(WavescoreError, match="unknown wavelet"):
        WaveletTransform((1, 8, 8), "nope")
    t = WaveletTransform((1, 8, 8))
    with pytest.raises(WavescoreError, match=r"shape \(N, 1, 8, 8\)"):
        t.forward(torch.zeros(2, 1, 8, 9))
    with pytest.raises(WavescoreError, match="coefficients"):
        t.inverse(torch.zeros(2, 63))


def test_layout():
    t = WaveletTransform((2, 8, 8), "haar", 2)
    lay = t.layout
    assert lay.size == 128 and len(lay.bands) == 7
    # every flat index maps to a (channel, level, orient, row, col) and back
    from wavescore.transform import ORIENTATIONS

    for i in range(lay.size):
        j = lay.index(lay.channel[i], int(lay.level[i]), ORIENTATIONS[lay.orient[i]], lay.row[i], lay.col[i])
        assert j == i
    # bands really are where forward puts them: a delta in band (1, 'd'), channel 1, (2, 3)
    i = int(lay.index(1, 1, "d", 2, 3))
    img = t.inverse(torch.nn.functional.one_hot(torch.tensor([i]), 128).double())
    assert torch.allclose(t.forward(img)[0, i], torch.tensor(1.0, dtype=torch.float64))
    b = lay.band(1, "d")
    assert b.h == 4 and b.channel_slice(1).start <= i < b.channel_slice(1).stop
    # neighbourhood queries
    assert len(lay.neighbours(i, 1)) == 9 and lay.neighbours(i, 1)[0] == i
    assert len(lay.neighbours(int(lay.index(0, 2, "h", 0, 0)), 1)) == 4  # 2x2 band: the window wraps
    assert set(lay.orientation_partners(i)) == {int(lay.index(1, 1, o, 2, 3)) for o in "hvd"}
    p = lay.parent(i)
    assert (lay.level[p], lay.row[p], lay.col[p]) == (2, 1, 1)
    assert i in set(lay.children(p))
    assert lay.orient[lay.parent(p)] == 0  # coarsest details are covered by the approximation
