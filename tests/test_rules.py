"""Fused FastHebb updates against plain per-sample, per-position reference loops (float64)."""

import pytest
import torch
import torch.nn.functional as F

from hebbret.hebb import HebbConv2d, HebbLinear
from hebbret.hebb.layers import AUTO_UNFOLD_MIN_D
from hebbret.hebb.rules import softhebb_step_scale

RULES = ["hpca", "swta", "softhebb"]
PARAMS = {"hpca": {}, "swta": {"temperature": 0.3}, "softhebb": {"t_inv": 0.7}}


def reference_delta(rule: str, rows: list[torch.Tensor], w2: torch.Tensor, **params) -> torch.Tensor:
    """ΔW (K×D) summed sample by sample, position by position, as the rules are written per input."""
    k = w2.shape[0]
    delta = torch.zeros_like(w2)
    if rule == "swta":
        zs = []
        for x in rows:
            cos = (w2 @ x) / (w2.norm(dim=1) * x.norm()).clamp_min(1e-8)
            zs.append(torch.softmax(((1 + cos) / 2) ** 2 / params["temperature"], dim=0))
        zsum = torch.stack(zs).sum(0)
        for x, z in zip(rows, zs, strict=True):
            for j in range(k):
                delta[j] += z[j] ** 2 / zsum[j] * (x - w2[j])
        return delta
    for x in rows:
        u = w2 @ x
        if rule == "hpca":
            y = torch.relu(u)
            for j in range(k):  # Sanger: each neuron learns the residual of the ones before it
                residual = x - sum(y[i] * w2[i] for i in range(j + 1))
                delta[j] += y[j] * residual / len(rows)
        elif rule == "softhebb":
            soft = torch.softmax(params["t_inv"] * u, dim=0)
            win = int(torch.argmax(u))
            for j in range(k):
                y = soft[j] if j == win else -soft[j]
                delta[j] += y * (x - u[j] * w2[j])
    return delta


def conv_rows(x, kernel, stride, padding, mode):
    ph, pw = padding
    xp = F.pad(x, (pw, pw, ph, ph), mode="reflect" if mode == "reflect" else "constant")
    kh, kw = kernel
    out = []
    for b in range(x.shape[0]):
        for i in range(0, xp.shape[2] - kh + 1, stride[0]):
            for j in range(0, xp.shape[3] - kw + 1, stride[1]):
                out.append(xp[b, :, i : i + kh, j : j + kw].reshape(-1))
    return out


def rel_err(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


CONV_CASES = [
    # batch, in, out, kernel, stride, padding, mode, size
    (1, 2, 4, (3, 3), (1, 1), (0, 0), "zeros", (5, 5)),
    (3, 3, 5, (3, 2), (2, 2), (1, 1), "zeros", (7, 6)),
    (2, 2, 6, (5, 5), (1, 1), (2, 2), "reflect", (6, 6)),
    (2, 1, 3, (2, 3), (2, 1), (1, 1), "reflect", (5, 7)),
]


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("gram", ["conv", "unfold"])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"b{c[0]}k{c[3]}s{c[4]}p{c[5]}{c[6]}")
def test_conv_rule_matches_per_sample_reference(rule, gram, case, layout):
    b, c, k, kernel, stride, padding, mode, size = case
    torch.manual_seed(0)
    layer = HebbConv2d(c, k, kernel, stride, padding, mode, rule=rule, gram=gram, **PARAMS[rule])
    layer.double()
    x = torch.randn(b, c, *size, dtype=torch.float64)
    if layout == "nhwc":  # the layout pretraining runs in; unfold takes the channels-last im2col
        layer.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    fused = layer.hebbian_delta(x)
    assert fused.shape == layer.weight.shape
    rows = conv_rows(x, kernel, stride, padding, mode)
    ref = reference_delta(rule, rows, layer.weight.detach().flatten(1), **PARAMS[rule])
    assert rel_err(fused.flatten(1), ref) < 1e-9


