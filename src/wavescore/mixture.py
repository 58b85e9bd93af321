"""A global Gaussian mixture in the wavelet basis: a density term whose noisy score is exact at
every sigma (issue 15, first part; docs/method.md §11).

With p = sum_k pi_k N(mu_k, Sigma_k), the noisy density is p_s = sum_k pi_k N(mu_k, Sigma_k + s^2 I)
(each component convolved with the noise), so with Sigma_k = U_k diag(lam_k) U_k^T

    log N_k(y) = -1/2 sum_d log(2 pi (lam_kd + s^2)) - 1/2 sum_d (U_k^T (y - mu_k))_d^2 / (lam_kd + s^2)
    score(y)   = sum_k r_k(y) (-U_k (U_k^T (y - mu_k)) / (lam_k + s^2)),   r = softmax_k(log pi_k + log N_k)

in log-sum-exp: no overflow from sigma 0.002 to 80. One eigendecomposition per component serves
every sigma. The wavelet basis is orthonormal, so this is the same density as in pixels.

Fit: k-means++ seeding and Lloyd iterations in the top principal components (fast, seeded), then
each component's weight, mean and full covariance from its members (hard assignments), the
covariance shrunk towards the pooled one (with the weight of ``prior`` images) and given
``shrinkage`` x (mean variance) on its diagonal. The per-component sums (count,
sum, sum of outer products) are the sufficient statistics: they merge exactly across shards.
With one component it is the Gaussian score (its ridge = ``shrinkage``).

``covariance="lowrank"``: Sigma_k = U_k U_k^T + diag(d_k) with r factors (lowrank_from_stats), and
the noisy marginal N(mu_k, U_k U_k^T + diag(d_k + s^2)) is evaluated by Woodbury and the matrix
determinant lemma (lowrank_log_joint; docs/method.md §11): O(K D r) memory, O(K D r^2) per sigma.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from . import _checks as checks
from ._io import WavescoreError
from .denoiser import Denoiser
from .fitting import Estimator, begin_fit
from .machine import WaveletScore
from .transform import WaveletTransform

__all__ = ["MixtureMachine", "kmeans", "gmm_from_stats", "gmm_log_joint", "gmm_score", "lowrank_from_stats",
           "lowrank_log_joint", "lowrank_score", "AUTO_COMPONENTS"]

FORMAT = "wavescore-mixture-machine"
FORMAT_VERSION = 1
AUTO_COMPONENTS = (10, 30, 100, 300)  # components="auto" chooses among these
AUTO_SIGMAS = (0.2, 0.5, 1.0, 2.0)  # ... by held-out denoising error at these noise levels


def kmeans(z: torch.Tensor, k: int, iterations: int, seed: int) -> torch.Tensor:
    """Cluster labels (N,) of the rows of ``z``: k-means++ seeding, then Lloyd iterations; a
    cluster left empty is re-seeded with the point farthest from its centre."""
    gen = torch.Generator().manual_seed(seed)
    n = z.shape[0]
    sq = (z * z).sum(1)
    centres = z[torch.randint(n, (1,), generator=gen)]
    dist = (sq - 2 * z @ centres[0] + centres[0] @ centres[0]).clamp_min(0)
    for _ in range(1, k):
        total = float(dist.sum())
        pick = torch.multinomial(dist / total, 1, generator=gen) if total > 0 else torch.randint(n, (1,), generator=gen)
        centres = torch.cat([centres, z[pick]])
        dist = torch.minimum(dist, (sq - 2 * z @ z[pick][0] + z[pick][0] @ z[pick][0]).clamp_min(0))
    labels = torch.zeros(n, dtype=torch.long)
    for _ in range(iterations):
        d = sq[:, None] - 2 * z @ centres.T + (centres * centres).sum(1)[None]
        best, labels = d.min(1)
        counts = torch.bincount(labels, minlength=k)
        for e in torch.nonzero(counts == 0).flatten().tolist():
            far = int(best.argmax())
            labels[far], best[far] = e, 0.0
        counts = torch.bincount(labels, minlength=k).to(z.dtype)
        centres = torch.zeros_like(centres).index_add_(0, labels, z) / counts[:, None]
    return labels


def check_mixture_params(m) -> None:
    """The settings every mixture machine shares (components, prior, shrinkage, seed,
    batch_size, wavelet), checked in one place for MixtureMachine and LocalMixtureMachine."""
    if not (m.components == "auto" and getattr(m, "_AUTO", False)):
        m.components = checks.whole("components", m.components, 1)
    m.seed = checks.whole("seed", m.seed, 0)
    m.batch_size = checks.whole("batch_size", m.batch_size, 1)
    if not checks.real("prior", m.prior) >= 0:
        raise WavescoreError(f"prior is a weight in samples (images, or neighbourhoods for a local mixture; >= 0), "
                             f"got {m.prior}")
    if not checks.real("shrinkage", m.shrinkage) > 0:
        raise WavescoreError(f"shrinkage must be > 0 (it keeps every covariance invertible), got {m.shrinkage}")
    if not isinstance(m.wavelet, str):
        raise WavescoreError(f"wavelet must be a name like 'haar' or 'db2', got {m.wavelet!r}")


def _shrunk_moments(stats: dict, prior: float, consume: bool):
    """Weights (R, K), means (R, K, d) and the shrunk covariances (R, K, d, d), no floor yet:
    the part of the M-step both covariance forms share (gmm_from_stats' docstring)."""
    n, total_n = stats["count"], stats["count"].sum(1)  # (R, K), (R,)
    mean_all = stats["sum"].sum(1) / total_n[:, None]  # (R, d)
    pooled = stats["outer"].sum(1) / total_n[:, None, None] - mean_all[:, :, None] * mean_all[:, None, :]
    live = n >= 1
    means = torch.where(live[..., None], stats["sum"] / n.clamp_min(1e-300)[..., None], mean_all[:, None])
    cov = (stats["outer"] if consume else stats["outer"].clone())
    R, K = n.shape
    for r in range(R):
        for k in range(K):
            if not live[r, k]:
                cov[r, k] = pooled[r]
                continue
            ck = cov[r, k].div_(n[r, k])
            ck.sub_(torch.outer(means[r, k], means[r, k]))
            ck.mul_(n[r, k] / (n[r, k] + prior)).add_(pooled[r], alpha=float(prior / (n[r, k] + prior)))
    return (n / total_n[:, None]).clamp_min(1e-300), means, cov


def gmm_from_stats(stats: dict, prior: float, floor: float, *, consume: bool = False):
    """Mixture parameters from per-component sums, batched over R independent mixtures:
    ``count`` (R, K), ``sum`` (R, K, d), ``outer`` (R, K, d, d) -> weights (R, K), means
    (R, K, d), eigenvalues (R, K, d) and eigenvectors (R, K, d, d) of the covariances.

    Each covariance is shrunk towards its mixture's pooled covariance with the weight of
    ``prior`` samples, (n_k Sigma_k + prior Sigma) / (n_k + prior): a component of n_k samples
    spans at most n_k - 1 directions, and alone it would project every input onto that span at
    small sigma. ``floor`` is added to every diagonal (no singular component). A component left
    with under one sample (soft EM can empty one) takes the pooled mean; its weight stays ~0.
    ``consume``: the outer sums become the covariances in place (the memory of a global mixture).
    """
    weights, means, cov = _shrunk_moments(stats, prior, consume)
    cov.diagonal(dim1=-2, dim2=-1).add_(floor)
    lam, U = torch.linalg.eigh(cov)
    return weights, means, torch.maximum(lam, torch.as_tensor(floor * 1e-3, dtype=lam.dtype)), U


def lowrank_from_stats(stats: dict, prior: float, floor: float, rank: int, *, consume: bool = False):
    """The low-rank M-step (docs/method.md §11): the same shrunk covariance S_k as
    gmm_from_stats, then Sigma_k = U_k U_k^T + diag(d_k) with U_k the top ``rank`` eigenpairs
    of S_k scaled by sqrt(eigenvalue) and d_k = diag(S_k - U_k U_k^T) + floor, so every
    coordinate keeps its variance and rank = d is gmm_from_stats' covariance. One mixture
    (R = 1 in the batched sums) -> weights (K,), means (K, d), factors (K, d, r), diag (K, d).

    Top eigenpairs of S_k rather than a PPCA/factor-analysis EM: the sufficient statistics are
    d x d outer sums already (they merge exactly across shards), so one exact eigh per component
    costs less than FA iterations and needs no convergence test; it runs one component at a
    time, so the fit holds one d x d eigenbasis, not K of them."""
    weights, means, cov = _shrunk_moments(stats, prior, consume)
    K, d = means.shape[1], means.shape[2]
    r = min(rank, d)  # rank >= d: the full covariance in factored form
    factors = torch.empty(K, d, r, dtype=cov.dtype)
    diag = torch.empty(K, d, dtype=cov.dtype)
    for k in range(K):
        lam, V = torch.linalg.eigh(cov[0, k])
        factors[k] = V[:, d - r:] * lam[d - r:].clamp_min(0).sqrt()
        diag[k] = (torch.diagonal(cov[0, k]) - (factors[k] * factors[k]).sum(1)).clamp_min(0) + floor
    return weights[0], means[0], factors, diag


def gmm_log_joint(y: torch.Tensor, params, s2: float):
    """log pi_k + log N(y; mu_k, Sigma_k + s2 I) (module docstring) for R mixtures at once:
    y (R, n, d) -> (log joint (R, n, K), projections U_k^T (y - mu_k) (R, n, K, d), 1 / (lam + s2))."""
    weights, means, lam, U = params
    R, K, d = means.shape
    inv = 1.0 / (lam + s2)  # (R, K, d)
    logdet = torch.log(lam + s2).sum(-1)  # (R, K)
    Uflat = U.permute(0, 2, 1, 3).reshape(R, d, K * d)  # one GEMM projects onto every component's basis
    proj = (y @ Uflat).reshape(R, -1, K, d) - torch.einsum("rkd,rkde->rke", means, U)[:, None]
    logp = torch.log(weights)[:, None] - 0.5 * (logdet[:, None] + (proj * proj * inv[:, None]).sum(-1)
                                                + d * math.log(2 * math.pi))
    return logp, proj, inv


def gmm_score(y: torch.Tensor, params, s2: float, row: int | None = None, temperature=1.0) -> torch.Tensor:
    """grad_y log sum_k pi_k N(y; mu_k, Sigma_k + s2 I), responsibilities in log-sum-exp (no
    overflow from sigma 0.002 to 80): y (R, n, d) -> (R, n, d), or only coordinate ``row`` (R, n).
    ``temperature`` T: responsibilities softmax(log joint / T), the gradient of
    T log sum_k (pi_k N_k)^(1/T) (method.md §11, "Tempered responsibilities"); T = 1 is exact.
    A tuple of temperatures shares one log joint: (len(T), R, n, d) (or (len(T), R, n))."""
    logp, proj, inv = gmm_log_joint(y, params, s2)
    U = params[3]
    out = []
    for T in (temperature if isinstance(temperature, tuple) else (temperature,)):
        t = torch.softmax(logp / T, -1)[..., None] * proj * inv[:, None]  # (R, n, K, d)
        if row is not None:
            out.append(-torch.einsum("rnkd,rkd->rn", t, U[:, :, row, :]))
            continue
        R, n, K, d = t.shape
        out.append(-(t.reshape(R, n, K * d) @ U.transpose(2, 3).reshape(R, K * d, d)))
    return torch.stack(out) if isinstance(temperature, tuple) else out[0]


def lowrank_precompute(params, s2: float):
    """Per sigma, per component, what Woodbury needs of C_k = U_k U_k^T + diag(e_k), e_k = d_k + s2
    (docs/method.md §11): 1/e (K, d), W = E^{-1} U (K, d, r), the Cholesky factor L of
    M = I_r + U^T E^{-1} U (K, r, r) and log det C_k = sum log e + 2 sum log diag L (K,), the
    matrix determinant lemma. O(K d r^2); nothing d x d."""
    _, _, U, d = params
    inv_e = 1.0 / (d + s2)
    W = U * inv_e[..., None]
    M = U.transpose(1, 2) @ W
    M.diagonal(dim1=-2, dim2=-1).add_(1.0)
    L = torch.linalg.cholesky(M)  # M >= I: always positive definite
    logdet = -torch.log(inv_e).sum(-1) + 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    return inv_e, W, L, logdet


def lowrank_log_joint(y: torch.Tensor, params, s2: float, pre=None):
    """log pi_k + log N(y; mu_k, U_k U_k^T + diag(d_k + s2)) for y (n, d) -> (log joint (n, K),
    C_k^{-1} (y - mu_k) as (K, n, d)), by Woodbury (docs/method.md §11):
    C^{-1} v = E^{-1} v - W M^{-1} W^T v, v^T C^{-1} v = v^T E^{-1} v - b^T M^{-1} b with b = W^T v."""
    weights, means = params[:2]
    inv_e, W, L, logdet = lowrank_precompute(params, s2) if pre is None else pre
    v = y[None] - means[:, None]  # (K, n, d)
    b = v @ W  # (K, n, r)
    c = torch.cholesky_solve(b.transpose(1, 2), L).transpose(1, 2)  # M^{-1} b
    t = v * inv_e[:, None] - c @ W.transpose(1, 2)  # C^{-1} v
    quad = (v * t).sum(-1)  # (K, n)
    logp = torch.log(weights)[:, None] - 0.5 * (logdet[:, None] + quad + means.shape[1] * math.log(2 * math.pi))
    return logp.T, t


def lowrank_score(y: torch.Tensor, params, s2: float, pre=None, temperature=1.0) -> torch.Tensor:
    """grad_y log sum_k pi_k N(y; mu_k, U_k U_k^T + diag(d_k + s2)) = -sum_k r_k C_k^{-1}(y - mu_k),
    responsibilities in log-sum-exp (no overflow from sigma 0.002 to 80): y (n, d) -> (n, d);
    ``temperature`` as in gmm_score (a tuple: (len(T), n, d) from one log joint)."""
    logp, t = lowrank_log_joint(y, params, s2, pre)
    temps = temperature if isinstance(temperature, tuple) else (temperature,)
    r = torch.stack([torch.softmax(logp / T, -1) for T in temps])
    out = -torch.einsum("tnk,knd->tnd", r, t)
    return out if isinstance(temperature, tuple) else out[0]


class MixtureMachine(Estimator, WaveletScore, Denoiser):
    """Global Gaussian mixture score (module docstring); preset ``mixture``.

    Parameters
    ----------
    components : K, the number of mixture components (1: the Gaussian score), or "auto": the K
        among ``AUTO_COMPONENTS`` with the smallest held-out denoising error (geometric mean over
        ``AUTO_SIGMAS``) on 10% of the images (at most 500), fitted on the rest; then refitted on
        all images with that K (``choice_`` records every candidate's errors).
    prior : each component's covariance is shrunk towards the pooled covariance with the weight
        of ``prior`` images: (n_k Sigma_k + prior Sigma) / (n_k + prior).
    shrinkage : each covariance gets ``shrinkage`` x (the data's mean variance) on its diagonal,
        so no component is singular (MNIST's constant border coefficients).
    pca_dims, iterations, seed : the k-means clustering (in the top principal components).
    covariance : "full" (each component's D x D covariance, by its eigendecomposition) or
        "lowrank": Sigma_k = U_k U_k^T + diag(d_k) with ``rank`` factors, U_k the top eigenpairs of
        the shrunk covariance and d_k its residual diagonal plus the ``shrinkage`` floor
        (lowrank_from_stats); the score is exact at every sigma by Woodbury (docs/method.md §11),
        O(K D r) memory and O(K D r^2) per sigma. A rank of D or more is the full covariance.
    rank : the number of factors r of covariance="lowrank" (a whole number >= 1); None for "full".
    temperature : T > 0, the responsibilities' temperature at every sigma: softmax(log joint / T).
        1 (default) is the mixture's exact noisy score; T > 1 chooses between components less
        decisively (a network that hedges between digits at high sigma), T -> 0 takes the most
        likely component's Gaussian score. The score stays a gradient, of
        T log sum_k (pi_k N_k)^(1/T) (``log_density``; method.md §11, "Tempered responsibilities").
        The fit does not depend on it: a fitted machine takes ``set_params(temperature=T)``.
    """

    _FILE = (FORMAT, FORMAT_VERSION, "mixture machine", "refit it with make_machine('mixture', ...)")
    _AUTO = True  # components="auto" is allowed (check_mixture_params)
    # the temperature changes how the fitted mixture scores, not what is fitted: set_params takes it
    _RUNTIME_PARAMS = Estimator._RUNTIME_PARAMS | {"temperature"}

    def __init__(self, components: int | str = 100, prior: float = 30.0, shrinkage: float = 1e-4, pca_dims: int = 50,
                 iterations: int = 30,
                 wavelet: str = "haar", levels: int | None = None, seed: int = 0, *, batch_size: int = 2000,
                 max_memory: float | None = None, covariance: str = "full", rank: int | None = None,
                 temperature: float = 1.0):
        self._init_params(locals())

    def _validate(self) -> None:
        check_mixture_params(self)
        self.temperature = checks.real("temperature", self.temperature, above=0)
        self.pca_dims = checks.whole("pca_dims", self.pca_dims, 1)
        self.iterations = checks.whole("iterations", self.iterations, 0)
        if self.covariance not in ("full", "lowrank"):
            raise WavescoreError(f"covariance must be 'full' or 'lowrank' (with rank=r), got {self.covariance!r}")
        if self.covariance == "full" and self.rank is not None:
            raise WavescoreError(f"rank={self.rank!r} applies only to covariance='lowrank': drop rank or set "
                                 "covariance='lowrank'")
        if self.covariance == "lowrank":
            if self.rank is None:
                raise WavescoreError("covariance='lowrank' needs rank=r, the number of factors per component "
                                     "(a whole number >= 1, e.g. 20)")
            self.rank = checks.whole("rank", self.rank, 1)

    @property
    def name(self) -> str:
        if self.components == "auto":
            k = f"Kauto{self.weights_.shape[0]}" if hasattr(self, "weights_") else "Kauto"
        else:
            k = f"K{self.components}"
        return (f"mixture-{k}" + (f"-r{self.rank}" if self.covariance == "lowrank" else "")
                + ("" if self.temperature == 1 else f"-T{self.temperature:g}"))

    def memory_estimate(self, shape, n_images: int | None = None) -> dict:
        """Bytes a fit needs: the coefficients of every image, the K covariances (built in place
        of the outer-product sums), their eigenbases and eigh's copy; then scoring's flat copy.
        Low-rank: the K covariances, one eigh at a time and the K factors (D x r)."""
        D = int(np.prod([int(v) for v in shape]))
        n = n_images or 60000
        K = max(AUTO_COMPONENTS) if self.components == "auto" else self.components
        if self.covariance == "lowrank":
            total = int(1.2 * (2 * n * D + K * D * D + 4 * D * D + 2 * K * D * min(self.rank, D)) * 8)
        else:
            total = int(1.2 * (2 * n * D + 4 * K * D * D + 4 * D * D) * 8)
        return {"D": D, "total": total}

    # ------------------------------------------------------------------ fit
    def fit(self, data, *, progress: bool = True) -> "MixtureMachine":
        """Cluster, then each component's moments: ``data`` an (N, C, H, W) tensor."""
        t0 = time.perf_counter()
        x, shape = begin_fit(self, data, "use fewer components, fewer images or max_memory=")
        if self.components == "auto":
            return self._fit_auto(x, t0, progress)
        if x.shape[0] < self.components:
            raise WavescoreError(f"{self.components} components need at least as many images, got {x.shape[0]}: "
                                 "lower components")
        self.shape_ = shape
        self.transform_ = WaveletTransform(shape, self.wavelet, self.levels)
        self.__dict__.pop("weights_", None)  # a refit sizes its statistics by self.components
        w = torch.cat([self.transform_.forward(x[s : s + self.batch_size].to(torch.float64))
                       for s in range(0, x.shape[0], self.batch_size)])
        mean = w.mean(0)
        cov = torch.cov(w.T, correction=0)
        p = min(self.pca_dims, w.shape[1])
        basis = torch.linalg.eigh(cov)[1][:, -p:]
        labels = kmeans((w - mean) @ basis, self.components, self.iterations, self.seed)
        self.set_stats(self.statistics(w, labels), float(torch.diagonal(cov).mean()), consume=True)
        self.fit_time_ = time.perf_counter() - t0
        return self

    def _fit_auto(self, x: torch.Tensor, t0: float, progress: bool) -> "MixtureMachine":
        """components="auto": each candidate K fitted on 90% of the images and scored by its
        held-out denoising error with the seeded noise of fitting.noise_for; the best refitted."""
        from ._io import progress_bar
        from .fitting import noise_for

        n_held = min(500, x.shape[0] // 10)
        cands = [k for k in AUTO_COMPONENTS if k <= (x.shape[0] - n_held) // 10]
        if n_held < 10 or not cands:
            raise WavescoreError(f"components='auto' needs at least {10 * (AUTO_COMPONENTS[0] + 1) + 10} images to hold "
                                 f"some out and fit {AUTO_COMPONENTS[0]} components, got {x.shape[0]}: give components=K")
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(self.seed))
        held, train = x[order[:n_held]].to(torch.float64), x[order[n_held:]]
        errors = {}
        for k in progress_bar(cands, desc="components=auto", enabled=progress, leave=False):
            m = MixtureMachine(**{**self.get_params(), "components": k, "temperature": 1.0}).fit(train, progress=False)
            errors[k] = [float(((m.denoise(held + s * noise_for(held.shape, i, seed=20261130), s) - held) ** 2).mean())
                         for i, s in enumerate(AUTO_SIGMAS)]
        score = {k: float(np.mean(np.log(v))) for k, v in errors.items()}
        best = min(score, key=score.get)
        try:
            self.components = best  # fit() with a whole K, then back to "auto" as the configuration
            self.fit(x, progress=progress)
        finally:
            self.components = "auto"
        self.choice_ = {"candidates": cands, "sigmas": list(AUTO_SIGMAS), "held_out_mse": [errors[k] for k in cands],
                        "n_images": n_held, "chosen": best}
        self.fit_time_ = time.perf_counter() - t0
        return self

    def statistics(self, w: torch.Tensor, labels: torch.Tensor) -> dict:
        """Per-component sufficient statistics of coefficients ``w`` with hard ``labels``:
        counts (K,), sums (K, D), outer-product sums (K, D, D). Sums: shards add exactly."""
        K = self.weights_.shape[0] if hasattr(self, "weights_") else self.components
        D = w.shape[1]
        out = {"count": torch.bincount(labels, minlength=K).to(torch.float64),
               "sum": torch.zeros(K, D, dtype=torch.float64).index_add_(0, labels, w),
               "outer": torch.zeros(K, D, D, dtype=torch.float64)}
        for k in range(K):
            xk = w[labels == k]
            out["outer"][k] = xk.T @ xk
        return out

    @staticmethod
    def merge_stats(a: dict, b: dict) -> dict:
        return {k: a[k] + b[k] for k in a}

    def set_stats(self, stats: dict, mean_variance: float, *, consume: bool = False) -> "MixtureMachine":
        """Weights, means and shrunk covariances from the statistics, then one eigendecomposition
        per component (every sigma's score follows from it)."""
        n = stats["count"]
        if (n < 1).any():
            raise WavescoreError("a mixture component has no members: re-cluster or lower components")
        batched = {k: v[None] for k, v in stats.items()}
        for old in ("lam_", "U_", "factors_", "diag_"):  # a refit may change the covariance form
            self.__dict__.pop(old, None)
        if self.covariance == "lowrank":
            self.weights_, self.means_, self.factors_, self.diag_ = lowrank_from_stats(
                batched, self.prior, self.shrinkage * mean_variance, self.rank, consume=consume)
        else:
            w, mu, lam, U = gmm_from_stats(batched, self.prior, self.shrinkage * mean_variance, consume=consume)
            self.weights_, self.means_, self.lam_, self.U_ = w[0], mu[0], lam[0], U[0]
        self.n_samples_ = int(n.sum())
        self.mean_variance_ = float(mean_variance)
        return self

    # ------------------------------------------------------------------ score
    def _require_fitted(self) -> None:
        if not (hasattr(self, "U_") or hasattr(self, "factors_")):
            raise WavescoreError("this MixtureMachine is not fitted yet: call fit(data) or MixtureMachine.load(path)")

    def _params(self):
        if self.covariance == "lowrank":
            return self.weights_, self.means_, self.factors_, self.diag_
        return self.weights_[None], self.means_[None], self.lam_[None], self.U_[None]

    def log_density(self, w: torch.Tensor, sigma: float) -> torch.Tensor:
        """log p_sigma(w) of noisy coefficients (N, D) -> (N,), exact (module docstring; low-rank:
        Woodbury and the determinant lemma, docs/method.md §11). With temperature T != 1 it is the
        potential T log sum_k (pi_k N_k)^(1/T) whose gradient the score is (not normalised)."""
        self._require_fitted()
        T = float(self.temperature)
        if self.covariance == "lowrank":
            logp = lowrank_log_joint(w, self._params(), float(sigma) ** 2)[0]
        else:
            logp = gmm_log_joint(w[None], self._params(), float(sigma) ** 2)[0][0]
        return T * torch.logsumexp(logp / T, 1)  # T = 1: x / 1.0 and 1.0 * y are exact

    def wavelet_score(self, w: torch.Tensor, sigma: float) -> torch.Tensor:
        """grad log p_sigma in the wavelet domain: (N, D) -> (N, D), float64."""
        return self.wavelet_scores(w, sigma, (self.temperature,))[0]

    def wavelet_scores(self, w: torch.Tensor, sigma: float, temperatures) -> torch.Tensor:
        """The wavelet score at several temperatures from one log joint (the costly part; only
        the softmax differs, method.md §11): (N, D) -> (len(temperatures), N, D), float64. A
        joined machine with this mixture at T = 1, 2, 4 evaluates it once, not three times."""
        self._require_fitted()
        sigma = float(sigma)
        if not sigma > 0 or not math.isfinite(sigma):
            raise WavescoreError(f"sigma must be a positive finite number, got {sigma}")
        temps = tuple(checks.real("temperature", T, above=0) for T in temperatures)
        if not temps:
            raise WavescoreError("temperatures must name at least one temperature, e.g. (1.0,)")
        out = torch.empty((len(temps),) + tuple(w.shape), dtype=w.dtype, device=w.device)
        step = max(1, int(2e8 // (8 * self.weights_.shape[0] * w.shape[1] * len(temps))))
        if self.covariance == "lowrank":  # Woodbury, docs/method.md §11: one r x r Cholesky per component and sigma
            pre = lowrank_precompute(self._params(), sigma**2)
            for s in range(0, w.shape[0], step):
                out[:, s : s + step] = lowrank_score(w[s : s + step], self._params(), sigma**2, pre, temps)
            return out
        for s in range(0, w.shape[0], step):
            out[:, s : s + step] = gmm_score(w[None, s : s + step], self._params(), sigma**2, temperature=temps)[:, 0]
        return out

    # ------------------------------------------------------------------ persistence
    def _archive(self) -> tuple[dict, dict]:
        self._require_fitted()
        header = {"format": FORMAT, "version": FORMAT_VERSION, "params": self.get_params(), "shape": list(self.shape_),
                  "count": self.n_samples_, "mean_variance": self.mean_variance_,
                  "fitted_components": int(self.weights_.shape[0]), "choice": getattr(self, "choice_", None),
                  "fit_time": getattr(self, "fit_time_", None)}
        arrays = {"weights": self.weights_.numpy(), "means": self.means_.numpy()}
        if self.covariance == "lowrank":
            arrays.update(factors=self.factors_.numpy(), diag=self.diag_.numpy())
        else:
            arrays.update(lam=self.lam_.numpy(), U=self.U_.numpy())
        return header, arrays

    @classmethod
    def _from_archive(cls, path: Path, header: dict, arr: dict, hint: str) -> "MixtureMachine":
        m = cls._from_params(path, header["params"], hint)
        m.shape_ = tuple(int(v) for v in header["shape"])
        m.transform_ = WaveletTransform(m.shape_, m.wavelet, m.levels)
        K, D = header.get("fitted_components", m.components), m.transform_.layout.size
        if m.components != "auto" and K != m.components:
            raise WavescoreError(f"{path} holds {K} components for {m.components} configured: {hint}")
        # Files written before covariance= existed hold no such parameter: they load as "full".
        lowrank = m.covariance == "lowrank"
        shapes = {"weights": (K,), "means": (K, D)}
        shapes.update({"factors": (K, D, min(m.rank, D)), "diag": (K, D)} if lowrank
                      else {"lam": (K, D), "U": (K, D, D)})
        if any(k not in arr or tuple(arr[k].shape) != v for k, v in shapes.items()):
            raise WavescoreError(f"{path} does not match its own configuration (arrays missing or of other shapes): {hint}")
        if any(not torch.isfinite(a).all() for a in arr.values()) or not (arr["diag" if lowrank else "lam"] > 0).all():
            raise WavescoreError(f"{path} holds non-finite or non-positive mixture arrays: {hint}")
        m.weights_, m.means_ = arr["weights"], arr["means"]
        if lowrank:
            m.factors_, m.diag_ = arr["factors"], arr["diag"]
        else:
            m.lam_, m.U_ = arr["lam"], arr["U"]
        m.n_samples_, m.mean_variance_, m.fit_time_ = header["count"], header["mean_variance"], header.get("fit_time")
        if header.get("choice") is not None:
            m.choice_ = header["choice"]
        return m
