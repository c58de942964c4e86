"""Evaluation copies of a model: Conv2d-BatchNorm2d pairs folded into one conv, channels_last.

In eval mode a BatchNorm2d is a per-channel affine map, so a BN that reads only the output of
one conv folds into that conv:

    BN(conv(x)) = conv'(x),  W' = W * s,  b' = (b - mean) * s + beta,  s = gamma / sqrt(var + eps)

(per output channel). The folded copy computes the same function with one layer fewer per
pair; its logits differ from the unfolded model's by float rounding only (~1e-7 relative), so
top-1 is the same unless two logits tie to that precision, and NLL / ECE can differ in their
last printed digits. Training weights are never touched: folding works on a deep copy.

Pairs are found structurally with torch.fx: a `call_module` BatchNorm2d whose only input is a
`call_module` Conv2d whose output has no other user, each module called once. A module that
fx cannot trace (e.g. ShuffleNetV2's data-dependent channel shuffle) is searched child by
child instead, so only the untraceable glue is left out. Anything unexpected falls back to the
unfolded copy: folding is an optimisation, never a reason for an evaluation to fail.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import fx, nn


def fold_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, bn name) of every foldable pair in `model`, names as in named_modules()."""
    uses: dict[int, int] = {}
    for m in model.modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    return [(c, b) for c, b in _pairs(model, "")
            if uses[id(model.get_submodule(c))] == 1 and uses[id(model.get_submodule(b))] == 1]


def _pairs(module: nn.Module, prefix: str) -> list[tuple[str, str]]:
    if not list(module.children()):
        return []
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception:  # untraceable forward: look inside its children
        return [p for name, child in module.named_children() for p in _pairs(child, f"{prefix}{name}.")]
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    found = []
    for node in graph.nodes:
        if not _is_call(node, module, nn.BatchNorm2d) or len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if (isinstance(src, fx.Node) and _is_call(src, module, nn.Conv2d) and len(src.users) == 1
                and calls[src.target] == 1 and calls[node.target] == 1):
            found.append((prefix + src.target, prefix + node.target))
    return found


def _is_call(node: fx.Node, root: nn.Module, kind: type) -> bool:
    return node.op == "call_module" and type(root.get_submodule(node.target)) is kind


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode `bn` into `conv` in place (float64 arithmetic, stored in conv's dtype)."""
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    s = gamma / torch.sqrt(var + bn.eps)
    with torch.no_grad():
        conv.weight.copy_(w * s.reshape(-1, 1, 1, 1))
        conv.bias = nn.Parameter(((b - mean) * s + beta).to(conv.weight.dtype))


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
            and bn.running_mean is not None and bn.num_features == conv.out_channels)


def folded(model: nn.Module, pairs: Optional[list[tuple[str, str]]] = None) -> nn.Module:
    """An eval-mode deep copy of `model` with every foldable Conv2d-BN pair folded (the BN
    becomes nn.Identity); the unfolded eval copy if tracing or folding fails. `pairs`: the
    model's `fold_pairs` if known (tracing can take a second; a run computes them once)."""
    net = copy.deepcopy(model).eval().requires_grad_(False)
    try:
        pairs = fold_pairs(net) if pairs is None else pairs
        work = copy.deepcopy(net)
        for conv_name, bn_name in pairs:
            conv, bn = work.get_submodule(conv_name), work.get_submodule(bn_name)
            if not _foldable(conv, bn):
                continue
            fold_conv_bn(conv, bn)
            parent, _, leaf = bn_name.rpartition(".")
            setattr(work.get_submodule(parent), leaf, nn.Identity())
        return work
    except Exception:  # an optimisation only: evaluate the unfolded copy
        return net


class ChannelsLast(nn.Module):
    """Feeds the wrapped model its input in channels_last (the model's weights are too)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)


def eval_model(model: nn.Module, *, fold: bool = True, channels_last: bool = True,
               pairs: Optional[list[tuple[str, str]]] = None) -> nn.Module:
    """The model to evaluate `model` with: a folded (`fold`, with `pairs` if known) eval-mode
    copy, in channels_last (`channels_last`). With neither, `model` itself (the old path)."""
    if not fold and not channels_last:
        return model
    net = folded(model, pairs) if fold else copy.deepcopy(model).eval().requires_grad_(False)
    if channels_last:
        net = ChannelsLast(net.to(memory_format=torch.channels_last))
    return net
