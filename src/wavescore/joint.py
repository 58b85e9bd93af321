"""The joint machine (preset ``strongest``): shrinkage gates and local polynomials in one solve
per grid sigma (docs/method.md §10).

The polynomial family ``gaussian+gsm`` (method.md §8) is the best machine at sigma 0.5-5 and
the gated machine (§9) at sigma <= 0.2; neither has the other's features. This machine gives
every coefficient both: the global linear terms, the window and parent monomials of the
``gaussian+gsm`` preset and the own and energy gates, jointly optimal at each grid sigma. The
two kinds already know every moment among themselves; what joins them is the block of cross
moments ``E[f_a(y)_i m_q(u)]`` of gate ``a`` and monomial ``q`` of coefficient ``i``.

**Cross moments in one GEMM per batch.** The noise is independent across coefficients and
a gate is a product of per-variable factors, so ``E_z[f_a m_q]`` is the gate's openness ``P_a``
times one-dimensional tilted moments (method.md §10): the own variable gives
``E[X_i^{1+j}] = M_{1+j}(rho_o x_i, s^2 rho_o)``, a neighbour ``l`` a polynomial in its clean
value ``x_l`` whose coefficients (``rho_l``, ``s``, the standardisation) do not depend on the
image. Hence the sums over images needed are only ``sum_n W_j(n, i) h(x_n)`` with weights
``W_j = P_a M_{1+j}`` and ``h`` in {1, x_l, x_l^2, x_l x_k}: one batched matrix product per
group and batch, every sigma and gate at once. At solve time each ``E[f_a m_q]`` is a short sum
of these with closed-form coefficients. ``tests/test_joint.py`` checks the result against the
quadrature-tested ``gate_moments.gate_monomial_moments`` to 1e-9.

**Choice.** The machine holds a fitted ``gaussian+gsm`` machine and a gated machine (each with
its own held-out choice) and, per grid sigma, picks on the held-out split among the Gaussian
score, those two and the joint solve (two ridges): on the held-out images it is
never worse than either. (The polynomial machine's own choice covers its lower degrees.) Off the grid the correction to the Gaussian denoiser is interpolated
in log sigma as in the gated machine; above the grid it is the polynomial machine (exact at
every sigma).
"""
from __future__ import annotations

import math
from math import comb
from pathlib import Path

import numpy as np
import torch

from ._io import WavescoreError
from .denoiser import Denoiser
from .fitting import Estimator, memory_budget, noise_for, stream_fit
from .gates import SIGMA_GRID, GatedMachine
from .machine import ScoreMachine, WaveletScore

__all__ = ["JointMachine", "cross_structure", "cross_moments"]

FORMAT = "wavescore-joint-machine"
FORMAT_VERSION = 1
SELECT_RIDGES = (1e-6, 1e-3)


# ---------------------------------------------------------------------------- cross moments
def _recipe(exps: np.ndarray, psi: np.ndarray):
    """Per feature of ``psi``: own exponent k0, up to two neighbour columns with exponents, and
    the non-own pairs their products need. Refuses monomials the factorisation does not cover."""
    k0, l1, e1, l2, e2, pairs = [], [], [], [], [], []
    for q in psi:
        e = exps[q]
        vars_ = [int(v) + 1 for v in np.nonzero(e[1:])[0]]
        d = int(e[1:].sum())
        ok = (len(vars_) <= 2 and int(e[0]) <= 3 and (d == 0 or (d <= 2 and int(e[0]) <= 1))
              and not (len(vars_) == 2 and int(e[0]) > 0))
        if not ok:
            raise WavescoreError(f"the joint machine cannot join gates with the monomial of exponents {e.tolist()}: "
                                 "it takes the own coefficient up to degree 3 and at most two neighbours up to degree "
                                 "2 in all (own times one neighbour's square included); lower the degree of that term")
        k0.append(int(e[0]))
        a = vars_ + [0, 0]
        l1.append(a[0])
        e1.append(int(e[a[0]]) if vars_ else 0)
        l2.append(a[1])
        e2.append(int(e[a[1]]) if len(vars_) == 2 else 0)
        if len(vars_) == 2:
            pairs.append((vars_[0], vars_[1]))
    return k0, l1, e1, l2, e2, sorted(set(pairs))


