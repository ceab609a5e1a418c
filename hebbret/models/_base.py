"""What every hebbret backbone shares: blocks that each hold one plastic layer, and timm's API."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..hebb.layers import HebbConv2d, HebbLinear


class Triangle(nn.Module):
    """SoftHebb's activation: relu(x − mean over channels) ** power."""

    def __init__(self, power: float = 1.0) -> None:
        super().__init__()
        self.power = power

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x - x.mean(dim=1, keepdim=True)) ** self.power

    def extra_repr(self) -> str:
        return f"power={self.power}"


class PatchWhitening(nn.Module):
    """ZCA whitening of k×k image patches as a fixed convolution: (B, C, H, W) -> (B, C, H, W).

    Each output pixel is the patch around it (reflect-padded) times the row of the patch ZCA
    matrix U (Λ + ε·mean Λ)^-½ Uᵀ that belongs to the patch's centre pixel, one row per channel
    (Coates & Ng 2011 whiten patches before single-layer feature learning; ε relative to the
    mean eigenvalue, 0.1 as theirs on normalised patches). Nothing here learns by gradient or
    Hebbian rule: :meth:`fit` sets it from images, and until then it is the identity.
    """

    def __init__(self, chans: int, patch: int = 5, eps: float = 0.1) -> None:
        super().__init__()
        if patch < 1 or patch % 2 == 0:
            raise ValueError(f"whitening patch size must be odd and positive, got {patch}")
        if not eps > 0:
            raise ValueError(f"whitening eps must be > 0, got {eps}")
        self.chans, self.patch, self.eps = chans, patch, eps
        weight = torch.zeros(chans, chans, patch, patch)
        weight[range(chans), range(chans), patch // 2, patch // 2] = 1.0
        self.register_buffer("weight", weight)
        self.register_buffer("bias", torch.zeros(chans))

    @torch.no_grad()
    def fit(self, images: Iterable[Tensor]) -> int:
        """Set the filters from batches of images (B, C, H, W); returns the patches used."""
        d = self.chans * self.patch ** 2
        total = torch.zeros(d, dtype=torch.float64, device=self.weight.device)
        outer = torch.zeros(d, d, dtype=torch.float64, device=self.weight.device)
        count = 0
        for x in images:
            rows = F.unfold(x.to(self.weight.device, torch.float32), self.patch)  # (B, d, L)
            rows = rows.transpose(1, 2).reshape(-1, d).double()
            total += rows.sum(0)
            outer += rows.T @ rows
            count += rows.shape[0]
        if count < 2:
            raise ValueError("whitening needs at least two image patches to fit")
        mean = total / count
        cov = outer / count - torch.outer(mean, mean)
        lam, vec = torch.linalg.eigh(cov)
        lam = lam.clamp_min(0)
        if not lam.max() > 0:
            raise ValueError("cannot fit the whitening stem: every image patch it saw is the same "
                             "(constant images?)")
        zca = vec @ torch.diag((lam + self.eps * lam.mean()).rsqrt()) @ vec.T  # (d, d)
        centre = (self.patch // 2) * self.patch + self.patch // 2
        rows = zca[[c * self.patch ** 2 + centre for c in range(self.chans)]]  # (C, d)
        self.weight.copy_(rows.view(self.chans, self.chans, self.patch, self.patch).float())
        self.bias.copy_((-rows @ mean).float())
        return count

    def forward(self, x: Tensor) -> Tensor:
        pad = self.patch // 2
        dtype = x.dtype
        with torch.autocast(x.device.type, enabled=False):  # fp32 even under bf16 autocast
            x = x.float()
            if pad:
                x = F.pad(x, (pad,) * 4, mode="reflect")
            return F.conv2d(x, self.weight, self.bias).to(dtype)

    def extra_repr(self) -> str:
        return f"chans={self.chans}, patch={self.patch}, eps={self.eps}"


def fit_pca(x: np.ndarray, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of the rows of ``x`` (n, d) float32: (mean (d,), components (dim, d), variances (dim,)).

    Exact (eigendecomposition of the float64 covariance) for d <= 4096, else randomised SVD
    (Halko et al.; 4 power iterations, 16 extra directions): for 24,576-d features it takes
    seconds where FAISS's own PCAMatrix training takes many minutes.
    """
    n, d = x.shape
    if dim > min(n, d):
        raise ValueError(f"PCA to {dim} dimensions needs at least {dim} vectors of at least {dim} "
                         f"dimensions; got {n} × {d}")
    t = torch.from_numpy(x)
    mean = t.double().mean(0)
    if d <= 4096:
        c = t.double() - mean
        evals, evecs = torch.linalg.eigh(c.T @ c / n)
        order = evals.argsort(descending=True)[:dim]
        comps, var = evecs[:, order].T, evals[order]
    else:
        torch.manual_seed(seed)
        _, sv, v = torch.svd_lowrank(t, q=min(dim + 16, n, d), niter=4,
                                     M=mean.float().expand(1, d))
        comps, var = v[:, :dim].T.double(), sv[:dim].double() ** 2 / n
    return (mean.float().numpy(), np.ascontiguousarray(comps.float().numpy()),
            var.float().numpy())


class DescriptorPCA(nn.Module):
    """The compact descriptor: a pooled descriptor (B, D) -> (B, dims), L2-normalised, centred,
    projected on its leading principal directions and randomly rotated within them (PCA without
    whitening: on held-out training rows whitening lowered mAP; README, "Images of any size").
    Inner products, hence cosine rankings within the kept directions, are those of the centred
    unit vectors.

    Pretraining fits it on training images (:meth:`fit`); until then, and in run dirs written
    before it existed, it holds nothing (``dims`` 0) and stays out of the state dict, whose
    ``descriptor_pca.mean`` (D,) and ``descriptor_pca.components`` (dims, D) it loads at any
    shape.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", None)
        self.register_buffer("components", None)

    @property
    def dims(self) -> int:
        """Output dimensions; 0 when not fitted."""
        return 0 if self.components is None else int(self.components.shape[0])

    @torch.no_grad()
    def fit(self, x: np.ndarray, dims: int, seed: int = 0) -> None:
        """Fit on descriptors ``x`` (n, D) float32, to ``dims`` ≤ min(n, D) dimensions."""
        x = np.asarray(x, dtype=np.float32)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        mean, comps, _ = fit_pca(x, dims, seed)
        # a seeded random rotation of the kept directions: every output dimension then carries a
        # similar share of the variance, so per-dimension steps downstream (standardising in
        # the probes, SQ/PQ quantisers) do not turn the projection into a whitening
        gen = torch.Generator().manual_seed(seed)
        rotation = torch.linalg.qr(torch.randn(dims, dims, generator=gen, dtype=torch.float64)).Q
        self.mean = torch.from_numpy(mean)
        self.components = (rotation @ torch.from_numpy(comps).double()).float()

    def clear(self) -> None:
        self.mean = self.components = None

    def forward(self, x: Tensor) -> Tensor:
        x = F.normalize(x.float(), dim=1) - self.mean
        return x @ self.components.T

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for name in ("mean", "components"):
            if prefix + name in state_dict:  # take the stored shape; the copy follows
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class HebbNet(nn.Module):
    """Base of hebbret backbones.

    Subclasses fill ``self.blocks`` (each block holds exactly one Hebbian layer, so greedy
    training can stop after block i), ``self.stem`` (fixed preprocessing in front of block 0:
    nn.Identity or a :class:`PatchWhitening` that pretraining fits), ``self.head`` and the
    attributes below, and implement ``forward_head``. ``model_args`` holds the keyword
    arguments that rebuild the model.
    """

    stem: nn.Module
    blocks: nn.ModuleList
    num_features: int
    num_classes: int
    drop_rate: float
    default_cfg: dict[str, Any]
    model_args: dict[str, Any]

    def __init__(self) -> None:
        super().__init__()
        self.descriptor_pca = DescriptorPCA()  # fitted by pretraining; see Extractor

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        return self.default_cfg

    def hebb_layers(self) -> list[HebbConv2d | HebbLinear]:
        """The plastic layers, input to output; layer i lives in ``blocks[i]``."""
        return [m for m in self.modules() if isinstance(m, (HebbConv2d, HebbLinear))]

    @torch.no_grad()
    def hebb_inputs(self, x: Tensor) -> list[Tensor]:
        """The input each Hebbian layer sees in one forward pass of ``x`` (current mode)."""
        seen: dict[int, Tensor] = {}
        hooks = [m.register_forward_hook(
            lambda module, args, out, i=i: seen.__setitem__(i, args[0].detach()))
            for i, m in enumerate(self.hebb_layers())]
        try:
            self(x)
        finally:
            for h in hooks:
                h.remove()
        return [seen[i] for i in range(len(hooks))]

    def hebbian_lrs(self, rule: str | None = None) -> list[float]:
        """The default learning rate of every Hebbian layer for ``rule`` (None: the backbone's
        own rule), as pretraining uses them."""
        hebb = self.default_cfg["hebb"]
        lr = hebb.get("lr_by_rule", {}).get(rule or hebb["rule"], hebb["lr"])
        lr = [float(v) for v in (lr if isinstance(lr, (list, tuple)) else [lr])]
        return lr * len(self.hebb_layers()) if len(lr) == 1 else lr

    def forward_blocks(self, x: Tensor, upto: int | None = None) -> Tensor:
        """Run the stem, then blocks 0..upto (all when None)."""
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if upto is not None and i >= upto:
                break
        return x

    def forward_features(self, x: Tensor) -> Tensor:
        return self.forward_blocks(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.flatten(1)
        if pre_logits:
            return x
        return self.head(self.head_drop(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.model_args["num_classes"] = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _check_input(self, x: Tensor) -> None:
        want = self.default_cfg["input_size"][0]
        if x.dim() != 4 or x.shape[1] != want:
            raise ValueError(f"{type(self).__name__} expects (B, {want}, H, W) input, got {tuple(x.shape)}")


def feature_shape(blocks: nn.Module, in_chans: int, img_size: tuple[int, int]) -> tuple[int, ...]:
    """Shape of one sample's output of ``blocks`` for an input of this size."""
    was_training = blocks.training
    blocks.eval()
    with torch.no_grad():
        out = blocks(torch.zeros(1, in_chans, *img_size))
    blocks.train(was_training)
    return tuple(out.shape[1:])


def to_size(img_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))


_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def model_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop the keyword arguments timm.create_model adds for its own pretrained-weight logic."""
    return {k: v for k, v in kwargs.items() if k not in _TIMM_ONLY_KWARGS}
