"""The official Tf-KD training loop, re-stated for the throughput benchmark.

The way yuanli2333/Teacher-free-Knowledge-Distillation's main.py / train_kd.py /
my_loss_function.py train, keeping what costs time: torchvision PIL transforms in a
DataLoader(num_workers=2, shuffle=True), blocking `.to(device)` (the official `.cuda()`), fp32,
channels-first, eager, torch's default SGD, the teacher in eval mode WITHOUT no_grad and with
trainable parameters, nn.KLDivLoss() 'mean', the Tf-KD_reg target built by a per-sample Python
loop, and the per-step `.item()` syncs of the official meters. Loss parameters: `loss_config`.
"""

from __future__ import annotations

import resource

import time

from _harness import max_rss_mib, sync


def loss_config(model: str, method: str) -> dict:
    """Loss parameters per student: the shipped configs (tables.md §2.4). Speed does not depend on them.

    Tf-KD_reg: base_resnet18 (reg_alpha 0.1, T 20, x100), base_mobilenetv2 (0.95, T 40, x1).
    KD: mobilenet_distill/resnet18_teacher (alpha 0.95, T 20), used for both students.
    """
    if method == "tfkd_reg":
        return {"alpha": 0.1, "temperature": 20.0, "multiplier": 100.0} if model == "resnet18" \
            else {"alpha": 0.95, "temperature": 40.0, "multiplier": 1.0}
    if method == "kd":
        return {"alpha": 0.95, "temperature": 20.0, "multiplier": 1.0}
    return {}



# The official losses re-stated (tables.md §2.2), keeping what costs time: a Python loop over the
# batch to build the virtual teacher, and KL with 'mean' reduction (divides by N*K).
def official_loss_kd(z, y, t, alpha, T):
    import torch.nn.functional as F

    kl = F.kl_div(F.log_softmax(z / T, dim=1), F.softmax(t / T, dim=1), reduction="mean")
    return (1.0 - alpha) * F.cross_entropy(z, y) + alpha * T * T * kl


def official_loss_kd_regularization(z, y, alpha, T, multiplier, correct_prob=0.99):
    import torch
    import torch.nn.functional as F

    k = z.size(1)
    pd = torch.full_like(z, (1.0 - correct_prob) / (k - 1))
    for i in range(z.shape[0]):  # one Python iteration (and a device write) per sample
        pd[i, y[i]] = correct_prob
    kl = F.kl_div(F.log_softmax(z, dim=1), F.softmax(pd / T, dim=1), reduction="mean")
    return (1.0 - alpha) * F.cross_entropy(z, y) + alpha * multiplier * kl



