"""Hebbian rules in the fused FastHebb form, as pure functions.

Every rule turns the pre-activations ``u`` of a layer into two terms such that the batch update is

    ΔW = Yᵀ X − M W

with X the layer's input patches (N×D), Y a post-synaptic coefficient matrix (N×K) and M a K×K
matrix (given as a (K,) vector when it is diagonal). The layer computes ``Yᵀ X`` with a single
convolution weight-gradient (or matmul) kernel; no N×K×D tensor is ever built.

Layouts: ``u`` and ``y`` are (B, K, Ho, Wo) for convolutions and (B, K) for linear layers; the
N = B·Ho·Wo rows of docs/design.md §3 are every position but axis 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

EPS = 1e-8


def rows(t: Tensor) -> int:
    """N: the number of (sample, position) rows in a (B, K, ...) tensor."""
    return t.numel() // t.shape[1]


def colsum(t: Tensor) -> Tensor:
    """Sum over every axis but the channel axis 1: (B, K, ...) -> (K,)."""
    dims = [d for d in range(t.dim()) if d != 1]
    return t.sum(dim=dims)


def channel_gram(y: Tensor) -> Tensor:
    """Yᵀ Y: (B, K, ...) -> (K, K)."""
    k = y.shape[1]
    y2 = y.transpose(0, 1).reshape(k, -1)
    return y2 @ y2.T


def _per_channel(v: Tensor, like: Tensor) -> Tensor:
    """Broadcast a (K,) vector against a (B, K, ...) tensor."""
    return v.view(1, -1, *([1] * (like.dim() - 2)))


def neuron_norms(w: Tensor) -> Tensor:
    """‖w_k‖ for each of the K neurons of a (K, ...) weight -> (K,).

    A reduction over the trailing dims, not ``flatten(1)``: that would copy a channels-last
    weight (21 MB for SoftHebb's third layer) on every call.
    """
    return torch.linalg.vector_norm(w, dim=tuple(range(1, w.dim())))


@dataclass
class HebbTerms:
    """The rule-specific terms of ΔW = (Yᵀ X − M W) / den.

    Y·X sums, M and den are all sums over the N rows, so a batch split into shards (processes
    or pieces of one batch) gives ΔW exactly by summing each shard's Yᵀ X − M W and den before
    the one division (docs/design.md §9)."""

    y: Tensor  # same layout as u: (B, K, Ho, Wo) or (B, K)
    m: Tensor  # (K,) diagonal of M, or (K, K) full (lower-triangular for hpca)
    den: Tensor | None = None  # () or (K,): divides ΔW (per neuron); None: 1


def hpca_terms(u: Tensor, w: Tensor) -> HebbTerms:
    """Hebbian PCA, nonlinear Sanger rule: Y = relu(U), ΔW = (YᵀX − tril(YᵀY) W) / N."""
    y = torch.relu(u)
    return HebbTerms(y=y, m=torch.tril(channel_gram(y)),
                     den=torch.full((), float(rows(u)), dtype=u.dtype, device=u.device))


def swta_terms(u: Tensor, w: Tensor, x_norm: Tensor, temperature: float = 0.02) -> HebbTerms:
    """Soft winner-take-all with weighted-average reduction.

    s = ((1 + cos(w_k, x_n)) / 2)², Z = softmax(s / T) over K, Gc = Z ⊙ Z / colsum(Z),
    ΔW = Gcᵀ X − diag(colsum(Gc)) W = ((Z⊙Z)ᵀ X − diag(colsum(Z⊙Z)) W) / colsum(Z) per neuron.
    ``x_norm`` is ‖x_n‖ per row: (B, 1, Ho, Wo) or (B, 1).
    """
    cos = u / (_per_channel(neuron_norms(w), u) * x_norm).clamp_min(EPS)
    s = ((1 + cos) / 2) ** 2
    z = torch.softmax(s / temperature, dim=1)
    zz = z * z
    return HebbTerms(y=zz, m=colsum(zz), den=colsum(z))


def softhebb_terms(u: Tensor, w: Tensor, t_inv: float = 1.0) -> HebbTerms:
    """SoftHebb: Y = softmax(t_inv·U) over K, negated for every channel but the argmax;
    ΔW = YᵀX − diag(Σₙ Y ⊙ U) W."""
    soft = torch.softmax(t_inv * u, dim=1)
    winner = soft.argmax(dim=1, keepdim=True)  # softmax keeps the order of u
    y = soft.neg().scatter_(1, winner, soft.gather(1, winner))
    return HebbTerms(y=y, m=colsum(y * u))


def divide(numerator: Tensor, den: Tensor | None) -> Tensor:
    """ΔW from its summed numerator Yᵀ X − M W (shape of the weight) and den (() or (K,))."""
    if den is None:
        return numerator
    return numerator / den.clamp_min(EPS).view(-1, *([1] * (numerator.dim() - 1)))


def softhebb_step_scale(delta: Tensor, w: Tensor) -> Tensor:
    """SoftHebb's update direction: ΔW / max|ΔW|, times |‖w_k‖ − 1|^0.5 per neuron."""
    rate = (neuron_norms(w) - 1).abs().add(1e-10).sqrt()
    return delta / delta.abs().max().clamp_min(EPS) * rate.view(-1, *([1] * (w.dim() - 1)))


def softhebb_distance(w: Tensor, delta: Tensor) -> Tensor:
    """mean_k |‖w_k‖ − 1|: SoftHebb's neurons converge to the unit sphere (its rate vanishes there)."""
    return (neuron_norms(w) - 1).abs().mean()


def hpca_distance(w: Tensor, delta: Tensor) -> Tensor:
    """‖W Wᵀ − I‖_F / √K: Sanger's rule converges to K orthonormal rows (the learned subspace)."""
    w2 = w.reshape(w.shape[0], -1).float()
    gram = w2 @ w2.T
    gram.diagonal().sub_(1)
    return torch.linalg.matrix_norm(gram) / w.shape[0] ** 0.5


def swta_distance(w: Tensor, delta: Tensor) -> Tensor:
    """‖ΔW‖_F / ‖W‖_F on the latest batch: soft-WTA neurons converge to the soft centroid of the
    inputs they win (ΔW_k = m_k (x̄_k − w_k) vanishes there), while their norms drift freely."""
    return torch.linalg.vector_norm(delta) / torch.linalg.vector_norm(w).clamp_min(EPS)


# Per-row decay coefficients c (N, K) with Σ_n of the rows' decays equal to the M W term, for
# references that build one K×D update per row: ΔW_n[k] = y_nk x_n − c_nk w_k (diagonal M), or
# ΔW_n[k] = y_nk (x_n − Σ_{j≤k} c_nj w_j) (cumulative: hpca's lower-triangular M); the sum of
# the rows' updates is then divided by den.
def softhebb_row_decay(y: Tensor, u: Tensor) -> Tensor:
    return y * u  # Σ_n y_nk u_nk = diag(M)


def swta_row_decay(y: Tensor, u: Tensor) -> Tensor:
    return y  # Σ_n Gc_nk = diag(M)


def hpca_row_decay(y: Tensor, u: Tensor) -> Tensor:
    return torch.relu(u)  # with y = relu(u): tril(Σ_n y_n c_nᵀ) = tril(YᵀY) = M


def output_normalized(u: Tensor, w: Tensor) -> Tensor:
    """wᵀx / ‖w‖: the inference response of soft-WTA neurons."""
    return u / _per_channel(neuron_norms(w), u).clamp_min(EPS)


@dataclass(frozen=True)
class Rule:
    """A plasticity rule: how it computes its terms, its defaults and its inference output."""

    name: str
    terms: Callable[..., HebbTerms] | None  # None: no plasticity
    defaults: dict[str, Any] = field(default_factory=dict)
    needs_x_norm: bool = False
    output: Callable[[Tensor, Tensor], Tensor] | None = None  # (u, w) -> response; None: u
    step_scale: Callable[[Tensor, Tensor], Tensor] | None = None  # (ΔW, w) -> direction
    init_radius: float = 1.0  # expected ‖w_k‖ at init: weights ~ N(0, radius² / fan_in)
    # distance from the rule's fixed point: (weights, latest raw ΔW) -> scalar; None: not measured
    distance: Callable[[Tensor, Tensor], Tensor] | None = None
    distance_measure: str | None = None  # that distance as a formula, for logs and model cards
    # per-row decay coefficients (rows of Y, rows of U) -> (N, K); see softhebb_row_decay
    row_decay: Callable[[Tensor, Tensor], Tensor] | None = None
    cumulative_decay: bool = False  # M is lower-triangular: row k decays by Σ_{j≤k} c_nj w_j


RULES: dict[str, Rule] = {
    "hpca": Rule("hpca", hpca_terms, distance=hpca_distance,
                 distance_measure="‖W Wᵀ − I‖_F / √K", row_decay=hpca_row_decay,
                 cumulative_decay=True),
    "swta": Rule("swta", swta_terms, {"temperature": 0.02}, needs_x_norm=True,
                 output=output_normalized, distance=swta_distance,
                 distance_measure="‖ΔW‖_F / ‖W‖_F", row_decay=swta_row_decay),
    "softhebb": Rule("softhebb", softhebb_terms, {"t_inv": 1.0}, step_scale=softhebb_step_scale,
                     init_radius=25.0,  # SoftHebb starts far from the unit sphere it converges to
                     distance=softhebb_distance, distance_measure="mean_k |‖w_k‖ − 1|",
                     row_decay=softhebb_row_decay),
    "none": Rule("none", None),
}


def get_rule(name: str) -> Rule:
    """Look a rule up by its CLI name."""
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown Hebbian rule {name!r}; choose one of {sorted(RULES)}") from None
