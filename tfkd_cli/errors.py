"""User-facing errors.

A `TfkdError` is bad input or a failed precondition the user can fix. The CLI prints its
message as one line and exits with status 2; it never shows a traceback for these.
`Interrupted` is no error: the run stopped on a signal after saving a checkpoint (exit 130).
"""

from __future__ import annotations

from pathlib import Path


class TfkdError(Exception):
    """An error caused by user input (recipe, path, checkpoint, data); message is one line."""


class ConfigError(TfkdError, ValueError):
    """A bad parameter or recipe value. Also a ValueError, so code using tfkd as a library
    (`tfkd_cli.losses`) catches it as one; its message is the line the CLI prints."""


class RunFailed(TfkdError):
    """A run stopped on a numerical fault (NaN/inf loss); the last good checkpoint is kept."""


class Interrupted(Exception):
    """SIGINT/SIGTERM: the run saved a checkpoint and stopped; `--resume` continues it."""

    def __init__(self, run: Path, epoch: int, step: int):
        super().__init__(f"interrupted at epoch {epoch} step {step}; checkpoint saved. "
                         f"Resume with: --resume --out {run}")
        self.run = run
