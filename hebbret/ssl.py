"""Self-supervised backprop baselines (issue 23): the same backbone a Hebbian run trains, trained
end to end with lightly's SimCLR or BYOL (its losses, heads, momentum utilities and
augmentations) for a wall-clock
budget, then saved as an ordinary run dir (model card, safetensors, the descriptor PCA), so
embed / index / eval / serve treat it like any backbone.

Needs the optional extra: ``pip install 'hebbret[ssl]'`` (lightly); the core does not import it.
A killed run resumes from its last checkpoint and trains until the budget is spent (the data
order and augmentations after a resume are freshly seeded, not a replay).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ._io import atomic_path
from .artifacts import TRAIN_STATE, is_complete
from .config import SSLConfig
from .data import native_format, open_dataset, scan_image_folder
from .embed import fit_descriptor_pca
from .models import HebbNet, create_model
from .progress import progress
from .runs import save_run
from .runtime import pick_device, release_freed_memory

log = logging.getLogger(__name__)


def require_lightly() -> Any:
    """The lightly modules this baseline uses, or a clear error naming the extra."""
    try:
        from lightly import loss, transforms
        from lightly.models import modules
    except ImportError:
        raise ValueError("self-supervised baselines need lightly: pip install 'hebbret[ssl]'"
                         ) from None
    return loss, modules, transforms


HEBBIAN_ONLY_KWARGS = ("init_radius",)  # a Hebbian recipe's start, not the architecture


def backprop_kwargs(model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The architecture of a Hebbian run's ``model_kwargs`` (widths, ...) without its Hebbian
    initialisation: the same net, trained by backprop from the backbone's default start."""
    return {k: v for k, v in model_kwargs.items() if k not in HEBBIAN_ONLY_KWARGS}


