"""Shared fixtures: small, seeded folders of real image files."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

TINY_C3 = {"widths": [8, 16, 32]}
TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))  # the tools import their shared code as `_common`, as when run


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (registered in sys.modules: dataclasses look
    their module up there)."""
    script = TOOLS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module  # a narrow hebb_softhebb_c3 that trains in milliseconds


def pattern_image(cls: int, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """uint8 (size, size, 3): class 0 horizontal stripes, 1 vertical, 2 checkerboard, + noise."""
    yy, xx = np.mgrid[:size, :size]
    phase = rng.integers(0, 4)
    base = [((yy + phase) // 2) % 2, ((xx + phase) // 2) % 2, ((xx + yy + phase) // 2) % 2][cls % 3]
    color = rng.uniform(0.4, 1.0, size=3)
    img = base[:, :, None] * color[None, None, :] * 200 + rng.normal(0, 20, (size, size, 3)) + 25
    return np.clip(img, 0, 255).astype(np.uint8)


def write_image_folder(root: Path, classes: int = 3, per_class: int = 8, size: int = 16,
                       seed: int = 0) -> Path:
    """ROOT/class_k/img_i.png, a labeled folder of real PNG files."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(pattern_image(c, rng, size)).save(d / f"img_{i}.png")
    return root


@pytest.fixture(autouse=True)
def packed_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
                        ) -> Path:
    """Every test packs folders into its own cache root, never into ~/.cache."""
    root = tmp_path_factory.mktemp("hebbret-cache")
    monkeypatch.setenv("HEBBRET_CACHE_DIR", str(root))
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    np.random.seed(0)
    yield
