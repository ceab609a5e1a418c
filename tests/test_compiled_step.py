"""The compiled Hebbian step (hebbret/compiling.py) against the eager one, its fallback and
its option.

Capturing a net's step takes dynamo 5-20 s, so every test that compiles is ``slow``: the matrix
(every rule, both backbones, consecutive and greedy, with and without ``ok``) with the
``aot_eager`` backend (graph capture, functionalisation and mutations, eager kernels), every
rule and backbone with inductor (the backend pretraining uses, its generated C++ kernels); the
``cuda`` ones compare CUDA graphs (mode "reduce-overhead") with eager where a GPU exists."""

import copy
import json
import logging

import pytest
import torch

from hebbret import cli, compiling
from hebbret.compiling import AUTO_MIN_STEPS, compile_wanted
from hebbret.config import PretrainConfig
from hebbret.models import create_model
from hebbret.pretraining import CompiledStep, hebbian_step, pretrain

from .conftest import TINY_C3

TINY_6L = {"widths": [4, 4, 4, 4, 8]}
# ΔW: max |compiled − eager| ≤ RTOL · max |eager|, or within ROUNDING × the eager float32 run's
# own error against the same run in float64 (its worst update, each relative to its largest
# entry) where that is larger: ΔW = YᵀX − MW cancels, so float32 rounding alone moves it by
# ~1e-6 of its largest entry on some steps, and the weights the next step starts from drift by
# as much. Measured with inductor: eager vs float64 up to 2.3e-6 on hebb_fasthebb_6l (hpca, the
# im2col product), inductor vs eager up to 3.4e-6 there (1.5× eager's worst error)
RTOL = 1e-6
ROUNDING = 5.0


def tiny_model(name: str, rule: str, gram: str | None = None) -> torch.nn.Module:
    """The tiny net, channels-last; ``gram`` sets every conv layer's Yᵀ X method (None: auto,
    which takes the oneDNN kernel at these widths)."""
    torch.manual_seed(0)
    kwargs = TINY_C3 if name == "hebb_softhebb_c3" else TINY_6L
    model = create_model(name, rule=rule, img_size=16 if name == "hebb_softhebb_c3" else 24,
                         **kwargs)
    for layer in model.hebb_layers():
        if gram is not None and hasattr(layer, "gram"):
            layer.gram = gram
    return model.train().to(memory_format=torch.channels_last)


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps every gradient it applies: −(rule direction), the step's ΔW."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[torch.Tensor] = []

    def step(self, closure=None):
        self.seen += [p.grad.clone() for g in self.param_groups for p in g["params"]
                      if p.grad is not None]
        return super().step(closure)


def sgd(model: torch.nn.Module) -> RecordingSGD:
    return RecordingSGD([{"params": [la.weight], "lr": 0.01} for la in model.hebb_layers()])


def updates(model: torch.nn.Module, batches: list[torch.Tensor], phases: list[list[int]],
            guard: bool, compiled: CompiledStep | None) -> tuple[list[torch.Tensor], list]:
    """The update of every active layer at every step (the gradient SGD applied) and the stats."""
    opt, ok = sgd(model), torch.ones((), dtype=torch.bool) if guard else None
    stats = []
    for active in phases:
        for x in batches:
            stats.append(hebbian_step(model, opt, x, active, measure=True, ok=ok,
                                      compiled=compiled))
    if guard:
        assert bool(ok)
    return opt.seen, stats


