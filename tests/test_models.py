import pytest
import timm
import torch

import hebbret.models  # noqa: F401  (registers the backbones with timm)
from hebbret.hebb import HebbConv2d, HebbLinear
from hebbret.models import MODEL_NAMES, create_model

NARROW = {"hebb_softhebb_c4": [8, 16, 32, 64], "hebb_softhebb_c5": [8, 16, 32, 64, 128]}


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("chans,size", [(1, 28), (3, 32), (3, 96)])
def test_backbone_runs_on_any_input_size_with_timm_api(name, chans, size):
    torch.manual_seed(0)
    if name == "hebb_softhebb_c5" and size < 32:
        size = 32  # five halvings
    kwargs = {"widths": NARROW[name]} if name in NARROW else {}
    model = timm.create_model(name, in_chans=chans, img_size=size, num_classes=7, **kwargs).eval()
    x = torch.randn(2, chans, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        logits = model(x)
    assert pre.shape == (2, model.num_features)
    assert logits.shape == (2, 7)
    assert model.default_cfg["input_size"] == (chans, size, size)
    assert torch.isfinite(logits).all()
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.model_args["num_classes"] == 3


def test_softhebb_c3_shapes_match_the_paper():
    model = create_model("hebb_softhebb_c3")
    convs = model.hebb_layers()
    assert [c.out_channels for c in convs] == [96, 384, 1536]
    assert all(isinstance(c, HebbConv2d) and c.padding_mode == "reflect" for c in convs)
    assert [c.rule_params["t_inv"] for c in convs] == [1.0, 0.65, 0.25]
    assert model.num_features == 24576


def test_softhebb_stl10_and_imagenet_nets_follow_softhebbs_presets():
    stl = create_model("hebb_softhebb_c4", in_chans=1)
    assert stl.default_cfg["input_size"] == (1, 96, 96)
    assert [c.out_channels for c in stl.hebb_layers()] == [96, 384, 1536, 6144]
    assert [c.kernel_size[0] for c in stl.hebb_layers()] == [5, 3, 3, 3]
    assert [c.rule_params["t_inv"] for c in stl.hebb_layers()] == [1.0, 0.65, 0.45, 0.25]
    assert stl.hebbian_lrs() == [0.08, 0.005, 0.01, 0.01]
    assert [type(b[3]).__name__ for b in stl.blocks] == ["AvgPool2d", "MaxPool2d", "AvgPool2d",
                                                          "AvgPool2d"]
    assert [b[2].power for b in stl.blocks] == [0.7, 0.7, 1.4, 1.0]
    assert stl.num_features == 6144 * 6 * 6
    net = create_model("hebb_softhebb_c5", widths=NARROW["hebb_softhebb_c5"])
    assert net.default_cfg["input_size"] == (3, 160, 160)
    assert [c.rule_params["t_inv"] for c in net.hebb_layers()] == [1.1, 0.7, 0.5, 0.4, 0.25]
    assert net.hebbian_lrs() == [0.08, 0.01, 0.01, 0.01, 0.01]
    assert net.forward_features(torch.randn(1, 3, 160, 160)).shape == (1, 128, 5, 5)
    with pytest.raises(ValueError, match="4 Hebbian layers: give 4 widths"):
        create_model("hebb_softhebb_c4", widths=[8, 16, 32])
    with pytest.raises(ValueError, match="at least 32×32"):
        create_model("hebb_softhebb_c5", widths=NARROW["hebb_softhebb_c5"], img_size=28)


def test_fasthebb_6l_has_four_conv_and_one_fc_hebbian_layer():
    model = create_model("hebb_fasthebb_6l", rule="swta")
    layers = model.hebb_layers()
    assert [type(m) for m in layers] == [HebbConv2d] * 4 + [HebbLinear]
    assert {m.rule.name for m in layers} == {"swta"}
    assert len(model.blocks) == len(layers)


def test_patch_whitening_decorrelates_channels_and_neighbouring_pixels():
    from torch.nn import functional as F

    from hebbret.models import PatchWhitening

    torch.manual_seed(0)
    x = F.avg_pool2d(F.pad(torch.randn(64, 3, 24, 24), (1, 1, 1, 1), mode="reflect"), 3, 1)
    x = torch.einsum("ij,bjhw->bihw", torch.tensor([[1.0, 0.8, 0.5], [0, 1, 0.7], [0, 0, 1]]), x)
    stem = PatchWhitening(3, patch=5, eps=1e-6)
    torch.testing.assert_close(stem(x), x)  # the identity until fitted
    assert stem.fit([x[:32], x[32:]]) == 64 * 20 * 20
    y = stem(x)[:, :, 2:-2, 2:-2]  # away from the reflect-padded border
    torch.testing.assert_close(torch.cov(y.permute(1, 0, 2, 3).reshape(3, -1)), torch.eye(3),
                               atol=0.05, rtol=0)

    def neighbour_corr(t):
        return torch.corrcoef(torch.stack([t[..., :-1].flatten(), t[..., 1:].flatten()]))[0, 1]

    assert neighbour_corr(x) > 0.5 and abs(neighbour_corr(y)) < 0.1
    with pytest.raises(ValueError, match="odd"):
        PatchWhitening(3, patch=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a fixed fp32 filter, even under autocast
        under_autocast = stem(x)
    torch.testing.assert_close(under_autocast, stem(x))
    with pytest.raises(ValueError, match="constant images"):
        PatchWhitening(3, patch=3).fit([torch.ones(4, 3, 8, 8)])
    with pytest.raises(ValueError, match="too large"):
        create_model("hebb_softhebb_c3", img_size=8, whiten_patch=17)


def test_bad_model_arguments_are_explained():
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        create_model("resnet50")
    with pytest.raises(ValueError, match="at least 24×24"):
        create_model("hebb_fasthebb_6l", img_size=8)
    model = create_model("hebb_softhebb_c3", in_chans=1, img_size=28)
    with pytest.raises(ValueError, match=r"expects \(B, 1, H, W\)"):
        model(torch.randn(2, 3, 28, 28))


def test_import_hebbret_is_light_and_exposes_the_api_lazily():
    """`import hebbret.models; timm.create_model(...)` imports neither FAISS nor any stage; the
    public names still resolve, and no hebbret module imports the package root."""
    import pathlib
    import subprocess
    import sys

    code = ("import sys, timm, hebbret, hebbret.models; timm.create_model('hebb_softhebb_c3'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'faiss' or m in "
            "('hebbret.pipeline', 'hebbret.pretraining', 'hebbret.embed', 'hebbret.index', "
            "'hebbret.eval', 'hebbret.finetuning'))); "
            "print(callable(hebbret.pretrain), callable(hebbret.run_pipeline))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "True True"
    root = pathlib.Path(hebbret.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "__init__.py" or p.parent != root
                 if "from . import __version__" in p.read_text()
                 or "from .. import __version__" in p.read_text()]
    assert offenders == []


def test_the_command_line_parser_imports_no_torch_timm_or_faiss():
    """`hebbret --help` (and any parse) stays light: the handlers import what they call."""
    import subprocess
    import sys

    code = ("import sys; from hebbret.cli import build_parser; p = build_parser(); "
            "p.parse_args(['pretrain', 'DIR']); p.parse_args(['index', 'build', 'E', '--out', 'I']); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'timm', 'faiss', "
            "'numpy', 'fastapi'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_the_config_names_match_what_the_library_registers():
    from hebbret.config import METRIC_NAMES, MODEL_NAMES, RULE_NAMES
    from hebbret.hebb.rules import RULES
    from hebbret.index import METRICS

    assert RULE_NAMES == tuple(sorted(RULES))
    assert METRIC_NAMES == tuple(METRICS)
    assert all(timm.is_model(name) for name in MODEL_NAMES)


@pytest.mark.parametrize("chans,size", [(1, 28), (3, 32)])
def test_the_small_resnet_is_a_backbone_like_the_hebbian_ones(chans, size):
    torch.manual_seed(0)
    model = create_model("resnet18_small", in_chans=chans, img_size=size, num_classes=7).eval()
    x = torch.randn(2, chans, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 512, size // 8 + (size % 8 > 0), size // 8 + (size % 8 > 0))
        assert model.forward_head(feats, pre_logits=True).shape == (2, 512) == (2, model.num_features)
        assert model(x).shape == (2, 7) and model.hebb_layers() == []
    with pytest.raises(ValueError, match="no Hebbian layers"):
        create_model("resnet18_small", rule="softhebb")