def test_auto_gram_takes_the_im2col_product_for_wide_channels_last_cpu_layers():
    wide = HebbConv2d(64, 8, 3)  # D = 576 ≥ AUTO_UNFOLD_MIN_D
    narrow = HebbConv2d(8, 8, 3)  # D = 72
    x = torch.randn(2, 64, 6, 6)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    assert wide.gram == "auto" and wide.weight[0].numel() >= AUTO_UNFOLD_MIN_D
    assert wide.gram_method(nhwc) == "unfold"
    assert wide.gram_method(x) == "conv"  # NCHW: the oneDNN kernel
    assert narrow.gram_method(nhwc[:, :8].contiguous(memory_format=torch.channels_last)) == "conv"
    wide.gram = "conv"
    assert wide.gram_method(nhwc) == "conv"  # an explicit method is kept
    with pytest.raises(ValueError, match="gram must be one of"):
        HebbConv2d(3, 4, 3, gram="im2col")


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("batch", [1, 6])
def test_linear_rule_matches_per_sample_reference(rule, batch):
    torch.manual_seed(1)
    layer = HebbLinear(7, 5, rule=rule, **PARAMS[rule]).double()
    x = torch.randn(batch, 7, dtype=torch.float64)
    ref = reference_delta(rule, list(x), layer.weight.detach(), **PARAMS[rule])
    assert rel_err(layer.hebbian_delta(x), ref) < 1e-9


def test_plastic_forward_stashes_the_same_delta_and_returns_the_response():
    torch.manual_seed(2)
    layer = HebbConv2d(3, 4, 3, padding=1, padding_mode="reflect", rule="swta").double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    layer.plastic = True
    with torch.no_grad():
        out = layer(x)
    expected_u = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), layer.weight)
    norms = layer.weight.flatten(1).norm(dim=1).view(1, -1, 1, 1)
    torch.testing.assert_close(out, expected_u / norms)
    torch.testing.assert_close(layer.delta, layer.hebbian_delta(x))


def test_none_rule_never_changes_weights():
    layer = HebbConv2d(2, 3, 3, rule="none")
    assert torch.count_nonzero(layer.hebbian_delta(torch.randn(2, 2, 5, 5))) == 0


def test_softhebb_step_scale_normalises_by_max_and_norm_distance():
    w = torch.zeros(2, 3)
    w[0, 0], w[1, 0] = 2.0, 1.25  # norms 2 and 1.25
    delta = torch.tensor([[4.0, -8.0, 0.0], [2.0, 0.0, 1.0]])
    out = softhebb_step_scale(delta, w)
    expected = delta / 8.0 * torch.tensor([[1.0], [0.5]])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_bad_rule_and_params_are_named():
    with pytest.raises(ValueError, match="unknown Hebbian rule 'oja'"):
        HebbLinear(3, 2, rule="oja")
    with pytest.raises(ValueError, match="t_inv"):
        HebbLinear(3, 2, rule="softhebb", temperature=0.1)


@pytest.mark.parametrize("rule", ["hpca", "swta", "softhebb"])
def test_materialised_per_row_update_equals_the_fused_one(rule):
    """The method FastHebb replaced (one K×D update per row, summed) against the fused ΔW."""
    from _common.materialised import materialised_delta

    torch.manual_seed(0)
    conv = HebbConv2d(3, 6, 3, padding=1, padding_mode="reflect", rule=rule).double()
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    fc = HebbLinear(12, 5, rule=rule).double()
    xf = torch.randn(9, 12, dtype=torch.float64)
    for layer, inp in ((conv, x), (fc, xf)):
        fused = layer.hebbian_delta(inp)
        assert rel_err(materialised_delta(layer, inp, chunk_mb=0.01), fused) < 1e-10


@pytest.mark.parametrize("name,widths,size", [("hebb_softhebb_c4", [3, 4, 5, 6], 16),
                                              ("hebb_softhebb_c5", [3, 4, 4, 5, 6], 32)])
def test_every_layer_of_the_deeper_softhebb_nets_learns_by_the_reference_rule(name, widths, size):
    """One consecutive Hebbian step: each layer's ΔW is the per-sample reference on the input
    that layer saw, with its own t_inv (the presets' per-layer settings reach the rule)."""
    from hebbret.models import create_model

    torch.manual_seed(0)
    model = create_model(name, in_chans=1, img_size=size, widths=widths, init_radius=2.0).double()
    x = torch.randn(2, 1, size, size, dtype=torch.float64)
    inputs = model.hebb_inputs(x)  # what each layer sees in a training-mode forward
    layers = model.hebb_layers()
    for layer in layers:
        layer.plastic = True
    with torch.no_grad():
        model.forward_blocks(x)
    for layer, seen in zip(layers, inputs, strict=True):
        t_inv = layer.rule_params["t_inv"]
        rows = conv_rows(seen, layer.kernel_size, layer.stride, layer.padding, "reflect")
        ref = reference_delta("softhebb", rows, layer.weight.detach().flatten(1), t_inv=t_inv)
        assert rel_err(layer.delta.flatten(1), ref) < 1e-9
        layer.plastic, layer.delta = False, None
