"""Exact noise expectations of a shrinkage gate times a monomial of its neighbourhood
(docs/method.md §10): the cross moments a joint gates-plus-polynomials machine needs.

With y = x + s z (x the clean centred coefficients, z ~ N(0, I)), a gate of coefficient i is
f(y) = y_i exp(-kappa_own y_i^2 / 2 - kappa_nbr sum_{m in N(i), m != i} y_m^2 / 2), and a
monomial is prod_l y_l^{k_l}. The noise is independent across coefficients, so the expectation
of their product is a product of one-dimensional ones, each a closed form:

    E_z[(x + s z)^e exp(-kappa (x + s z)^2 / 2)] = sqrt(rho) exp(-kappa rho x^2 / 2) M_e(rho x, s^2 rho),

with rho = 1 / (1 + s^2 kappa) and M_e(mu, v) the e-th raw moment of N(mu, v)
(M_{e+1} = mu M_e + e v M_{e-1}). kappa = 0 gives the plain noisy moments of method.md §5.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["gaussian_raw_moments", "tilted_moments", "gate_monomial_moments"]


def gaussian_raw_moments(mu: torch.Tensor, v: torch.Tensor, order: int) -> torch.Tensor:
    """E[Y^e] for Y ~ N(mu, v), e = 0..order, stacked on a new last axis."""
    out = [torch.ones_like(mu), mu.clone()]
    for e in range(1, order):
        out.append(mu * out[e] + e * v * out[e - 1])
    return torch.stack(out[: order + 1], dim=-1)


def tilted_moments(x: torch.Tensor, s: float, kappa: torch.Tensor, order: int) -> torch.Tensor:
    """E_z[(x + s z)^e exp(-kappa (x + s z)^2 / 2)] for e = 0..order (method.md §10), float64.

    ``x`` and ``kappa`` broadcast (kappa >= 0; 0 means no gate on that variable)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    kappa = torch.as_tensor(kappa, dtype=torch.float64, device=x.device)
    s2 = float(s) ** 2
    rho = 1.0 / (1.0 + s2 * kappa)
    x, rho, kappa = torch.broadcast_tensors(x, rho, kappa)
    e0 = torch.sqrt(rho) * torch.exp(-0.5 * kappa * rho * x * x)
    return e0.unsqueeze(-1) * gaussian_raw_moments(rho * x, s2 * rho, order)


def gate_monomial_moments(x: torch.Tensor, s: float, exps, kappa_own: float, kappa_nbr: float,
                          support=None) -> torch.Tensor:
    """E_z[f(y) prod_l y_l^{exps[q, l]}] for every row of ``x`` and every monomial q.

    ``x`` (N, m): the clean centred values of a neighbourhood's m variables, the gated
    coefficient first; ``exps`` (F, m) monomial exponents; the gate is
    f(y) = y_0 exp(-kappa_own y_0^2 / 2 - kappa_nbr sum_{l in support, l > 0} y_l^2 / 2)
    with ``support`` (m,) booleans (default: every variable). Returns (N, F), float64.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    exps = np.asarray(exps, dtype=np.int64)
    n, m = x.shape
    if exps.ndim != 2 or exps.shape[1] != m or (exps < 0).any():
        raise ValueError(f"exps must be a non-negative (F, {m}) array, got shape {exps.shape}")
    support = np.ones(m, dtype=bool) if support is None else np.asarray(support, dtype=bool)
    kappa = torch.as_tensor(np.where(support, kappa_nbr, 0.0), dtype=torch.float64, device=x.device)
    kappa[0] = float(kappa_own)
    power = exps.copy()
    power[:, 0] += 1  # the gate's own factor y_0
    table = tilted_moments(x, s, kappa, int(power.max()))  # (N, m, order + 1)
    cols = torch.arange(m, device=x.device)
    idx = torch.as_tensor(power, device=x.device)  # (F, m)
    return table[:, cols[None, :], idx].prod(dim=-1)  # (N, F, m) -> (N, F)
