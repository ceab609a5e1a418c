"""torch.compile with a safe fallback, for the Hebbian step (docs/design.md, "Compiled step").

:class:`Compiled` wraps a function: its first call with a new kind of arguments compiles it
(one graph, ``fullgraph=True``, so a failure happens before anything runs), later calls replay
the compiled code. Calls whose tensors are shaped unlike the first call's (the last, smaller
batch of an epoch) run the eager function instead of recompiling. If compilation fails (no C
compiler, an unsupported platform, an error inside inductor) the wrapper logs one warning and
runs the eager function from then on: a run never fails for want of a compiler.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

# "auto" compiles where the compiled step was measured faster (tools/bench_softhebb.py,
# docs/results.md "Side by side with SoftHebb's demo step"): on the idle 2-core CPU, best of 3
# rounds, 0.72× the eager step's time at batch 10 (96 ms saved a step) and 0.82× at batch 256;
# compiling cost 50-60 s with a cold inductor cache, won back after ~600 steps of batch 10: this
# many leaves a margin for slower compilers. CUDA is unmeasured: "on".
AUTO_MIN_STEPS = 2000
# graphs one function may have (dynamo's default is 8): a greedy run compiles one per phase, and
# up to 6 phases (hebb_fasthebb_6l) with and without the ok guard exceed 8
RECOMPILE_LIMIT = 32


def compile_wanted(choice: str, device: torch.device, steps: int) -> bool:
    """Whether a run of ``steps`` Hebbian steps on ``device`` compiles its step: ``choice`` is
    "on", "off" or "auto" (on the CPU, for at least AUTO_MIN_STEPS steps)."""
    if choice == "auto":
        return device.type == "cpu" and steps >= AUTO_MIN_STEPS
    return choice == "on"


def _key(value: Any) -> Any:
    """What of one argument decides which compiled graph runs: a tensor's shape and dtype,
    a sequence's items, an object's identity."""
    if isinstance(value, Tensor):
        return ("tensor", tuple(value.shape), value.dtype)
    if isinstance(value, (list, tuple)):
        return tuple(_key(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype)):
        return value
    return id(value)


def _shapes(value: Any) -> Any:
    if isinstance(value, Tensor):
        return tuple(value.shape)
    if isinstance(value, (list, tuple)):
        return tuple(_shapes(v) for v in value)
    return None


class Compiled:
    """``fn`` compiled on first use (default mode on CPU, CUDA graphs through
    ``mode="reduce-overhead"`` on CUDA), falling back to ``fn`` itself with one warning.

    ``starts_step``: a call begins a new training step (with CUDA graphs, the outputs of the
    previous step's calls may be overwritten from then on; a function called later in the same
    step passes False). ``seconds``: the time of every compiling call (compilation and that
    call's own work);
    ``failed``: why compilation was given up, or None.
    """

    def __init__(self, fn: Callable[..., Any], device: torch.device, backend: str = "inductor",
                 starts_step: bool = True) -> None:
        self.fn, self.device, self.starts_step = fn, device, starts_step
        self.cuda_graphs = device.type == "cuda" and backend == "inductor"
        dynamo = torch._dynamo.config
        dynamo.recompile_limit = max(dynamo.recompile_limit, RECOMPILE_LIMIT)
        self.mode = "reduce-overhead" if self.cuda_graphs else None
        self.compiled = torch.compile(fn, fullgraph=True, dynamic=False, backend=backend,
                                      mode=self.mode)
        self.seconds, self.failed = 0.0, None
        self.shapes: Any = None
        self.keys: set[Any] = set()

    def __call__(self, *args: Any) -> Any:
        shapes = _shapes(args)
        if self.shapes is None:
            self.shapes = shapes
        if self.failed is not None or shapes != self.shapes:
            return self.fn(*args)
        if self.cuda_graphs and self.starts_step:  # the previous step's outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        key = _key(args)
        if key in self.keys:
            return self.compiled(*args)
        t0 = time.perf_counter()
        try:
            out = self.compiled(*args)
        except Exception as e:  # noqa: BLE001 - any compiler failure means: run eager
            self.failed = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"
            log.warning("could not compile %s (%s); it runs eager", self.fn.__name__, self.failed)
            return self.fn(*args)
        self.keys.add(key)
        self.seconds += time.perf_counter() - t0
        log.info("compiled %s in %.1f s", self.fn.__name__, time.perf_counter() - t0)
        return out

    def keep(self, t: Tensor) -> Tensor:
        """``t`` made safe to keep past the next call (CUDA graphs overwrite their outputs)."""
        return t.clone() if self.cuda_graphs else t

    def describe(self) -> dict[str, Any]:
        """For logs and model cards: compiled or why not, the mode, the seconds compiling took."""
        return {"compiled": self.failed is None and bool(self.keys), "mode": self.mode or "default",
                "compile_seconds": round(self.seconds, 1), "failed": self.failed}
