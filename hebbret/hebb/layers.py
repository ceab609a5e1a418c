"""Plastic layers: an ordinary forward pass, plus the fused FastHebb update of their weights.

In plastic mode (``layer.plastic = True``) the forward pass also computes ΔW from the layer's own
input and pre-activation and stashes it in ``layer.delta``; the training loop hands it to an
optimizer. No autograd graph is involved: call them under ``torch.no_grad()`` while learning.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .rules import HebbTerms, Rule, divide, get_rule

GRAM_METHODS = ("auto", "conv", "unfold")
# "auto" takes im2col + one GEMM on the CPU for channels-last inputs whose patches have at least
# this many values (D = C·kh·kw): oneDNN's weight-gradient kernel reaches ~60% of the GEMM rate
# there (docs/results.md, "Yᵀ X on the CPU"), and the patch matrix costs little next to it
AUTO_UNFOLD_MIN_D = 512


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _autocast_dtype(x: Tensor) -> torch.dtype | None:
    """The low-precision dtype when autocast is on for ``x``'s device, else None."""
    kind = x.device.type
    if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return None


class _HebbLayer(nn.Module):
    """Shared machinery: rule lookup, plastic flag, ΔW = Yᵀ X − M W."""

    weight: nn.Parameter

    def _init_rule(self, rule: str, rule_params: dict) -> None:
        self.rule: Rule = get_rule(rule)
        unknown = set(rule_params) - set(self.rule.defaults)
        if unknown:
            raise ValueError(
                f"rule {rule!r} takes parameters {sorted(self.rule.defaults)}, got {sorted(unknown)}"
            )
        self.rule_params = {**self.rule.defaults, **rule_params}
        self.plastic = False
        self.delta: Tensor | None = None

    def reset_parameters(self) -> None:
        """Gaussian init whose neurons have norm about ``init_radius`` (None: the rule's)."""
        fan_in = self.weight[0].numel()
        radius = self.init_radius if self.init_radius is not None else self.rule.init_radius
        nn.init.normal_(self.weight, 0.0, radius / math.sqrt(fan_in))

    def respond(self, u: Tensor) -> Tensor:
        return u if self.rule.output is None else self.rule.output(u, self.weight)

    def _delta(self, x: Tensor, u: Tensor) -> Tensor:
        """ΔW for input ``x`` (already padded) and its pre-activation ``u``."""
        return divide(*self.delta_parts(x, u))

    def delta_parts(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor | None]:
        """(Yᵀ X − M W, den) for padded input ``x`` and its pre-activation ``u``: sums over the
        rows, so the parts of several shards of a batch add up to the whole batch's."""
        w = self.weight.detach()
        if self.rule.terms is None:
            return torch.zeros_like(w), None
        low = _autocast_dtype(x)
        if low is None:
            return self._combine(x, u, w, x)
        # under autocast: Yᵀ X in the low dtype (it costs as much as the forward), the rest in
        # the weights' dtype
        with torch.autocast(x.device.type, enabled=False):
            return self._combine(x, u.to(w.dtype), w, x.to(low))

    def _combine(self, x: Tensor, u: Tensor, w: Tensor, x_gram: Tensor
                 ) -> tuple[Tensor, Tensor | None]:
        terms = self.rule_terms(x.to(w.dtype), u)
        return self.minus_decay(self.yt_x(x_gram, terms.y).to(w.dtype), terms), terms.den

    # ---- the pieces of a step, public for benchmarks and references (docs/design.md §3):
    # ΔW = divide(minus_decay(yt_x(xp, Y), terms), terms.den) with xp = pad(x),
    # terms = rule_terms(xp, preact(xp))

    def rule_terms(self, xp: Tensor, u: Tensor) -> HebbTerms:
        """The rule's Y, M and den for padded input ``xp`` and its pre-activation ``u``."""
        w = self.weight.detach()
        extra = {"x_norm": self.row_norms(xp)} if self.rule.needs_x_norm else {}
        return self.rule.terms(u, w, **extra, **self.rule_params)

    def minus_decay(self, yx: Tensor, terms: HebbTerms) -> Tensor:
        """Yᵀ X − M W from Yᵀ X (shape of ``weight``) and the rule's M (before den)."""
        w = self.weight.detach()
        if terms.m.dim() == 1:
            return yx - terms.m.view(-1, *([1] * (w.dim() - 1))) * w
        return yx - (terms.m @ w.flatten(1)).view_as(w)

    def as_rows(self, t: Tensor) -> Tensor:
        """(N, K): a per-position tensor (B, K, Ho, Wo) or (B, K) with one row per (b, ho, wo)."""
        return t.movedim(1, -1).reshape(-1, t.shape[1])

    def update_direction(self, delta: Tensor) -> Tensor:
        """The rule's step direction from raw ΔW (SoftHebb: max-normalised, per-neuron rate)."""
        if self.rule.step_scale is None:
            return delta
        return self.rule.step_scale(delta, self.weight.detach())

    @torch.no_grad()
    def hebbian_delta(self, x: Tensor) -> Tensor:
        """Raw ΔW (shape of ``weight``) for the batch ``x``, before learning rate or scaling."""
        x = self.pad(x)
        return self._delta(x, self.preact(x))

    def forward(self, x: Tensor) -> Tensor:
        x = self.pad(x)
        u = self.preact(x)
        if self.plastic:
            with torch.no_grad():
                self.delta = self._delta(x.detach(), u.detach())
        return self.respond(u)

    # geometry-specific pieces
    def pad(self, x: Tensor) -> Tensor:
        """The input as the weights see it (reflect padding applied; zero padding is the conv's)."""
        return x

    def preact(self, xp: Tensor) -> Tensor:
        """U = W ⋆ xp: (B, K, Ho, Wo) or (B, K)."""
        raise NotImplementedError

    def yt_x(self, xp: Tensor, y: Tensor) -> Tensor:
        """Yᵀ X, shaped like ``weight``, without materialising the rows of X."""
        raise NotImplementedError

    def row_norms(self, xp: Tensor) -> Tensor:
        """‖x_n‖ per row: (B, 1, Ho, Wo) or (B, 1)."""
        raise NotImplementedError

    def patch_rows(self, xp: Tensor) -> Tensor:
        """X (N, D): the input patch of every row, in the order of :meth:`as_rows`."""
        raise NotImplementedError


