#!/usr/bin/env python
"""teacher_share of each official recipe family on short real runs (issue #17), engine-free.

A resnet18 (--width) teacher is trained with CE on digits for --epochs; then one student per
family (the same architecture, so the teacher is also the kd_self "pre-trained copy of the
student") trains for --epochs with that family's loss (tfkd_cli.methods.build_loss, SGD momentum
0.9, wd 5e-4, lr 0.1 x batch/128, the in-memory augmented batches of tfkd_cli.data). On every
training batch the diagnostics (tfkd_cli.diagnostics.term_norms, on the logits, under no_grad)
are accumulated per epoch (EpochDiagnostics). Printed per family: the share on the first batch
(initialisation), the epoch means of the first and last epoch, and the final train top-1.

A second section evaluates the tfkd-imagenet recipes (K = 1000) on random logits of scale 1 and
10 under both semantics: what the diagnostics would show for `semantics: official` vs `paper`.

    PYTHONPATH=. python benchmarks/diagnostics_shares.py --epochs 2 --width 0.25
"""

from __future__ import annotations

import argparse
import time

import torch

from tfkd_cli.data import build_data
from tfkd_cli.diagnostics import EpochDiagnostics, term_norms
from tfkd_cli.methods import build_loss
from tfkd_cli.models import build_model

# method, loss params (the official configs, tables.md §2.4), diagnostics-only params, label
FAMILIES = [
    ("kd", dict(alpha=0.95, temperature=20.0), {}, "kd a.95 T20 (De-KD, MobileNetV2/ShuffleNetV2 rows)"),
    ("kd", dict(alpha=0.95, temperature=20.0), {"uniform_teacher": True}, "  control: kd a.95 T20, uniform teacher"),
    ("kd", dict(alpha=0.6, temperature=20.0), {}, "kd a.6 T20 (ResNet18 rows)"),
    ("tfkd_reg", dict(alpha=0.95, temperature=40.0, multiplier=1.0), {}, "tfkd_reg a.95 T40 m1"),
    ("tfkd_reg", dict(alpha=0.1, temperature=20.0, multiplier=100.0), {}, "tfkd_reg a.1 T20 m100"),
    ("kd_self", dict(alpha=0.95, temperature=6.0, multiplier=50.0), {}, "kd_self a.95 T6 m50"),
    ("lsr", dict(epsilon=0.1), {}, "lsr eps .1"),
    ("ce", {}, {"label_weight": 0.05}, "  control: ce x 0.05 (label term of a.95)"),
]
IMAGENET = [("kd_self", dict(alpha=0.1, temperature=20.0, multiplier=1.0)),
            ("tfkd_reg", dict(alpha=0.1, temperature=20.0, multiplier=1.0)),
            ("lsr", dict(epsilon=0.1))]


def _loss(method, params, diag):
    """The family's loss; the controls are the registry's own (uniform_teacher, label_weight)."""
    return build_loss(method, **params, **diag)


def train(data, args, method="ce", params=None, diag=None, teacher=None, seed=0):
    """One short run; returns (model, first-batch norms, per-epoch diagnostics rows, train top-1)."""
    params, diag = params or {}, diag or {}
    torch.manual_seed(seed)
    model = build_model("resnet18", data.num_classes, args.width)
    opt = torch.optim.SGD(model.parameters(), lr=0.1 * args.batch_size / 128, momentum=0.9, weight_decay=5e-4)
    loss_fn = _loss(method, params, diag)
    needs_t = method in ("kd", "kd_self") and not diag.get("uniform_teacher")
    first, rows, correct, seen = None, [], 0, 0
    for epoch in range(args.epochs):
        model.train()
        acc, correct, seen = EpochDiagnostics(), 0, 0
        for x, y in data.train_batches(epoch, seed):
            t = None
            if needs_t:
                with torch.inference_mode():
                    t = teacher(x)
                t = t.clone()  # an ordinary tensor again, as the engine does
            z = model(x)
            norms = term_norms(method, z, y, t, **params, **diag)
            first = norms if first is None else first
            acc.add(norms)
            loss = loss_fn(z, y, t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            correct += int((z.argmax(1) == y).sum())
            seen += len(y)
        rows.append(acc.row())
    return model, first, rows, 100.0 * correct / max(seen, 1)


def _s(x):
    return "n/a" if x is None else f"{x:.4f}"


def imagenet_section():
    print("\ntfkd-imagenet recipes on random logits, N=128, K=1000 (teacher_share; label weight "
          "1-a = 0.9 for kd_self/tfkd_reg):")
    g = torch.Generator().manual_seed(0)
    n, k = 128, 1000
    y = torch.randint(0, k, (n,), generator=g)
    print(f"  {'method':9s} {'semantics':9s} {'scale 1':>9s} {'scale 10':>9s}")
    for method, params in IMAGENET:
        for sem in ("official", "paper"):
            shares = []
            for scale in (1.0, 10.0):
                z = torch.randn(n, k, generator=g) * scale
                t = torch.randn(n, k, generator=g) * scale
                gl, gt = term_norms(method, z, y, t, semantics=sem, **params).tolist()
                shares.append(gt / (gl + gt))
            print(f"  {method:9s} {sem:9s} {shares[0]:9.2e} {shares[1]:9.2e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dataset", default="digits", help="digits, or cifar-layout with --data-root (tiny100-32)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--per-class", type=int, default=None, help="class-balanced training subset")
    ap.add_argument("--only", default=None, help="comma-separated methods: run only these families")
    ap.add_argument("--no-imagenet", action="store_true", help="skip the random-logits K=1000 section")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    data = build_data(args.dataset, args.data_root, per_class=args.per_class, batch_size=args.batch_size)
    families = [f for f in FAMILIES if args.only is None or f[0] in args.only.split(",")]
    teacher, t_acc = None, None
    if any(m in ("kd", "kd_self") and not d.get("uniform_teacher") for m, _, d, _ in families):
        teacher, _, _, t_acc = train(data, args)
        teacher.eval()
    print(f"{args.dataset} (K={data.num_classes}, {data.num_train} train images), resnet18 x{args.width:g}, batch {args.batch_size}, "
          f"{args.epochs} epochs, seed 0; teacher: CE, final train top-1 "
          + ("n/a (none needed)" if t_acc is None else f"{t_acc:.1f}%"))
    print(f"\n| family | share, first batch | share, epoch 1 | share, epoch {args.epochs} | "
          f"grad_label / grad_teacher, epoch {args.epochs} | train top-1 |")
    print("|---|---:|---:|---:|---|---:|")
    for method, params, diag, label in families:
        _, first, rows, acc = train(data, args, method, params, diag, teacher)
        gl, gt = first.tolist()
        last = rows[-1]
        print(f"| {label} | {_s(gt / (gl + gt))} | {_s(rows[0]['teacher_share'])} | {_s(last['teacher_share'])} | "
              f"{last['grad_label']:.4f} / {last['grad_teacher']:.4f} | {acc:.1f} |")
    if not args.no_imagenet:
        imagenet_section()
    print(f"\ntotal wall time {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
