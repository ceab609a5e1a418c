"""The method FastHebb replaced, as a reference: one K×D update per (sample, position) row,
built from the layer's own step pieces (docs/design.md §3) and summed.

``materialised_delta(layer, x)`` equals ``layer.hebbian_delta(x)`` up to float rounding (tested),
at O(N·K·D) memory traffic instead of one matrix product: ``tools/bench_hebb.py`` times the two.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hebbret.hebb.layers import HebbConv2d, HebbLinear
from hebbret.hebb.rules import divide


@torch.no_grad()
def row_matrices(layer: HebbConv2d | HebbLinear, x: Tensor
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Per-row patches X (N, D), coefficients Y (N, K), decay coefficients C (N, K)
    (``Rule.row_decay``) and the rule's den, from the layer's own step pieces, so that
    (Σ_n ΔW_n) / den = ΔW."""
    if layer.rule.row_decay is None:
        raise ValueError(f"rule {layer.rule.name!r} has no per-row form")
    xp = layer.pad(x)
    u = layer.preact(xp)
    terms = layer.rule_terms(xp, u)
    xr, yr, ur = layer.patch_rows(xp), layer.as_rows(terms.y), layer.as_rows(u)
    return xr, yr.to(xr.dtype), layer.rule.row_decay(yr, ur).to(xr.dtype), terms.den


@torch.no_grad()
def materialised_delta(layer: HebbConv2d | HebbLinear, x: Tensor, chunk_mb: float = 256.0,
                       max_rows: int | None = None) -> Tensor:
    """ΔW the pre-FastHebb way: build every row's K×D update in (n_chunk, K, D) chunks and sum.

    ``max_rows`` stops after that many (sample, position) rows (for timing a part of a sample).
    """
    w = layer.weight.detach()
    w2 = w.flatten(1)  # (K, D)
    k, d = w2.shape
    xr, yr, decay, den = row_matrices(layer, x)
    if max_rows is not None:
        xr, yr, decay = xr[:max_rows], yr[:max_rows], decay[:max_rows]
    chunk = max(1, int(chunk_mb * 2**20 / 4) // (k * d))
    cumulative = layer.rule.cumulative_decay
    acc = torch.zeros_like(w2)
    for s in range(0, xr.shape[0], chunk):
        xs, ys, cs = xr[s:s + chunk], yr[s:s + chunk], decay[s:s + chunk]
        upd = ys[:, :, None] * xs[:, None, :]  # (n, K, D): y_nk x_n
        if cumulative:
            # y_nk Σ_{j≤k} p_nj w_j: the cumulative sum over neurons of p_nj w_j
            upd -= ys[:, :, None] * (cs[:, :, None] * w2[None]).cumsum(dim=1)
        else:
            upd -= cs[:, :, None] * w2[None]  # c_nk w_k
        acc += upd.sum(dim=0)
    return divide(acc.view_as(w), den)
