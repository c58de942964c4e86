"""User-facing errors.

A `TfkdError` is bad input or a failed precondition the user can fix. The CLI prints its
message as one line and exits with status 2; it never shows a traceback for these.
"""


class TfkdError(Exception):
    """An error caused by user input (recipe, path, checkpoint, data); message is one line."""


class RunFailed(TfkdError):
    """A run stopped on a numerical fault (NaN/inf loss); the last good checkpoint is kept."""