class HebbConv2d(_HebbLayer):
    """2-D convolution whose weight (K, C, kh, kw) learns with a Hebbian rule.

    Args:
        padding_mode: "zeros" or "reflect".
        gram: how Yᵀ X is computed: "conv" (convolution weight-gradient kernel, oneDNN/cuDNN),
            "unfold" (im2col in the input's memory layout + one matmul) or "auto" (unfold for
            channels-last CPU inputs with C·kh·kw ≥ ``AUTO_UNFOLD_MIN_D``, else conv).
        rule_params: the rule's parameters (softhebb: t_inv; swta: temperature).
    Input (B, C, H, W) -> output (B, K, Ho, Wo).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        padding_mode: str = "zeros",
        rule: str = "softhebb",
        gram: str = "auto",
        init_radius: float | None = None,
        **rule_params: float,
    ) -> None:
        super().__init__()
        self.init_radius = init_radius
        if padding_mode not in ("zeros", "reflect"):
            raise ValueError(f"padding_mode must be 'zeros' or 'reflect', got {padding_mode!r}")
        if gram not in GRAM_METHODS:
            raise ValueError(f"gram must be one of {GRAM_METHODS}, got {gram!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = _pair(kernel_size), _pair(stride), _pair(padding)
        self.padding_mode, self.gram = padding_mode, gram
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self._init_rule(rule, rule_params)
        self.reset_parameters()

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, padding_mode={self.padding_mode}, "
                f"rule={self.rule.name}")

    def pad(self, x: Tensor) -> Tensor:
        ph, pw = self.padding
        if self.padding_mode == "reflect" and (ph or pw):
            return F.pad(x, (pw, pw, ph, ph), mode="reflect")
        return x

    def _native_padding(self) -> tuple[int, int]:
        return (0, 0) if self.padding_mode == "reflect" else self.padding

    def preact(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, None, self.stride, self._native_padding())

    def gram_method(self, x: Tensor) -> str:
        """The Yᵀ X method ``yt_x`` takes for padded input ``x``."""
        if self.gram != "auto":
            return self.gram
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        big = self.weight[0].numel() >= AUTO_UNFOLD_MIN_D
        return "unfold" if x.device.type == "cpu" and channels_last and big else "conv"

    def yt_x(self, x: Tensor, y: Tensor) -> Tensor:
        y = y.to(x.dtype)
        method = self.gram_method(x)
        if method == "conv":
            # Yᵀ X is the weight gradient of the convolution with grad-output Y.
            return torch.ops.aten.convolution_backward(
                y, x, self.weight.detach().to(x.dtype), None, list(self.stride),
                list(self._native_padding()), [1, 1], False, [0, 0], 1, [False, True, False],
            )[1]
        if x.is_contiguous(memory_format=torch.channels_last):
            return self._yt_x_nhwc(x, y)
        patches = F.unfold(x, self.kernel_size, padding=self._native_padding(), stride=self.stride)
        k, d = self.out_channels, patches.shape[1]
        y2 = y.transpose(0, 1).reshape(k, -1)  # (K, N)
        x2 = patches.transpose(1, 2).reshape(-1, d)  # (N, D)
        return (y2 @ x2).view_as(self.weight)

    def _yt_x_nhwc(self, x: Tensor, y: Tensor) -> Tensor:
        """Yᵀ X from channels-last X: patches (B·Ho·Wo, kh·kw·C) in one copy, one GEMM; the
        (K, kh, kw, C) product is the weight's shape with channels-last strides."""
        ph, pw = self._native_padding()
        xh = (F.pad(x, (pw, pw, ph, ph)) if ph or pw else x).permute(0, 2, 3, 1)  # (B, H, W, C)
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        patches = xh.unfold(1, kh, sh).unfold(2, kw, sw)  # (B, Ho, Wo, C, kh, kw), a view
        patches = patches.permute(0, 1, 2, 4, 5, 3).reshape(-1, kh * kw * self.in_channels)
        rows = y.permute(0, 2, 3, 1).reshape(-1, self.out_channels)  # (B·Ho·Wo, K)
        return (rows.T @ patches).view(self.out_channels, kh, kw, -1).permute(0, 3, 1, 2)

    def patch_rows(self, xp: Tensor) -> Tensor:
        patches = F.unfold(xp, self.kernel_size, padding=self._native_padding(), stride=self.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])

    def row_norms(self, x: Tensor) -> Tensor:
        ones = x.new_ones(1, *self.weight.shape[1:])
        sq = F.conv2d(x * x, ones, None, self.stride, self._native_padding())
        return sq.clamp_min(0).sqrt()  # (B, 1, Ho, Wo)


class HebbLinear(_HebbLayer):
    """Fully connected layer whose weight (K, D) learns with a Hebbian rule. (B, D) -> (B, K)."""

    def __init__(self, in_features: int, out_features: int, rule: str = "softhebb",
                 init_radius: float | None = None, **rule_params: float) -> None:
        super().__init__()
        self.init_radius = init_radius
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self._init_rule(rule, rule_params)
        self.reset_parameters()

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rule={self.rule.name}"

    def preact(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)

    def yt_x(self, x: Tensor, y: Tensor) -> Tensor:
        return y.to(x.dtype).T @ x

    def row_norms(self, x: Tensor) -> Tensor:
        return x.norm(dim=1, keepdim=True)  # (B, 1)

    def patch_rows(self, xp: Tensor) -> Tensor:
        return xp