def setup_reference(spec: dict):
    """The official-style loop: returns (device, step_fn, batch iterator, finish)."""
    import gc

    import torch
    import torch.nn as nn
    from torch.autograd import Variable
    from torch.utils.data import DataLoader

    from tfkd_cli.data.registry import read_split
    from tfkd_cli.data.reference import ReferenceDataset, official_train_transform
    from tfkd_cli.training.runtime import select_device
    from tfkd_cli.models import build_model

    device = select_device(spec["device"])
    torch.manual_seed(230)  # main.py
    x_all, y_all, classes = read_split("cifar-layout", spec["root"], "train")
    trainset = ReferenceDataset(x_all, y_all, official_train_transform("cifar-layout"))
    del x_all, y_all  # torchvision's CIFAR100 keeps only the numpy HWC array, as ReferenceDataset does
    num_classes = len(classes)
    bs = spec["batch_size"]
    # data_loader.fetch_dataloader: shuffle=True, num_workers from params.json (here 2), no pin_memory
    train_dl = DataLoader(trainset, batch_size=bs, shuffle=True, num_workers=spec["ref_workers"])
    model = build_model(spec["model"], num_classes=num_classes, width=spec["width"]).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1 * (bs / 128), momentum=0.9, weight_decay=5e-4)
    base_lr, warm_iters = 0.1 * (bs / 128), len(train_dl)
    cfg = loss_config(spec["model"], spec["method"])
    teacher_model = None
    if spec["method"] == "kd":
        teacher_model = build_model("resnet18", num_classes=num_classes, width=spec["width"]).to(device)
        teacher_model.eval()  # train_kd(): eval mode, parameters NOT frozen, no torch.no_grad()
    ce_loss = nn.CrossEntropyLoss()
    model.train()
    meters = {"total": 0, "correct": 0, "loss_avg": 0.0, "loss_n": 0, "it": 0}

    def stream():
        while True:  # a new iterator per epoch re-spawns the workers, as in the official loop
            for batch in train_dl:
                yield batch

    def step_fn(train_batch, labels_batch) -> int:
        meters["it"] += 1  # utils.WarmUpLR, stepped every iteration of epoch 0
        for g in optimizer.param_groups:
            g["lr"] = base_lr * meters["it"] / (warm_iters + 1e-8)
        train_batch, labels_batch = train_batch.to(device), labels_batch.to(device)  # official: .cuda()
        train_batch, labels_batch = Variable(train_batch), Variable(labels_batch)
        if teacher_model is None:  # train(): zero_grad before the forward
            optimizer.zero_grad()
            output_batch = model(train_batch)
            if spec["method"] == "tfkd_reg":
                loss = official_loss_kd_regularization(output_batch, labels_batch, cfg["alpha"],
                                                       cfg["temperature"], cfg["multiplier"])
            else:
                loss = ce_loss(output_batch, labels_batch)
            loss.backward()
            optimizer.step()
        else:  # train_kd()
            output_batch = model(train_batch)
            output_teacher_batch = teacher_model(train_batch).to(device)  # official: .cuda()
            output_teacher_batch = Variable(output_teacher_batch, requires_grad=False)
            loss = official_loss_kd(output_batch, labels_batch, output_teacher_batch, cfg["alpha"],
                                    cfg["temperature"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _, predicted = output_batch.max(1)
        meters["total"] += labels_batch.size(0)
        meters["correct"] += predicted.eq(labels_batch).sum().item()  # per-step sync, as official
        meters["loss_avg"] += float(loss.data)  # RunningAverage + tqdm postfix '{:05.3f}'.format(...)
        meters["loss_n"] += 1
        _ = "{:05.3f}".format(meters["loss_avg"] / meters["loss_n"])
        return int(labels_batch.size(0))

    batches = stream()

    def finish() -> dict:
        batches.close()  # drops the DataLoader iterator: its workers are shut down and joined
        gc.collect()
        return {"rss_worker_peak_mib": max_rss_mib(resource.RUSAGE_CHILDREN)}

    return device, step_fn, batches, finish


def loss_bench(device_spec: str, reps: int) -> dict:
    """Forward+backward time of the loss alone on (128 x 100) logits: tfkd vs the official code."""
    import warnings

    import torch

    from tfkd_cli.training.runtime import select_device
    from tfkd_cli.methods import build_loss

    warnings.filterwarnings("ignore", message="reduction: 'mean' divides")
    device = select_device(device_spec)
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(128, 100, generator=g).to(device)
    y = torch.randint(0, 100, (128,), generator=g).to(device)
    reg = loss_config("resnet18", "tfkd_reg")
    ce_tfkd = build_loss("ce")
    reg_tfkd = build_loss("tfkd_reg", **reg)
    ce_off = torch.nn.CrossEntropyLoss()
    cases = {
        "ce (tfkd build_loss)": lambda z: ce_tfkd(z, y),
        "tfkd_reg (tfkd build_loss)": lambda z: reg_tfkd(z, y),
        "ce (official nn.CrossEntropyLoss)": lambda z: ce_off(z, y),
        "tfkd_reg (official per-sample loop)": lambda z: official_loss_kd_regularization(
            z, y, reg["alpha"], reg["temperature"], reg["multiplier"]),
    }
    out = {}
    for name, fn in cases.items():
        z = z0.clone().requires_grad_(True)
        for _ in range(max(3, reps // 10)):
            fn(z).backward()
        sync(device)
        best = float("inf")
        for _ in range(3):  # best of 3 blocks: the least disturbed by other load
            t0 = time.perf_counter()
            for _ in range(reps):
                fn(z).backward()
            sync(device)
            best = min(best, (time.perf_counter() - t0) / reps)
        out[name] = best * 1e6  # microseconds per call
    return out