def cross_structure(poly: ScoreMachine, gates: GatedMachine) -> list[dict]:
    """Per local group of the fitted-structure polynomial machine ``poly``: which sums its gate x
    monomial cross moments need (columns ``[1, x_l, x_l^2, x_l x_k]`` of the non-own variables)
    and how each psi feature reads them (``hidx`` (F, 3, 3) over the powers of its two
    neighbour variables)."""
    _, groups, feats = poly._structure(poly.shape_)
    D = gates.transform_.layout.size
    gn = gates._nbr.numpy()
    out = []
    for k in range(1, len(groups)):
        g, f = groups[k], feats[k]
        psi = np.nonzero(f.exps.sum(1) >= 2)[0]
        k0, l1, e1, l2, e2, pairs = _recipe(f.exps, psi)
        m = g.m
        pidx = {p: j for j, p in enumerate(pairs)}
        hidx = np.zeros((len(psi), 3, 3), dtype=np.int64)
        for q in range(len(psi)):
            for p1 in range(3):
                for p2 in range(3):
                    if p1 == p2 == 0:
                        col = 0
                    elif p2 == 0:
                        col = l1[q] if p1 == 1 else m - 1 + l1[q]
                    elif p1 == 0:
                        col = l2[q] if p2 == 1 else m - 1 + l2[q]
                    elif p1 == p2 == 1 and (l1[q], l2[q]) in pidx:
                        col = 2 * m - 1 + pidx[(l1[q], l2[q])]
                    else:
                        col = 0  # a power the monomial does not have: its coefficient is 0
                    hidx[q, p1, p2] = max(col, 0)
        # Column l of row i inside the energy gates' neighbourhood of i (its noise is tilted there).
        others = gn[g.out][:, 1:]  # (n, m_g - 1), padded with D
        insupp = (g.nbr[:, :, None] == others[:, None, :]).any(-1)
        insupp[:, 0] = False
        out.append({"k": k, "out": torch.as_tensor(g.out), "nbr": torch.as_tensor(g.nbr), "m": m,
                    "pairs": torch.as_tensor(np.asarray(pairs, dtype=np.int64).reshape(-1, 2)),
                    "L": 2 * m - 1 + len(pairs), "psi": psi, "k0": torch.as_tensor(k0, dtype=torch.long),
                    "l1": torch.as_tensor(l1, dtype=torch.long), "e1": torch.as_tensor(e1, dtype=torch.long),
                    "l2": torch.as_tensor(l2, dtype=torch.long), "e2": torch.as_tensor(e2, dtype=torch.long),
                    "hidx": torch.as_tensor(hidx), "insupp": torch.as_tensor(insupp)})
    if sorted(np.concatenate([s["out"].numpy() for s in out]).tolist()) != list(range(D)):
        raise WavescoreError("the joint machine needs every coefficient in exactly one local group")
    return out


def _empty_cross(structure, S: int, G: int, D: int) -> dict:
    z = {f"c{j}": torch.zeros(S, s["out"].shape[0], G, 2, s["L"], dtype=torch.float64)
         for j, s in enumerate(structure)}
    z["w"] = torch.zeros(S, G, D, 4, dtype=torch.float64)
    return z


def _update_cross(gates: GatedMachine, structure, sums: dict, w: torch.Tensor) -> None:
    """Add a batch's sums ``sum_n W_j(n, i) h(x_n)`` (module docstring) for every grid sigma and gate."""
    x = w - gates.centre_
    xsq = x * x
    sn = gates._others_energy(xsq)
    B = x.shape[0]
    H = []
    for s in structure:
        xn = x[:, s["nbr"][:, 1:]]  # (B, n, m - 1): the non-own variables
        p = s["pairs"] - 1
        H.append(torch.cat([xn.new_ones(*xn.shape[:2], 1), xn, xn * xn, xn[..., p[:, 0]] * xn[..., p[:, 1]]], 2)
                 .permute(1, 0, 2).contiguous())  # (n, B, L)
    for k, sig in enumerate(gates.sigmas):
        s2 = sig * sig
        W = x.new_empty(B, x.shape[1], gates.G, 4)
        for a, (ko, kn) in enumerate(gates._gate_kappas(s2)):
            P = torch.exp(gates._log_openness(xsq, sn, ko, kn, s2))
            rho = 1.0 / (1.0 + s2 * ko)
            mu, v = rho * x, s2 * rho
            mu2 = mu * mu
            # P E[X^(1+j)] for X ~ N(mu, v), j = 0..3 (gate_moments.gaussian_raw_moments, unrolled)
            W[..., a, 0] = P * mu
            W[..., a, 1] = P * (mu2 + v)
            W[..., a, 2] = P * mu * (mu2 + 3 * v)
            W[..., a, 3] = P * (mu2 * mu2 + 6 * mu2 * v + 3 * v * v)
        sums["w"][k] += W.sum(0).permute(1, 0, 2)
        for j, s in enumerate(structure):
            Wg = W[:, s["out"], :, :2].reshape(B, s["out"].shape[0], -1).permute(1, 2, 0)  # (n, 2G, B)
            sums[f"c{j}"][k] += torch.bmm(Wg, H[j]).reshape(sums[f"c{j}"].shape[1:])


