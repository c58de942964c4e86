"""The CPU channels_last guard (tfkd_cli.training.channels_last): one thread for exactly the odd channels_last
CPU steps, all threads otherwise, restored afterwards. Run in a subprocess with two threads,
so that a segfault in the guarded backward fails the test instead of killing pytest."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import torch
    from tfkd_cli.training import channels_last as cl_guard
    torch.set_num_threads(2)
    cl = torch.channels_last
    conv = torch.nn.Conv2d(8, 16, 1, stride=2, bias=False).to(memory_format=cl)
    seen = []
    for n, fmt in [(29, cl), (1, cl), (28, cl), (29, torch.contiguous_format)]:
        x = torch.randn(n, 8, 8, 8).contiguous(memory_format=fmt).requires_grad_()
        with cl_guard.safe_step(x):
            seen.append(torch.get_num_threads())
            conv(x).sum().backward()  # the strided 1x1 backward torch 2.14 crashed in
        assert torch.get_num_threads() == 2
    try:
        with cl_guard.safe_step(torch.randn(3, 8, 8, 8).contiguous(memory_format=cl)):
            raise ValueError
    except ValueError:
        pass
    assert torch.get_num_threads() == 2
    print(seen)
""")


def test_guard_uses_one_thread_for_odd_channels_last_cpu_batches_only():
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    # odd channels_last: 1 thread; even channels_last and odd contiguous: both threads
    assert p.stdout.split("\n")[-2] == "[1, 1, 2, 2]"


def test_cpu_unsafe_convs_names_the_narrow_strided_1x1_shortcuts():
    import torch

    from tfkd_cli.models import build_model
    from tfkd_cli.training.channels_last import cpu_unsafe_convs

    with torch.device("meta"):
        sixteenth = build_model("resnet18", num_classes=10, width=0.0625)
        eighth = build_model("resnet18", num_classes=10, width=0.125)
    assert cpu_unsafe_convs(sixteenth) == ["layer2.0.shortcut.0"]  # 4 input channels, stride 2
    assert cpu_unsafe_convs(eighth) == []  # 8 channels: safe
    assert cpu_unsafe_convs(torch.nn.Conv2d(4, 8, 3, stride=2)) == []  # only 1x1 kernels crash


def test_a_run_whose_model_crashes_channels_last_trains_without_it(tmp_path):
    """ResNet18 at a sixteenth width aborted the process in its first backward with
    channels_last on the CPU (torch 2.14.1); the run turns channels_last off, says so, finishes."""
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "tfkd_cli", "train-teacher", "--model", "resnet18",
                        "--width", "0.0625", "--dataset", "digits", "--epochs", "1", "--device", "cpu",
                        "--channels-last", "--out", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    assert "channels_last off for this run" in p.stdout + p.stderr
    import json

    assert json.loads((out / "summary.json").read_text())["channels_last"] is False
