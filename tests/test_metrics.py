"""Evaluation metrics against hand computations."""

import math

import pytest
import torch

from tfkd_cli.metrics import ece, summarize


def test_ece_by_hand():
    # confidences 0.95 (right), 0.95 (wrong), 0.55 (right), 0.35 (right) with 15 bins:
    # bin of 0.95: acc 0.5, conf 0.95 -> 2/4 * 0.45; bin of 0.55: 1/4 * 0.45; bin of 0.35: 1/4 * 0.65
    probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.35, 0.65]])
    labels = torch.tensor([0, 1, 0, 1])
    want = (2 / 4 * 0.45 + 1 / 4 * 0.45 + 1 / 4 * (1 - 0.65)) * 100
    assert ece(probs, labels) == pytest.approx(want, abs=1e-4)


def test_summarize_topk_and_nll():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0, -2.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    labels = torch.tensor([1, 0])
    m = summarize(logits, labels)
    assert m["top1"] == 0.0  # neither argmax is right
    assert m["top5"] == 50.0  # label 1 is in row 0's top 5; label 0 is 6th in row 1
    want = -(math.log(torch.softmax(logits[0], 0)[1].item()) + math.log(torch.softmax(logits[1], 0)[0].item())) / 2
    assert m["nll"] == pytest.approx(want, abs=1e-6)
