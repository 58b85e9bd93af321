"""The closed-form optimum: G(s), b(s) from clean moments, then batched ridge solves.

method.md §4: ``theta*(s) = -(G(s) + lambda I)^{-1} b(s)`` with ``G = E[phi(w_s) phi(w_s)^T]``
and ``b = E[d phi / d w_own]`` (Stein's identity); method.md §5 gives both as polynomials
in s^2 over clean moments.
"""
from __future__ import annotations

import torch

from .features import Monomials
from .moments import NoisePlan


def normal_equations(clean: torch.Tensor, feats: Monomials, plan: NoisePlan | None, t: torch.Tensor,
                     own_scale: torch.Tensor):
    """Noisy Gram ``G`` (rows, F, F) and Stein right-hand side ``b`` at noise std ``t`` (m,) per
    variable (in standardised units, t_l = sigma / scale_l).

    ``clean`` is the clean Gram (rows, F, F) when ``plan`` is None (degree 1), else the clean
    moments of ``plan.sums`` (rows, S). ``b`` is (rows, F); ``own_scale`` converts d/du to d/dw
    for the output (method.md §4, chain rule).
    """
    if plan is None:
        # Degree 1: only E[u_l^2] gains noise, t_l^2 (method.md §5 with P=1).
        G = clean.clone()
        idx = torch.arange(1, feats.F, device=clean.device)
        G[:, idx, idx] += t.to(G.dtype) ** 2
    else:
        noisy = plan.noisy(clean, t)
        G = noisy[:, torch.as_tensor(plan.pair_index, device=clean.device)]
    b = G.new_zeros(G.shape[0], feats.F)
    if plan is None:
        b[:, 1] = 1.0
    else:
        dev = G.device
        coef = torch.as_tensor(plan.deriv_coef, dtype=G.dtype, device=dev)
        b[:, torch.as_tensor(plan.deriv_feature, device=dev)] = coef * noisy[:, torch.as_tensor(plan.deriv_sum, device=dev)]
    b = b / own_scale.to(G.dtype)
    return G, b


def ridge_solve(G: torch.Tensor, b: torch.Tensor, ridge: float, clean_diag: torch.Tensor | None = None) -> torch.Tensor:
    """theta = -(G + lambda diag(R))^{-1} b, batched (method.md §4 with a scale-free ridge).

    The ridge is relative to each feature's own second moment: monomials of standardised
    coefficients span many orders of magnitude at large sigma (E[u^6] ~ 15 t^6), so one
    lambda for the whole diagonal would crush the low-order terms. R is the noisy diagonal
    diag(G), or, given ``clean_diag`` (rows, F), the noise-free one E[phi(w)^2] (never more
    than the noisy one). The clean reference matters at large sigma: a ridge relative to the
    noisy moments biases the shrinkage by lambda relative, an error of lambda * sigma per pixel
    (MSE 1e4 at sigma 1e8 with lambda 1e-6), while the clean one vanishes against the noise.
    In the Jacobi-scaled system every diagonal entry is 1. Cholesky first; systems it rejects
    (singular Grams, e.g. MNIST's constant border coefficients at tiny sigma with ridge 0)
    fall back to a symmetric pseudo-inverse, so the result never holds NaN.
    """
    vec = b.dim() == 2
    rhs = b.unsqueeze(-1) if vec else b
    g = G.diagonal(dim1=-2, dim2=-1)
    d = g.clamp_min(torch.finfo(G.dtype).tiny).sqrt()
    A = G / (d[..., :, None] * d[..., None, :])
    if clean_diag is None:
        A = A + ridge * torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    else:
        rel = (clean_diag.to(G.dtype) / g.clamp_min(torch.finfo(G.dtype).tiny)).clamp(0.0, 1.0)
        A = A + torch.diag_embed(ridge * rel)
    rhs = rhs / d[..., :, None]
    L, info = torch.linalg.cholesky_ex(A)
    x = torch.cholesky_solve(rhs, L)
    bad = (info != 0) | ~torch.isfinite(x).flatten(1).all(1)
    if bad.any():
        x[bad] = torch.linalg.pinv(A[bad], hermitian=True) @ rhs[bad]
    x = -x / d[..., :, None]
    return x.squeeze(-1) if vec else x


def gaussian_inverse(lam: torch.Tensor, sigma: float, ridge: float, mean_lam=None) -> torch.Tensor:
    """The eigenvalues of (C + (sigma^2 + ridge mean(lam)) I)^{-1} for a covariance C with
    eigenvalues ``lam``: the Gaussian score's shrinkage (method.md §4, §8), its ridge relative
    to the mean eigenvalue. ``mean_lam`` overrides the mean (a machine fixes it once)."""
    mean_lam = lam.mean() if mean_lam is None else mean_lam
    return 1.0 / (lam + sigma * sigma + ridge * mean_lam)


def schur_solve(KT: torch.Tensor, C_psi: torch.Tensor, b_psi: torch.Tensor, v_own: torch.Tensor, inv: torch.Tensor,
                ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint optimum of global linear terms and local higher-order features psi, by block
    elimination through the shared noisy covariance C = V diag(1/inv) V^T (docs/method.md §8).

    With centred features [w - mu, psi] the normal equations are
    ``[[C, K], [K^T, C_psi]] [a; beta] = -[e_i; b_psi]``; eliminating ``a`` leaves the
    Schur complement ``(C_psi - K^T C^{-1} K) beta = -(b_psi - K^T C^{-1} e_i)`` and then
    ``a = -C^{-1}(e_i + K beta)``: no (D + F)-sized system per coefficient.

    KT (n, F, D) is ``(V^T K_i)^T``, v_own (n, D) the row ``V[i]``; returns ``beta`` (n, F)
    and ``V^T K_i beta`` (n, D), from which the caller forms ``a`` for every output at once.
    """
    KTs = KT * inv
    S = KTs @ KT.transpose(1, 2)
    S = 0.5 * (S + S.transpose(1, 2))
    r = b_psi - (KTs @ v_own.unsqueeze(-1)).squeeze(-1)
    beta = ridge_solve(C_psi - S, r, ridge)
    return beta, (beta.unsqueeze(1) @ KT).squeeze(1)