def cross_moments(gates: GatedMachine, poly: ScoreMachine, s: dict, sums: dict, j: int, k: int,
                  count: int) -> torch.Tensor:
    """E[f_a(y)_i m_q(u)] at grid sigma k for local group j's outputs: (n, F_psi, G)."""
    sig = gates.sigmas[k]
    s2 = sig * sig
    acc = poly.moments_
    out, nbr = s["out"], s["nbr"]
    n, G = out.shape[0], gates.G
    c = (gates.centre_ - acc.shift)  # u = (X + c) / scale with X the gate-centred noisy value
    sc = acc.scale
    S4 = sums[f"c{j}"][k].new_zeros(n, G, 4, s["L"])
    S4[:, :, :2] = sums[f"c{j}"][k]
    S4[:, :, 2:, 0] = sums["w"][k][:, out, 2:].permute(1, 0, 2)
    S4 /= count
    # own factor: u_i^k0 X_i = sum_j binom(k0, j) c_i^(k0 - j) X_i^(1 + j) / scale_i^k0
    ci, si = c[out], sc[out]
    A = torch.zeros(n, 4, 4, dtype=torch.float64)
    for k0 in range(4):
        for jj in range(k0 + 1):
            A[:, k0, jj] = comb(k0, jj) * ci ** (k0 - jj) / si ** k0
    # neighbour factors: E[u_l^e] over X_l ~ N(rho x_l, s^2 rho), as coefficients of x_l^p
    cl, sl = c[nbr], sc[nbr]  # (n, m)
    rhos = []
    for ko, kn in gates._gate_kappas(s2):
        rn = (1.0 / (1.0 + s2 * kn))[out]  # (n,): 1 for the own gates (kn = 0)
        rhos.append(torch.where(s["insupp"], rn[:, None], torch.ones_like(cl)))
    rho = torch.stack(rhos, 1)  # (n, G, m)
    Bc = torch.zeros(n, G, nbr.shape[1], 3, 3, dtype=torch.float64)
    Bc[..., 0, 0] = 1.0
    Bc[..., 1, 0] = (cl / sl)[:, None]
    Bc[..., 1, 1] = rho / sl[:, None]
    Bc[..., 2, 0] = ((cl * cl)[:, None] + s2 * rho) / (sl * sl)[:, None]
    Bc[..., 2, 1] = 2 * rho * (cl / (sl * sl))[:, None]
    Bc[..., 2, 2] = rho * rho / (sl * sl)[:, None]
    Aq = A[:, s["k0"]]  # (n, F, 4)
    B1 = Bc[:, :, s["l1"], s["e1"]]  # (n, G, F, 3)
    B2 = Bc[:, :, s["l2"], s["e2"]]
    Sg = S4[:, :, :, s["hidx"]]  # (n, G, 4, F, 3, 3)
    return torch.einsum("nfj,ngfp,ngfq,ngjfpq->nfg", Aq, B1, B2, Sg)


