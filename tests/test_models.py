"""Model registry: official state_dict layout, widths, aliases, torchvision adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from tfkd_cli.errors import TfkdError
from tfkd_cli.models import (
    ALIASES,
    MODELS,
    build_model,
    canonical_name,
    count_params,
    is_torchvision,
    model_names,
)
from tfkd_cli.models.shufflenetv2 import concat_shuffle

SPEC_PATH = Path(__file__).resolve().parent / "fixtures" / "official_state_dicts.json"

# Parameter counts of the official definitions with 100 classes (also in the JSON spec).
OFFICIAL_PARAMS = {
    "resnet18": 11_220_132,
    "resnet50": 23_705_252,
    "mobilenetv2": 2_369_380,
    "shufflenetv2": 1_360_896,
    "googlenet": 6_258_500,
    "densenet121": 7_048_548,
    "resnext29_8x64d": 34_518_948,
}
NAMES = sorted(OFFICIAL_PARAMS)


@pytest.fixture(scope="module")
def spec() -> dict:
    return json.loads(SPEC_PATH.read_text())["models"]


def _meta_model(name: str, width: float = 1.0) -> nn.Module:
    with torch.device("meta"):  # no memory, no init cost (resnext29 is 34.5M params)
        return build_model(name, 100, width)


def test_registry_names():
    assert model_names() == NAMES == sorted(MODELS)


@pytest.mark.parametrize("name", NAMES)
def test_param_count_matches_official(name):
    assert count_params(_meta_model(name)) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_matches_official_spec(name, spec):
    model = _meta_model(name)
    assert count_params(model) == spec[name]["params"]
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert got == spec[name]["state_dict"]  # same keys, same order, same shapes (buffers included)


@pytest.mark.parametrize("name", NAMES)
def test_reduced_width_keeps_keys(name):
    full, small = _meta_model(name).state_dict(), _meta_model(name, 0.25).state_dict()
    assert list(small) == list(full)
    assert count_params(_meta_model(name, 0.25)) < OFFICIAL_PARAMS[name] / 4


@pytest.mark.parametrize("name", NAMES)
def test_forward_width_quarter(name):
    torch.manual_seed(0)
    model = build_model(name, 100, 0.25)
    y = model(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 100)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "shufflenetv2"])
def test_width_half_loads_own_state_dict_strict(name):
    torch.manual_seed(0)
    src = build_model(name, 100, 0.5)
    dst = build_model(name, 100, 0.5)
    dst.load_state_dict(src.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    src.eval(), dst.eval()
    assert torch.equal(src(x), dst(x))


def test_module_prefix_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18", 100, 0.25)
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    loaded = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    stripped = {k.removeprefix("module."): v for k, v in loaded.items()}
    fresh = build_model("resnet18", 100, 0.25)
    fresh.load_state_dict(stripped, strict=True)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["shufflenetv2", "googlenet", "densenet121"])
def test_channels_last_matches_contiguous(name):
    torch.manual_seed(0)
    model = build_model(name, 100, 0.25).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_concat_shuffle_equals_official_shuffle(channels_last):
    a, b = torch.randn(2, 6, 3, 3), torch.randn(2, 6, 3, 3)
    if channels_last:
        a, b = a.to(memory_format=torch.channels_last), b.to(memory_format=torch.channels_last)
    x = torch.cat([a, b], 1)
    expected = x.view(2, 2, 6, 3, 3).transpose(1, 2).contiguous().view(2, 12, 3, 3)
    out = concat_shuffle(a, b)
    assert torch.equal(out, expected)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_official_quirks_kept():
    mb = build_model("mobilenetv2", 100, 0.25)
    stem = mb.pre[0]
    assert stem.kernel_size == (1, 1) and stem.padding == (1, 1)
    g = build_model("googlenet", 100, 0.25)
    assert isinstance(g.dropout, nn.Dropout2d) and g.dropout.p == 0.4
    assert g.a3.b3[4].eps == 32.0 and g.b5.b3[4].eps == 128.0  # BatchNorm2d(n5x5, n5x5)
    rx = build_model("resnext29_8x64d", 100, 0.25)
    assert torch.count_nonzero(rx.classifier.bias) == 0
    conv = rx.stage_1.stage_1_bottleneck_0.conv_conv
    assert conv.groups == 8 and conv.in_channels % 8 == 0
    fan_out = conv.out_channels * 9  # torch kaiming_normal_(mode="fan_out"): weight.size(0) * k * k
    assert abs(conv.weight.std().item() - (2 / fan_out) ** 0.5) < 0.1 * (2 / fan_out) ** 0.5


def test_aliases_resolve():
    assert ALIASES["mobilenet_v2"] == "mobilenetv2"
    assert canonical_name("mobilenet_v2") == "mobilenetv2"
    assert canonical_name("shufflenet_v2") == "shufflenetv2"
    assert canonical_name("resnext29") == "resnext29_8x64d"
    assert canonical_name("densenet") == "densenet121"
    assert canonical_name("ResNet18") == "resnet18"
    for alias, target in ALIASES.items():
        assert canonical_name(alias) == target in MODELS
    assert count_params(_meta_model("resnext29")) == OFFICIAL_PARAMS["resnext29_8x64d"]


def test_unknown_name_message():
    with pytest.raises(TfkdError) as exc:
        canonical_name("resnet19")
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("unknown model 'resnet19'; choose from: ")
    assert all(n in msg for n in NAMES) and "tv:<torchvision name>" in msg
    with pytest.raises(TfkdError, match="unknown model"):
        build_model("vgg19", 100)


@pytest.mark.parametrize("width", [0, -0.5, float("nan"), float("inf"), "1"])
def test_bad_width(width):
    with pytest.raises(TfkdError, match="width"):
        build_model("resnet18", 100, width)


def test_torchvision_model():
    assert is_torchvision("tv:resnet18") and not is_torchvision("resnet18")
    assert canonical_name("tv:resnet18") == "tv:resnet18"
    torch.manual_seed(0)
    model = build_model("tv:resnet18", num_classes=10)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert count_params(model) == 11_181_642  # torchvision resnet18 with a 10-class head


def test_torchvision_errors():
    with pytest.raises(TfkdError, match="unknown torchvision model 'nosuchnet'"):
        build_model("tv:nosuchnet", 10)
    with pytest.raises(TfkdError, match="CIFAR models only"):
        build_model("tv:resnet18", 10, width=0.5)
    with pytest.raises(TfkdError, match="unknown torchvision model"):
        canonical_name("tv:fasterrcnn_resnet50_fpn")  # not a classification model
