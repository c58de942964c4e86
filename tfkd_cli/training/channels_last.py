"""The CPU channels_last guard: one thread for the training steps torch 2.14 may crash on.

torch 2.14's CPU backward of a strided 1x1 convolution (the ResNet shortcuts) in channels_last
was seen to segfault on odd batch sizes with more than one thread (an epoch's last, partial
batch is often odd). Such a step runs with one thread; every other step keeps all threads, so
channels_last stays on with any thread count. The choice depends only on the batch (its size,
device and memory format) and the thread setting, so a resumed run takes it at the same steps
as an uninterrupted one and their numbers stay equal.

A second crash needs no odd batch: the CPU backward of a strided 1x1 convolution with fewer than
8 input channels aborts in channels_last at any thread count and batch size (double free or
segfault; torch 2.14.1, AMD EPYC AVX2, 2026-12-04: in_channels 1-7 crash, 8, 12 and 16 pass, at
16x16 and 32x32 inputs). ResNet18 at a sixteenth width has such shortcuts (4 channels), so a
CPU run of a model that holds one trains in the default memory format (`cpu_unsafe_convs`).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

# the fewest input channels a strided 1x1 convolution needs for a safe channels_last CPU backward
MIN_STRIDED_1X1_CHANNELS = 8


def needs_one_thread(x: torch.Tensor) -> bool:
    """True for an odd channels_last CPU batch while torch uses more than one thread."""
    return (x.device.type == "cpu" and x.dim() == 4 and x.shape[0] % 2 == 1
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            and torch.get_num_threads() > 1)


@contextlib.contextmanager
def safe_step(x: torch.Tensor) -> Iterator[None]:
    """Run the enclosed training step (forward, backward, optimiser) with one CPU thread when
    `needs_one_thread(x)`; restore the thread count afterwards, also on an exception."""
    if not needs_one_thread(x):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def cpu_unsafe_convs(model: nn.Module) -> list[str]:
    """Names of the strided 1x1 convolutions whose channels_last CPU backward crashes torch 2.14."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1
            and m.in_channels < MIN_STRIDED_1X1_CHANNELS]
