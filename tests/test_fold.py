"""Conv-BN folding for evaluation (tfkd_cli.fold): same logits to float rounding, same
predictions, for every CIFAR model and torchvision models; the training model is untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tfkd_cli import fold
from tfkd_cli.models import build_model, model_names

WIDTHS = {"resnet50": 0.125, "resnext29_8x64d": 0.0625, "googlenet": 0.0625, "densenet121": 0.125}
# BNs that cannot fold: DenseNet's pre-activation BNs read a concatenation, not one conv.
UNFOLDABLE = {"densenet121": 62}


def _trained_bn(model: nn.Module) -> nn.Module:
    """Give every BN non-trivial running statistics and affine parameters, then eval mode."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, 32, 32))
    return model.eval()


@pytest.mark.parametrize("name", model_names() + ["tv:resnet18", "tv:mobilenet_v2"])
def test_folded_copy_matches_the_model(name):
    torch.manual_seed(0)
    model = _trained_bn(build_model(name, num_classes=100, width=WIDTHS.get(name, 0.25 if ":" not in name else 1.0)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    pairs = fold.fold_pairs(model)
    assert len(pairs) == n_bn - UNFOLDABLE.get(name, 0)
    ev = fold.eval_model(model, pairs=pairs)
    left = sum(isinstance(m, nn.BatchNorm2d) for m in ev.modules())
    assert left == UNFOLDABLE.get(name, 0)  # the folded BNs are gone from the copy
    x = torch.randn(16, 3, 32, 32)
    with torch.inference_mode():
        ref, out = model(x), ev(x)
    diff = float((ref - out).abs().max())
    assert diff <= 1e-5 * max(1.0, float(ref.abs().max())), diff
    assert torch.equal(ref.argmax(1), out.argmax(1))
    assert model.training is False and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fold_conv_bn_formula():
    """BN(conv(x)) == conv'(x) for a conv without bias, grouped, and a BN without affine."""
    torch.manual_seed(0)
    for conv, bn in [(nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)),
                     (nn.Conv2d(4, 8, 3, groups=2), nn.BatchNorm2d(8, affine=False))]:
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        seq = nn.Sequential(conv, bn).eval()
        x = torch.randn(2, 4, 9, 9)
        ref = seq(x)
        fold.fold_conv_bn(conv, bn)
        assert torch.allclose(conv(x), ref, atol=1e-6)


class _Shared(nn.Module):
    """One conv's output feeds the BN and a residual: folding would change the residual."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class _Untraceable(nn.Module):
    """A data-dependent branch fx cannot trace; its child Sequential still folds."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x):
        return self.body(x) if x.sum() > -1e9 else x


def test_only_a_bn_reading_just_its_conv_folds():
    assert fold.fold_pairs(_Shared()) == []
    assert fold.fold_pairs(_Untraceable()) == [("body.0", "body.1")]
    m = _trained_bn(_Shared())
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(fold.eval_model(m, channels_last=False)(x), m(x))


def test_fast_eval_off_is_the_model_itself():
    m = build_model("resnet18", num_classes=10, width=0.125)
    assert fold.eval_model(m, fold=False, channels_last=False) is m