class TwoViews(Dataset):
    """Every image of a folder as two augmented views (C, S, S) each; labels are not read."""

    def __init__(self, root: str | os.PathLike, in_chans: int, transform: Any) -> None:
        self.root, self.in_chans, self.transform = Path(root), in_chans, transform
        self.items, _ = scan_image_folder(root)
        if not self.items:
            raise ValueError(f"no images under {root}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor] | None:
        try:
            with Image.open(self.root / self.items[i].path) as img:
                img = img.convert("L" if self.in_chans == 1 else "RGB")
                return tuple(self.transform(img))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None  # an undecodable file is skipped (collate drops it)


def _pairs(batch: list[tuple[Tensor, Tensor] | None]) -> tuple[Tensor, Tensor] | None:
    good = [b for b in batch if b is not None]
    if len(good) < 2:
        return None
    return torch.stack([g[0] for g in good]), torch.stack([g[1] for g in good])


def _views(in_chans: int, size: int, mean: Any, std: Any) -> Any:
    """lightly's SimCLR augmentations at ``size``; no blur on small images, no colour on gray."""
    _, _, transforms = require_lightly()
    gray = {"cj_sat": 0.0, "cj_hue": 0.0, "random_gray_scale": 0.0} if in_chans == 1 else {}
    return transforms.SimCLRTransform(input_size=size, gaussian_blur=0.0 if size < 64 else 0.5,
                                      normalize={"mean": list(mean), "std": list(std)}, **gray)


def train_ssl(config: SSLConfig | str, **overrides: Any) -> Path:
    """Train ``cfg.model`` with ``cfg.method`` (SimCLR or BYOL) on the images of ``cfg.data`` for
    ``cfg.budget_s`` seconds of training steps; returns the run dir (as ``hebbret pretrain``)."""
    cfg = SSLConfig(data=config, **overrides) if isinstance(config, str) else config
    loss_mod, modules, _ = require_lightly()
    out = Path(cfg.out)
    if is_complete(out):
        log.info("%s is already complete", out)
        return out
    native_chans, native_size = native_format(cfg.data)
    in_chans = cfg.in_chans or native_chans
    size = cfg.img_size or (native_size[0] if native_size else 32)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, in_chans=in_chans, img_size=size, rule="none",
                         **cfg.model_kwargs)
    nets = _networks(cfg.method, model, modules)
    device = pick_device(cfg.device)
    model.to(device).train()
    nets.to(device).train()
    trained = [q for q in (*model.parameters(), *nets.parameters()) if q.requires_grad]
    opt = torch.optim.SGD(trained, lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    pos = {"seconds": 0.0, "steps": 0, "images": 0, "epoch": 0, "loss_first": None, "loss": None}
    if cfg.resume and (out / TRAIN_STATE).exists():
        state = torch.load(out / TRAIN_STATE, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        nets.load_state_dict(state["nets"])
        opt.load_state_dict(state["optimizer"])
        pos = state["position"]
        log.info("resuming %s after %.1f s of its %.0f s budget", out, pos["seconds"], cfg.budget_s)
    out.mkdir(parents=True, exist_ok=True)
    cfg_json = model.default_cfg
    views = TwoViews(cfg.data, in_chans, _views(in_chans, size, cfg_json["mean"], cfg_json["std"]))
    _train(cfg, model, nets, opt, _criterion(cfg, loss_mod), views, pos, device, out)
    if pos["steps"] == 0:
        raise ValueError(f"no batch of two decodable images under {cfg.data}; nothing trained")
    model.eval()
    dataset = open_dataset(cfg.data, "train", in_chans, size, mean=cfg_json["mean"],
                           std=cfg_json["std"])
    pca, _ = fit_descriptor_pca(model, dataset, cfg.descriptor_dims, cfg.seed, device,
                                cfg.num_workers, cfg.quiet, cfg.flip)
    save_run(model.cpu(), out, training={
        "kind": "ssl", "method": cfg.method, "config": asdict(cfg), "in_chans": in_chans,
        "img_size": size, "train_seconds": round(pos["seconds"], 2), "steps": pos["steps"],
        "images_seen": pos["images"], "loss_first": pos["loss_first"], "loss_last": pos["loss"],
        "descriptor_pca": pca, "settings": "lightly's CIFAR-10 benchmark (see SSLConfig)"})
    release_freed_memory()
    log.info("wrote %s (%s, %d steps, %.1f s)", out, cfg.method, pos["steps"], pos["seconds"])
    return out


def _networks(method: str, model: HebbNet, modules: Any) -> nn.ModuleDict:
    """The method's heads around ``model``: SimCLR's projection head (D -> 512 -> 128); BYOL's
    projection (D -> 1024 -> 256) and prediction heads, plus momentum copies of the backbone and
    projection head that get no gradients (lightly's CIFAR-10 benchmark sizes)."""
    from lightly.models.utils import deactivate_requires_grad

    if method == "simclr":
        return nn.ModuleDict({"head": modules.SimCLRProjectionHead(model.num_features, 512, 128)})
    nets = nn.ModuleDict({"head": modules.BYOLProjectionHead(model.num_features, 1024, 256),
                          "predictor": modules.BYOLPredictionHead(256, 1024, 256)})
    nets["model_m"], nets["head_m"] = copy.deepcopy(model), copy.deepcopy(nets["head"])
    deactivate_requires_grad(nets["model_m"])
    deactivate_requires_grad(nets["head_m"])
    return nets


def _criterion(cfg: SSLConfig, loss_mod: Any) -> nn.Module:
    if cfg.method == "simclr":
        return loss_mod.NTXentLoss(temperature=cfg.temperature)
    return loss_mod.NegativeCosineSimilarity()


def _train(cfg: SSLConfig, model: HebbNet, nets: nn.ModuleDict, opt: torch.optim.Optimizer,
           criterion: nn.Module, views: TwoViews, pos: dict[str, Any], device: torch.device,
           out: Path) -> None:
    """Epochs of shuffled batches until ``pos["seconds"]`` (wall time of the steps, loading
    included) reaches the budget; a checkpoint at most every ``checkpoint_every_s``."""
    bar = progress(total=cfg.budget_s, initial=min(pos["seconds"], cfg.budget_s), unit="s",
                   quiet=cfg.quiet, desc=f"ssl-{cfg.method}")
    saved = pos["seconds"]
    with bar:
        while pos["seconds"] < cfg.budget_s:
            g = torch.Generator().manual_seed(cfg.seed * 100_003 + pos["epoch"])
            loader = DataLoader(views, min(cfg.batch_size, len(views)), shuffle=True, generator=g,
                                drop_last=True,
                                collate_fn=_pairs, num_workers=cfg.num_workers)
            t0 = time.perf_counter()
            for pair in loader:
                if pair is not None:
                    loss = _step(cfg, model, nets, opt, criterion, pair, pos, device)
                    pos["loss_first"] = loss if pos["loss_first"] is None else pos["loss_first"]
                    pos["loss"], pos["steps"] = loss, pos["steps"] + 1
                    pos["images"] += len(pair[0])
                t1 = time.perf_counter()
                pos["seconds"] += t1 - t0
                bar.update(t1 - t0)
                t0 = t1
                if pos["seconds"] >= cfg.budget_s:
                    break
                if pos["seconds"] - saved >= cfg.checkpoint_every_s:
                    _save_state(out, model, nets, opt, pos)
                    saved = pos["seconds"]
            else:
                pos["epoch"] += 1
    _save_state(out, model, nets, opt, pos)


def _embed(model: HebbNet, x: Tensor) -> Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True)


def _step(cfg: SSLConfig, model: HebbNet, nets: nn.ModuleDict, opt: torch.optim.Optimizer,
          criterion: nn.Module, pair: tuple[Tensor, Tensor], pos: dict[str, Any],
          device: torch.device) -> float:
    """One step of ``cfg.method`` on two views (B, C, S, S) of the same B images; returns the
    loss. BYOL's momentum follows lightly's cosine schedule 0.99 -> 1 over the budget."""
    v = [x.to(device) for x in pair]
    if cfg.method == "simclr":
        z = [nets["head"](_embed(model, x)) for x in v]
        loss = criterion(z[0], z[1])
    else:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(min(int(pos["seconds"] * 1000), int(cfg.budget_s * 1000)),
                            int(cfg.budget_s * 1000), 0.99, 1.0)
        update_momentum(model, nets["model_m"], m)
        update_momentum(nets["head"], nets["head_m"], m)
        p = [nets["predictor"](nets["head"](_embed(model, x))) for x in v]
        with torch.no_grad():
            z = [nets["head_m"](_embed(nets["model_m"], x)) for x in v]
        loss = 0.5 * (criterion(p[0], z[1]) + criterion(p[1], z[0]))
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the {cfg.method} loss became {loss.item()}; try a lower --lr")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _save_state(out: Path, model: HebbNet, nets: nn.ModuleDict, opt: torch.optim.Optimizer,
                pos: dict[str, Any]) -> None:
    with atomic_path(out / TRAIN_STATE) as tmp:
        torch.save({"model": model.state_dict(), "nets": nets.state_dict(),
                    "optimizer": opt.state_dict(), "position": pos}, tmp)