def assert_same_steps(name: str, rule: str, mode: str, backend: str, guard: bool,
                      gram: str | None = None) -> CompiledStep:
    eager = tiny_model(name, rule, gram)
    model = copy.deepcopy(eager)
    size = 16 if name == "hebb_softhebb_c3" else 24
    gen = torch.Generator().manual_seed(1)
    batches = [torch.rand(4, 3, size, size, generator=gen).contiguous(
        memory_format=torch.channels_last) for _ in range(2)]
    n = len(eager.hebb_layers())
    phases = [list(range(n))] if mode == "consecutive" else [[i] for i in range(n)]
    compiled = CompiledStep(torch.device("cpu"), backend=backend)
    exact, _ = updates(copy.deepcopy(eager).double(), [b.double() for b in batches], phases,
                       guard, None)
    want, want_stats = updates(eager, batches, phases, guard, None)
    got, got_stats = updates(model, batches, phases, guard, compiled)
    assert compiled.describe()["compiled"], compiled.describe()  # not a silent eager fallback
    assert sum(bool(b.abs().max() > 0) for b in want) > len(want) // 2  # the layers learn
    rounding = max(float((b.double() - c).abs().max() / c.abs().max().clamp_min(1e-30))
                   for b, c in zip(want, exact, strict=True))
    for a, b in zip(got, want, strict=True):
        assert float((a - b).abs().max()) <= max(RTOL, ROUNDING * rounding) * float(b.abs().max())
    for a, b in zip(got_stats, want_stats, strict=True):
        assert [s["layer"] for s in a] == [s["layer"] for s in b]
        for sa, sb in zip(a, b, strict=True):
            for key in ("max_delta", "norm_mean", "distance"):
                assert float(sa[key]) == pytest.approx(float(sb[key]), rel=1e-5, abs=1e-7)
    for ta, tb in zip(model.state_dict().values(), eager.state_dict().values(), strict=True):
        assert torch.allclose(ta.float(), tb.float(), rtol=1e-5, atol=1e-6)  # BatchNorm stats too
    return compiled


COMBOS = [(name, rule, mode) for name in ("hebb_softhebb_c3", "hebb_fasthebb_6l")
          for rule in ("hpca", "swta", "softhebb") for mode in ("consecutive", "greedy")]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()  # every test compiles from scratch, within the recompile limit
    yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_the_compiled_step_equals_the_eager_step():
    for guard in (False, True):
        assert_same_steps("hebb_softhebb_c3", "softhebb", "consecutive", "aot_eager", guard)


@pytest.mark.slow
@pytest.mark.parametrize("name,rule,mode", COMBOS)
def test_every_captured_step_equals_the_eager_step(name, rule, mode):
    for guard in (False, True):
        assert_same_steps(name, rule, mode, "aot_eager", guard)


@pytest.mark.slow
@pytest.mark.parametrize("name,rule,mode", [c for c in COMBOS if c[2] == "consecutive"]
                         + [("hebb_fasthebb_6l", "hpca", "greedy")])
def test_the_inductor_step_equals_the_eager_step(name, rule, mode):
    assert_same_steps(name, rule, mode, "inductor", guard=True)


@pytest.mark.slow
@pytest.mark.parametrize("name,rule", [("hebb_softhebb_c3", "softhebb"),
                                       ("hebb_fasthebb_6l", "hpca")])
def test_the_inductor_step_with_the_im2col_product_equals_the_eager_step(name, rule):
    # the channels-last im2col + GEMM that "auto" takes for wide layers on the CPU
    assert_same_steps(name, rule, "consecutive", "inductor", guard=True, gram="unfold")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", [None, torch.bfloat16])
def test_the_cuda_graph_step_equals_the_eager_step(precision):
    eager = tiny_model("hebb_softhebb_c3", "softhebb").cuda()
    model = copy.deepcopy(eager)
    compiled = CompiledStep(torch.device("cuda"))
    assert compiled.core.mode == "reduce-overhead"
    ok = [torch.ones((), dtype=torch.bool, device="cuda") for _ in range(2)]
    gen = torch.Generator().manual_seed(1)
    kept = []
    for _ in range(5):  # CUDA graphs record after warm-up calls: compare the replays too
        x = torch.rand(4, 3, 16, 16, generator=gen).cuda().contiguous(
            memory_format=torch.channels_last)
        want = hebbian_step(eager, sgd(eager), x, [0, 1, 2], precision, ok=ok[0])
        got = hebbian_step(model, sgd(model), x, [0, 1, 2], precision, ok=ok[1], compiled=compiled)
        kept.append((want, got))
    for want, got in kept:  # the kept statistics were not overwritten by later replays
        for sa, sb in zip(got, want, strict=True):
            assert float(sa["max_delta"]) == pytest.approx(float(sb["max_delta"]), rel=1e-4)
    for la, lb in zip(model.hebb_layers(), eager.hebb_layers(), strict=True):
        assert torch.allclose(la.weight, lb.weight, rtol=1e-4, atol=1e-6)
    assert bool(ok[0]) and bool(ok[1])


