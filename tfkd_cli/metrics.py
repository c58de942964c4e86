"""Evaluation metrics: top-1/top-5 accuracy, NLL and expected calibration error.

Calibration is reported because label smoothing and KD change it, and no paper table does.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ECE_BINS = 15


def ece(probs: Tensor, labels: Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error (Guo et al. 2017), equal-width confidence bins.

    ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)|, in percent.
    """
    conf, pred = probs.max(1)
    correct = pred.eq(labels).float()
    idx = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)  # bin b holds (b/bins, (b+1)/bins]
    acc_sum = torch.bincount(idx, weights=correct, minlength=bins)
    conf_sum = torch.bincount(idx, weights=conf, minlength=bins)
    return float((acc_sum - conf_sum).abs().sum() / max(len(labels), 1) * 100.0)


def summarize(logits: Tensor, labels: Tensor) -> dict:
    """top1/top5 (%), nll (mean), ece (%) of a full split's logits."""
    logits = logits.float()
    n = len(labels)
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    hit = topk.eq(labels.unsqueeze(1))
    return {
        "top1": float(hit[:, 0].float().sum() / n * 100.0),
        "top5": float(hit.any(1).float().sum() / n * 100.0),
        "nll": float(F.cross_entropy(logits, labels)),
        "ece": ece(F.softmax(logits, dim=1), labels),
    }


@torch.inference_mode()
def collect_logits(model: nn.Module, batches: Iterable, autocast=None) -> tuple[Tensor, Tensor]:
    """Run `model` in eval mode over (x, y) batches; logits and labels on the CPU."""
    was_training = model.training
    model.eval()
    outs, ys = [], []
    try:
        for x, y in batches:
            if autocast is not None:
                with autocast():
                    out = model(x)
            else:
                out = model(x)
            outs.append(out.float().cpu())
            ys.append(y.cpu())
    finally:
        model.train(was_training)
    return torch.cat(outs), torch.cat(ys)


def evaluate(model: nn.Module, batches: Iterable, autocast=None) -> dict:
    logits, labels = collect_logits(model, batches, autocast)
    return summarize(logits, labels)