class _GateBlock:
    """The gates' rows of the bordered system at one grid sigma (the ``extra`` of
    ``ScoreMachine._mixed_theta``)."""

    def __init__(self, machine: "JointMachine", sums: dict, k: int):
        self.m, self.sums, self.k = machine, sums, k
        gates, poly = machine.gates_, machine.poly_
        lam, V = poly._mixed_cache()[:2]
        gsums = sums["gates"]
        mean = gsums["x"] / gsums["count"]
        self.KT, self.cf, self.b, self.ef, self.dead = gates._system(gsums, k, (mean, lam, V), with_dead=True)
        self.by_group = {s["k"]: j for j, s in enumerate(machine._cross)}
        self.cache: dict = {}
        self.beta = torch.zeros(gates.transform_.layout.size, gates.G, dtype=torch.float64)

    def block(self, k: int, rows, out, psi, e_psi):
        j = self.by_group[k]
        if j not in self.cache:  # one group's cross moments serve all its row chunks
            s = self.m._cross[j]
            self.cache = {j: cross_moments(self.m.gates_, self.m.poly_, s, self.sums["cross"], j, self.k,
                                           self.sums["gates"]["count"])}
        s = self.m._cross[j]
        emf = self.cache[j][rows][:, torch.as_tensor(np.searchsorted(s["psi"], psi.numpy()))]
        cross = emf - e_psi[:, :, None] * self.ef[:, out].T[:, None, :]
        cross[self.dead[out].unsqueeze(1).expand_as(cross)] = 0.0
        return self.KT[out], cross, self.cf[out], self.b[out]

    def keep(self, out, beta):
        self.beta[out] = beta


