"""Gate x monomial noise expectations (method.md §10) against brute-force Gauss-Hermite
quadrature over every variable at once (no factorisation assumed), and their limits."""
import numpy as np
import pytest
import torch

from wavescore.gate_moments import gate_monomial_moments, gaussian_raw_moments, tilted_moments
from wavescore.gates import _log_e0


def _quadrature(x, s, exps, k_own, k_nbr, support, nodes=60):
    t, w = np.polynomial.hermite.hermgauss(nodes)
    z, wz = np.sqrt(2) * t, w / np.sqrt(np.pi)  # E[g(z)], z ~ N(0, 1)
    m = x.shape[1]
    grids = np.meshgrid(*([z] * m), indexing="ij")
    weight = np.prod(np.meshgrid(*([wz] * m), indexing="ij"), axis=0)
    out = np.zeros((x.shape[0], exps.shape[0]))
    for r in range(x.shape[0]):
        y = [x[r, l] + s * grids[l] for l in range(m)]
        energy = k_own * y[0] ** 2 + sum(k_nbr * y[l] ** 2 for l in range(1, m) if support[l])
        gate = y[0] * np.exp(-0.5 * energy)
        for q, e in enumerate(exps):
            out[r, q] = np.sum(weight * gate * np.prod([y[l] ** e[l] for l in range(m)], axis=0))
    return out


@pytest.mark.parametrize("s,c_own,c_nbr", [(0.05, 1.0, 2.0), (0.5, 2.0, 1.0), (2.0, 4.0, 1.0), (0.3, 1.0, None)])
def test_gate_times_monomials_equal_quadrature(s, c_own, c_nbr):
    rng = np.random.default_rng(0)
    x = rng.normal(scale=[0.4, 0.2, 0.1], size=(4, 3))
    x[0, 0] = 0.0  # the point mass (a background coefficient)
    exps = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [0, 1, 0], [1, 1, 0], [0, 2, 1], [1, 0, 2], [0, 1, 1]])
    k_own = 1.0 / (c_own * s) ** 2
    k_nbr = 0.0 if c_nbr is None else 1.0 / (3 * (c_nbr * s) ** 2)
    support = np.array([True, True, False])  # the third variable is a monomial's, outside the gate
    got = gate_monomial_moments(torch.from_numpy(x), s, exps, k_own, k_nbr, support).numpy()
    want = _quadrature(x, s, exps, k_own, k_nbr, support)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())


def test_limits():
    x = torch.tensor([[-0.7], [0.0], [1.3]], dtype=torch.float64)
    # no gate: the plain noisy moments of method.md §5
    plain = tilted_moments(x, 0.5, torch.zeros(()), 4)[:, 0]
    xs = x[:, 0]
    torch.testing.assert_close(plain, torch.stack([torch.ones_like(xs), xs, xs**2 + 0.25, xs**3 + 0.75 * xs,
                                                   xs**4 + 1.5 * xs**2 + 3 * 0.0625], dim=1))
    # the gate's openness (order 0) is the gated machine's closed form
    k = torch.tensor(3.0, dtype=torch.float64)
    torch.testing.assert_close(tilted_moments(x, 0.5, k, 0)[:, 0, 0], torch.exp(_log_e0(xs**2, k, 0.25)))
    # raw moments of N(mu, v)
    mu, v = torch.tensor([0.3]), torch.tensor([2.0])
    assert torch.allclose(gaussian_raw_moments(mu, v, 5)[0],
                          torch.tensor([1, 0.3, 2.09, 0.027 + 1.8, 0.0081 + 6 * 0.09 * 2 + 12, 0.3**5 + 10 * 0.027 * 2 + 15 * 0.3 * 4]))