@pytest.mark.slow
def test_a_guarded_step_stops_on_a_non_finite_update_compiled():
    model = tiny_model("hebb_softhebb_c3", "softhebb")
    compiled = CompiledStep(torch.device("cpu"), backend="aot_eager")
    ok = torch.ones((), dtype=torch.bool)
    x = torch.rand(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    hebbian_step(model, sgd(model), x, [0, 1, 2], ok=ok, compiled=compiled)
    before = [la.weight.detach().clone() for la in model.hebb_layers()]
    x[0, 0, 0, 0] = float("nan")
    hebbian_step(model, sgd(model), x, [0, 1, 2], ok=ok, compiled=compiled)
    assert not bool(ok)
    assert all(torch.equal(la.weight, b) for la, b in zip(model.hebb_layers(), before, strict=True))


@pytest.mark.slow
def test_a_smaller_batch_runs_eager_instead_of_recompiling():
    model = tiny_model("hebb_softhebb_c3", "softhebb")
    compiled = CompiledStep(torch.device("cpu"), backend="aot_eager")
    opt = sgd(model)
    for b in (4, 4, 3, 4):
        hebbian_step(model, opt, torch.rand(b, 3, 16, 16), [0, 1, 2], compiled=compiled)
    assert len(compiled.core.keys) == 1 and compiled.core.shapes[1] == (4, 3, 16, 16)


def test_a_failing_compiler_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler here\nmore detail")

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: broken)  # inductor failing
    model = tiny_model("hebb_softhebb_c3", "softhebb")
    reference = copy.deepcopy(model)
    compiled = CompiledStep(torch.device("cpu"))
    x = torch.rand(4, 3, 16, 16)
    with caplog.at_level(logging.WARNING, logger="hebbret.compiling"):
        for _ in range(3):
            hebbian_step(model, sgd(model), x, [0, 1, 2], compiled=compiled)
            hebbian_step(reference, sgd(reference), x, [0, 1, 2])
    warnings = [r for r in caplog.records if "could not compile" in r.getMessage()]
    assert len(warnings) == 1 and "_step_core" in warnings[0].getMessage()
    assert "no C++ compiler here" in warnings[0].getMessage()
    assert compiled.describe() == {"compiled": False, "mode": "default", "compile_seconds": 0.0,
                                   "failed": "RuntimeError: no C++ compiler here"}
    for la, lb in zip(model.hebb_layers(), reference.hebb_layers(), strict=True):
        assert torch.equal(la.weight, lb.weight)  # the eager step, exactly


def test_auto_compiles_long_runs_on_the_cpu_only():
    cpu, mps = torch.device("cpu"), torch.device("mps")
    assert compile_wanted("auto", cpu, AUTO_MIN_STEPS)
    assert not compile_wanted("auto", cpu, AUTO_MIN_STEPS - 1)
    assert not compile_wanted("auto", torch.device("cuda"), 10**6)  # unmeasured
    assert not compile_wanted("auto", mps, 10**6)
    assert compile_wanted("on", mps, 1) and not compile_wanted("off", cpu, 10**6)
    with pytest.raises(ValueError, match="compile must be one of"):
        PretrainConfig(data="x", compile="yes")
    args = cli.build_parser().parse_args(["pretrain", "imgs", "--compile", "off"])
    assert args.compile == "off"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["pretrain", "imgs", "--compile", "yes"])


@pytest.mark.slow
def test_pretrain_compiles_on_request_and_reports_it(image_folder, tmp_path, monkeypatch):
    real = compiling.Compiled.__init__

    def aot_eager(self, fn, device, backend="inductor", **kwargs):
        real(self, fn, device, "aot_eager", **kwargs)  # the whole path, no C++ code generation

    monkeypatch.setattr(compiling.Compiled, "__init__", aot_eager)
    out = pretrain(str(image_folder), out=str(tmp_path / "on"), compile="on", steps=7,
                   model_kwargs=TINY_C3, img_size=16, batch_size=5, quiet=True,
                   descriptor_dims=0)  # 24 images: batches of 5 and a last one of 4
    card = json.loads((out / "model.json").read_text())["training"]
    assert card["compile"] == "on"
    assert card["compiled_step"]["compiled"] and card["compiled_step"]["compile_seconds"] > 0
    off = pretrain(str(image_folder), out=str(tmp_path / "off"), compile="off", steps=7,
                   model_kwargs=TINY_C3, img_size=16, batch_size=5, quiet=True, descriptor_dims=0)
    assert json.loads((off / "model.json").read_text())["training"]["compiled_step"] == {
        "compiled": False, "compile_seconds": 0.0}
    a = torch.load(out / "state.pt", weights_only=True)["model"]
    b = torch.load(off / "state.pt", weights_only=True)["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-5), k