class JointMachine(Estimator, WaveletScore, Denoiser):
    """Gates and polynomials in one solve: the ``strongest`` preset (module docstring).

    Parameters
    ----------
    degree, radius, bands : the ``gaussian+gsm`` polynomial terms (window and parent up to
        degree 2, own coefficient up to ``degree``, squared magnitudes one ring wider).
    scales, energy_scales, sigmas : the gates and the grid of the gated machine (§9).
    ridge, select, holdout : as in the other machines; with ``select`` (default) the held-out
        split picks per grid sigma among the Gaussian score, the polynomial machine, the gated
        machine and the joint solve (ridge 1e-6 or 1e-3).

    Computes on the CPU in float64.
    """

    _FILE = (FORMAT, FORMAT_VERSION, "joint machine", "refit it with `wavescore fit --family strongest`")

    def __init__(self, degree: int = 3, radius: int = 1, bands: str = "same", scales=(1.0, 2.0, 4.0),
                 energy_scales=(1.0, 2.0), sigmas=SIGMA_GRID, wavelet: str = "haar", levels: int | None = None,
                 ridge: float = 1e-6, select: bool = True, holdout: float = 0.1, *, batch_size: int = 500,
                 max_memory: float | None = None):
        self._init_params(locals())

    def _validate(self) -> None:
        self.scales = tuple(float(c) for c in self.scales)
        self.energy_scales = tuple(float(c) for c in self.energy_scales)
        self.sigmas = tuple(float(s) for s in self.sigmas)
        if isinstance(self.degree, bool) or self.degree not in (2, 3):
            raise WavescoreError(f"the joint machine's polynomial terms have degree 2 or 3, got {self.degree!r}")
        self._parts()  # each part validates its own settings

    def _parts(self) -> tuple[ScoreMachine, GatedMachine]:
        common = dict(wavelet=self.wavelet, levels=self.levels, ridge=self.ridge, select=False,
                      batch_size=self.batch_size, max_memory=self.max_memory)
        poly = ScoreMachine(family="gaussian+gsm", degree=self.degree, radius=self.radius, bands=self.bands, **common)
        gates = GatedMachine(scales=self.scales, energy_scales=self.energy_scales, radius=self.radius,
                             bands=self.bands, sigmas=self.sigmas, **common)
        return poly, gates

    @property
    def name(self) -> str:
        poly, gates = self._parts()
        return f"strongest({poly.name} + {gates.name.split('+', 1)[1]})"

    # ------------------------------------------------------------------ memory
    def memory_estimate(self, shape, n_images: int | None = None) -> dict:
        """Bytes a fit needs: both parts' (their sums live side by side) plus the cross sums
        (twice with select) and one batch's weights and neighbour products."""
        poly, gates = self._parts()
        C, H, W = (int(v) for v in shape)
        D, G, S = C * H * W, gates.G, len(self.sigmas)
        L = 2 * (2 * self.radius + 3) ** 2 + 64  # 2 m - 1 + pairs, m = the (2r+3)^2 window and parent
        cross = (2 if self.select else 1) * (S * G * D * (2 * L + 4)) * 8
        batch = (self.batch_size * D * (L + 2 * G * 4)) * 8
        p, g = poly.memory_estimate(shape), gates.memory_estimate(shape)
        total = p["peak_bytes"] + g["total"] + int(1.1 * (cross + batch))
        return {"poly": p["peak_bytes"], "gates": g["total"], "cross": cross, "batch": batch, "total": total, "D": D}

    def _check_memory(self, shape) -> None:
        est = self.memory_estimate(shape)
        limit = memory_budget(self.max_memory)
        if est["total"] > limit:
            raise WavescoreError(f"{self.name} on images {tuple(shape)} needs about {est['total'] / 2**30:.1f} GiB, "
                                 f"more than the {limit / 2**30:.1f} GiB allowed: use fewer sigmas or gates, "
                                 "smaller images, or max_memory=")

    # ------------------------------------------------------------------ sums (the map-reduce protocol, see machine.py)
    def begin(self, reference: torch.Tensor) -> dict:
        self._check_memory(tuple(int(v) for v in reference.shape[1:]))
        self.poly_, self.gates_ = self._parts()
        sums = {"poly": self.poly_.begin(reference), "gates": self.gates_.begin(reference)}
        self._adopt_structure()
        sums["cross"] = self._empty()
        return sums

    def _adopt_structure(self) -> None:
        self.shape_ = self.gates_.shape_
        self.transform_ = self.gates_.transform_
        self._cross = cross_structure(self.poly_, self.gates_)

    def _empty(self) -> dict:
        return _empty_cross(self._cross, len(self.sigmas), self.gates_.G, self.transform_.layout.size)

    def empty_sums(self, sums: dict) -> dict:
        return {"poly": self.poly_.empty_sums(sums["poly"]), "gates": self.gates_.empty_sums(), "cross": self._empty()}

    def coefficients(self, batch: torch.Tensor) -> torch.Tensor:
        return self.gates_.coefficients(batch)

    def update_sums(self, sums: dict, w: torch.Tensor) -> None:
        self.poly_.update_sums(sums["poly"], w)
        self.gates_.update_sums(sums["gates"], w)
        _update_cross(self.gates_, self._cross, sums["cross"], w)

    @staticmethod
    def sums_count(sums: dict) -> int:
        return sums["gates"]["count"]

    @staticmethod
    def merge_sums(a: dict, b: dict) -> dict:
        return {"poly": a["poly"].merge(b["poly"]), "gates": GatedMachine.merge_sums(a["gates"], b["gates"]),
                "cross": {k: a["cross"][k] + b["cross"][k] for k in a["cross"]}}

    def shard_state(self, sums: dict) -> dict:
        return {"poly": self.poly_.shard_state(sums["poly"]), "gates": self.gates_.shard_state(sums["gates"])}

    @classmethod
    def for_shard(cls, params: dict, state: dict) -> "JointMachine":
        m = cls(**params)
        poly_params, gate_params = (p.get_params() for p in m._parts())
        m.poly_ = ScoreMachine.for_shard(poly_params, state["poly"])
        m.gates_ = GatedMachine.for_shard(gate_params, state["gates"])
        m._adopt_structure()
        return m

    def shard_sums(self, batches) -> dict:
        st = self.poly_._shard_state
        sums = {"poly": self.poly_._accumulator(self.shape_, st["shift"], st["scale"]),
                "gates": self.gates_.empty_sums(), "cross": self._empty()}
        return self.add_batches(sums, batches)

    # ------------------------------------------------------------------ fit
    def fit(self, data, *, progress: bool = True) -> "JointMachine":
        """One pass over ``data`` ((N, C, H, W) tensor or an iterable of batches): fitting.stream_fit."""
        return stream_fit(self, data, progress=progress)

    def _candidates(self) -> list[tuple]:
        joint = [("joint", self.degree, r) for r in SELECT_RIDGES]
        return [("gaussian", 0, self.ridge), ("poly", 0, self.ridge), ("gated", 0, self.ridge)] + joint

    def choose(self, sums: dict, x: torch.Tensor, w: torch.Tensor, *, progress: bool = True) -> dict:
        """Both parts' own held-out choices, then per grid sigma the best of the Gaussian score,
        the two parts and the joint solves on the same held-out images and seeded noise."""
        from ._io import progress_bar

        self.poly_.set_moments(sums["poly"])
        poly_choice = self.poly_._choose(x, progress=progress)
        self.poly_.choice_ = poly_choice
        gates_choice = self.gates_._choose(sums["gates"], w, progress)
        self.gates_.set_sums(sums["gates"], gates_choice)
        cands = self._candidates()
        mse = np.zeros((len(self.sigmas), len(cands)))
        for k, s in enumerate(progress_bar(self.sigmas, desc="select joint", enabled=progress, leave=False)):
            y = w + s * noise_for(w.shape, k, seed=20261130)
            for c, cand in enumerate(cands):
                sol = self._solve_grid(sums, k, cand)
                mse[k, c] = float(((y + s * s * self._grid_score(y, k, cand, sol) - w) ** 2).mean())
        best = mse.argmin(1)
        return {"sigmas": list(self.sigmas), "candidates": [list(c) for c in cands], "best": best.tolist(),
                "mse": mse.tolist(), "n_images": int(w.shape[0]), "poly": poly_choice, "gates": gates_choice,
                "chosen": [self._label(cands[b]) for b in best]}

    @staticmethod
    def _label(cand) -> str:
        kind, d, r = cand
        return f"joint P<={d}, ridge {r:g}" if kind == "joint" else kind

    def set_sums(self, sums: dict, choice: dict | None = None) -> "JointMachine":
        if self.sums_count(sums) < 2:
            raise WavescoreError("the joint machine needs at least 2 images")
        self.poly_.set_sums(sums["poly"], None if choice is None else choice["poly"])
        self.gates_.set_sums(sums["gates"], None if choice is None else choice["gates"])
        self.choice_ = choice
        self.solutions_ = {}
        for k in range(len(self.sigmas)):
            cand = self._picked(k)
            if cand[0] == "joint":
                self.solutions_[k] = self._solve_grid(sums, k, cand)
        self.n_samples_ = self.sums_count(sums)
        return self

    def _picked(self, k: int) -> tuple:
        if self.choice_ is None:
            return ("joint", self.degree, float(self.ridge))
        kind, d, r = self.choice_["candidates"][self.choice_["best"][k]]
        return (kind, int(d), float(r))

    def _solve_grid(self, sums: dict, k: int, cand) -> dict | None:
        """The joint optimum at grid sigma k (method.md §8 bordered by §10's cross moments)."""
        if cand[0] != "joint":
            return None
        _, degree, ridge = cand
        extra = _GateBlock(self, sums, k)
        variant = self.poly_._variant(degree, ridge)
        thetas = variant._mixed_theta(self.sigmas[k], extra)
        const = -(extra.beta * extra.ef.T).sum(1)
        return {"thetas": thetas, "beta": extra.beta, "const": const}

    # ------------------------------------------------------------------ score
    def _require_fitted(self) -> None:
        if not hasattr(self, "n_samples_"):
            raise WavescoreError("this JointMachine is not fitted yet: call fit(data) or JointMachine.load(path)")

    def _grid_score(self, w: torch.Tensor, k: int, cand, sol) -> torch.Tensor:
        """The score of candidate ``cand`` at grid sigma k (what the held-out choice scores)."""
        s = self.sigmas[k]
        kind = cand[0]
        if kind == "gaussian":
            return self.gates_.gaussian_score(w, s)
        if kind == "gated":
            return self.gates_.gaussian_score(w, s) + self.gates_._correction(w, k) / (s * s)
        if kind == "poly":
            return self.poly_.wavelet_score(w, s)
        out = self.poly_.score_with(w, sol["thetas"])
        return out + (self.gates_._features(w, s) * sol["beta"].T).sum(1) + sol["const"]

    def wavelet_score(self, w: torch.Tensor, sigma: float) -> torch.Tensor:
        """Score in the wavelet domain: (N, D) -> (N, D). Above the grid the polynomial machine;
        on it the chosen candidate; between grid points the Gaussian score plus the chosen
        candidates' corrections, interpolated in log sigma (as GatedMachine.wavelet_score)."""
        self._require_fitted()
        sigma = float(sigma)
        if not sigma > 0 or not math.isfinite(sigma):
            raise WavescoreError(f"sigma must be a positive finite number, got {sigma}")
        brackets = self.gates_._brackets(sigma)
        if not brackets:
            return self.poly_.wavelet_score(w, sigma)
        out = torch.empty_like(w)
        for s0 in range(0, w.shape[0], 2000):
            wc = w[s0 : s0 + 2000]
            if len(brackets) == 1 and abs(self.sigmas[brackets[0][0]] - sigma) <= 1e-12 * sigma:
                k = brackets[0][0]
                out[s0 : s0 + 2000] = self._grid_score(wc, k, self._picked(k), self.solutions_.get(k))
                continue
            acc = self.gates_.gaussian_score(wc, sigma)
            for k, weight in brackets:
                sk = self.sigmas[k]
                corr = (self._grid_score(wc, k, self._picked(k), self.solutions_.get(k))
                        - self.gates_.gaussian_score(wc, sk))
                acc += (weight * sk * sk / sigma**2) * corr
            out[s0 : s0 + 2000] = acc
        return out

    # ------------------------------------------------------------------ persistence
    def _archive(self) -> tuple[dict, dict]:
        """Both parts' fitted state and the joint solutions of the grid, in one file."""
        self._require_fitted()
        arrays = {f"poly.{k}": v.numpy() for k, v in self.poly_.moments_.state_dict().items() if k != "count"}
        g = self.gates_
        for name in ("centre", "mean", "lam", "V", "beta", "Z", "const"):
            arrays[f"gates.{name}"] = getattr(g, f"{name}_").numpy()
        for k, sol in self.solutions_.items():
            for j, t in enumerate(sol["thetas"]):
                arrays[f"joint{k}.theta{j}"] = t.numpy()
            arrays[f"joint{k}.beta"] = sol["beta"].numpy()
            arrays[f"joint{k}.const"] = sol["const"].numpy()
        header = {"format": FORMAT, "version": FORMAT_VERSION, "params": self.get_params(), "shape": list(self.shape_),
                  "count": self.n_samples_, "poly_count": self.poly_.moments_.count,
                  "groups": len(self.poly_.moments_.grams), "fit_time": getattr(self, "fit_time_", None),
                  "choice": self.choice_, "solved": sorted(self.solutions_)}
        return header, arrays

    @classmethod
    def _from_archive(cls, path: Path, header: dict, arr: dict, hint: str) -> "JointMachine":
        m = cls._from_params(path, header["params"], hint)
        poly, gates = m._parts()
        choice = header.get("choice")
        sub = lambda p: {k[len(p):]: v for k, v in arr.items() if k.startswith(p)}  # noqa: E731
        m.poly_ = ScoreMachine._from_archive(
            path, {"params": poly.get_params(), "shape": header["shape"], "count": header["poly_count"],
                   "groups": header["groups"], "choice": None if choice is None else choice["poly"]},
            sub("poly."), hint)
        m.gates_ = GatedMachine._from_archive(
            path, {"params": gates.get_params(), "shape": header["shape"], "count": header["count"],
                   "choice": None if choice is None else choice["gates"]}, sub("gates."), hint)
        m.shape_, m.transform_ = m.gates_.shape_, m.gates_.transform_
        m.choice_ = choice
        m.solutions_ = {}
        n_groups = len(m.poly_.moments_.groups)
        for k in header["solved"]:
            a = sub(f"joint{int(k)}.")
            thetas = [a[f"theta{j}"] for j in range(n_groups)]
            if not all(torch.isfinite(t).all() for t in a.values()):
                raise WavescoreError(f"{path} holds non-finite joint parameters: {hint}")
            m.solutions_[int(k)] = {"thetas": thetas, "beta": a["beta"], "const": a["const"]}
        if sorted(m.solutions_) != sorted(k for k in range(len(m.sigmas)) if m._picked(k)[0] == "joint"):
            raise WavescoreError(f"{path} does not hold the joint solution of every grid sigma that chose it: {hint}")
        m.n_samples_, m.fit_time_ = header["count"], header.get("fit_time")
        return m
