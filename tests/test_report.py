"""Claim verdicts in results tables: the noise qualifier beside each verdict."""

import math

from tfkd_cli.tables.report import _noise
from tfkd_cli.tables.results import Cell, Row


def cell(mean, std, n):
    return Cell(mean=mean, std=std, n=n)


def test_gain_beyond_two_standard_errors_is_clear():
    a, b = cell(61.0, 0.2, 2), cell(60.0, 0.2, 2)  # se = sqrt(0.02 + 0.02) = 0.2
    assert _noise(1.0, a, b) == "clear"
    assert _noise(-1.0, a, b) == "clear"  # a clear loss is clear too


def test_gain_within_two_standard_errors_is_noise():
    a, b = cell(60.5, 1.0, 2), cell(60.0, 1.0, 2)  # se = 1.0
    assert _noise(0.5, a, b) == "within noise"
    se = math.sqrt(1.0 / 2 + 1.0 / 2)
    assert _noise(2 * se + 1e-9, a, b) == "clear" and _noise(2 * se - 1e-9, a, b) == "within noise"


def test_single_seed_has_unknown_noise():
    assert _noise(3.0, cell(63.0, 0.0, 1), cell(60.0, 0.5, 2)) == "1 seed"
    assert _noise(None, cell(None, None, 0), cell(60.0, 0.5, 2)) is None


def test_git_commit_is_read_once_per_process(monkeypatch):
    """A long reproduce must record the commit of the code it loaded, not a HEAD that moved."""
    from tfkd_cli.storage import rundir

    first = rundir.git_commit()  # a process's first run reads it

    def no_git(*a, **k):
        raise AssertionError("git was asked again")

    monkeypatch.setattr(rundir.subprocess, "run", no_git)
    assert rundir.git_commit() == first


def test_row_label_shows_the_epoch_the_scale_used():
    """Issue #22: the smoke table's ResNet50 pt-teacher trained 1 epoch, not the paper's 51."""
    from tfkd_cli.tables.render import row_label
    from tfkd_cli.tables.report import _shown_label

    cells = {"teacher": Cell(epoch=51, run_epoch=1), "student": Cell(epoch=None)}
    assert _shown_label("ResNet50 (51 ep) -> ResNet18", cells) == "ResNet50 (1 ep) -> ResNet18"
    assert _shown_label("ResNet50 (51 ep) -> ResNet18", {"teacher": Cell(epoch=51, run_epoch=51)}) == \
        "ResNet50 (51 ep) -> ResNet18"  # the paper scale
    assert row_label(Row.from_dict({"label": "old table row"})) == "old table row"  # tables written before `shown`
