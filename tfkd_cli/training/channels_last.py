"""The CPU channels_last guard: one thread for the training steps torch 2.14 may crash on.

torch 2.14's CPU backward of a strided 1x1 convolution (the ResNet shortcuts) in channels_last
was seen to segfault on odd batch sizes with more than one thread (an epoch's last, partial
batch is often odd). Such a step runs with one thread; every other step keeps all threads, so
channels_last stays on with any thread count. The choice depends only on the batch (its size,
device and memory format) and the thread setting, so a resumed run takes it at the same steps
as an uninterrupted one and their numbers stay equal.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


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
