"""Verdicts on fixtures: cells copied from the committed mini/smoke tables (results/*/table.json,
per-cell mean, std, n, last-epoch test and final train top-1) plus hand-made controls."""

from dataclasses import replace

import pytest

from tfkd_cli.tables.report import _noise
from tfkd_cli.tables.results import Cell
from tfkd_cli.tables.verdicts import (Thresholds, Verdict, beats_controls, claim_verdict, claim_verdicts, criteria,
                                         fit_gap, inconclusive_reason, not_trained, regime_floor,
                                         regime_miss, two_se)


def cell(mean, std=0.5, n=2, train=None, last=None):
    return Cell(mean=mean, std=std, n=n, train_top1_mean=train, last_mean=last)


# results/archive/table3-mini-v2 and tfkd-reg-cifar100-mini-v2 (tiny100-32, K=100: chance 1%)
MV2_BASE = cell(5.66, 1.47, train=9.40, last=5.55)
MV2_DEKD_R50 = cell(2.69, 0.04, train=2.175, last=2.52)  # above 2x chance, below half the baseline
MV2_DEKD_R18 = cell(1.88, 0.31, train=1.95, last=1.78)
MV2_LSR = cell(5.12, 0.93, train=7.375, last=5.08)
R18_BASE = cell(10.16, 0.14, train=19.675, last=10.14)
R18_DEKD = cell(11.65, 0.01, train=22.775, last=11.34)
R18_REG = cell(10.97, 0.41, train=23.2, last=10.9)
R18_KD = cell(11.08, 0.17, train=21.65, last=10.92)
GOOG_BASE = cell(7.09, 0.83, train=7.7, last=6.92)
GOOG_REG = cell(6.51, 0.44, train=6.03, last=6.38)
# results/table3/smoke (digits, K=10: chance 10%; 1 seed)
SMOKE_SV2_BASE = cell(17.22, 0.0, n=1, train=11.62, last=17.22)
SMOKE_R18_BASE = cell(81.94, 0.0, n=1, train=78.43, last=81.94)
SMOKE_R18_DEKD = cell(30.56, 0.0, n=1, train=26.65, last=30.56)
# results/table3/smoke, ResNet50 (1 ep) -> ResNet18 and ResNet18 -> MobileNetV2 rows (commit ce70a965f0ed)
SMOKE2_R18_BASE = cell(74.17, 0.0, n=1, train=69.38, last=74.17)
SMOKE2_R18_DEKD = cell(9.72, 0.0, n=1, train=9.67, last=9.72)
SMOKE2_R18_UNIFORM = cell(82.22, 0.0, n=1, train=76.69, last=81.94)
SMOKE2_R18_CE = cell(80.28, 0.0, n=1, train=74.18, last=80.28)
SMOKE2_MV2_BASE = cell(26.94, 0.0, n=1, train=21.16, last=26.94)
SMOKE2_MV2_DEKD = cell(10.28, 0.0, n=1, train=10.37, last=10.00)
SMOKE2_MV2_UNIFORM = cell(11.67, 0.0, n=1, train=9.53, last=11.67)
SMOKE2_MV2_CE = cell(10.28, 0.0, n=1, train=9.67, last=8.61)


def test_starved_students_are_inconclusive_not_no():
    """The mini De-KD students that print `no (-3.78)` today: they never trained."""
    v = claim_verdict("improves", MV2_DEKD_R18, MV2_BASE, MV2_BASE, chance=1.0, regularisation=True,
                      names=("dekd", "student"))
    assert v.outcome == "inconclusive"
    assert str(v) == "inconclusive (dekd did not train: train top-1 1.95 < 2x chance (2.00))"
    v = claim_verdict("improves", MV2_DEKD_R50, MV2_BASE, MV2_BASE, chance=1.0, regularisation=True,
                      names=("dekd", "student"))
    assert str(v) == "inconclusive (dekd did not train: train top-1 2.17 < 0.5x the baseline's (9.40))"


def test_regularisation_claim_needs_an_overfitting_baseline():
    # MobileNetV2 baseline: train 9.40 - last test 5.55 = 3.85 < 5 points
    v = claim_verdict("improves", MV2_LSR, MV2_BASE, MV2_BASE, chance=1.0, regularisation=True)
    assert v.outcome == "inconclusive" and "does not over-fit: train - test = +3.85 < 5 points" in v.reason
    # GoogLeNet: 0.78 points
    v = claim_verdict("improves", GOOG_REG, GOOG_BASE, GOOG_BASE, chance=1.0, regularisation=True)
    assert v.outcome == "inconclusive" and "+0.78" in v.reason
    # the same comparison as a non-regularisation claim is decided
    assert claim_verdict("improves", MV2_LSR, MV2_BASE, MV2_BASE, chance=1.0, regularisation=False) == Verdict("no")


def test_resnet18_rows_are_decided():
    """ResNet18 fits its training set (gap 9.5 points) and every student trained: yes / no stand."""
    assert fit_gap(R18_BASE) == pytest.approx(9.535)
    assert claim_verdict("improves", R18_DEKD, R18_BASE, R18_BASE, chance=1.0, regularisation=True) == Verdict("yes")
    assert claim_verdict("improves", R18_BASE, R18_DEKD, R18_BASE, chance=1.0, regularisation=False) == Verdict("no")
    # "Tf-KD_reg matches normal KD" (tolerance 2): -0.11
    assert claim_verdict("matches", R18_REG, R18_KD, R18_BASE, chance=1.0, regularisation=False,
                         tolerance=2.0) == Verdict("yes")
    assert claim_verdict("matches", R18_REG, R18_KD, R18_BASE, chance=1.0, regularisation=False,
                         tolerance=0.0) == Verdict("no")


def test_matches_claim_with_a_starved_side():
    v = claim_verdict("matches", R18_REG, MV2_DEKD_R18, R18_BASE, chance=1.0, regularisation=False,
                      names=("reg", "kd"))
    assert v.outcome == "inconclusive" and v.reason.startswith("kd did not train")


def test_smoke_scale():
    """digits: a baseline at 1.2x chance did not train; a negative train - test gap (augmented,
    epoch-averaged train accuracy after 5 epochs) makes a regularisation claim inconclusive."""
    assert not_trained(SMOKE_SV2_BASE, "baseline", 10.0) == \
        "baseline did not train: train top-1 11.62 < 2x chance (20.00)"
    # ResNeXt29 -> ResNet18 De-KD: 26.65 is 2.7x chance but < half the baseline's 78.43: starved
    v = claim_verdict("improves", SMOKE_R18_DEKD, SMOKE_R18_BASE, SMOKE_R18_BASE, chance=10.0, regularisation=True,
                      names=("dekd", "student"))
    assert str(v) == "inconclusive (dekd did not train: train top-1 26.65 < 0.5x the baseline's (78.43))"
    # a student that trained still meets a baseline that does not over-fit (train 78.43 < test 81.94)
    v = claim_verdict("improves", cell(80.0, 0.0, n=1, train=75.0), SMOKE_R18_BASE, SMOKE_R18_BASE, chance=10.0,
                      regularisation=True)
    assert str(v) == "inconclusive (baseline does not over-fit: train - test = -3.51 < 5 points)"


def test_thresholds_and_unknowns():
    assert not_trained(cell(1.0), "x", 1.0) is None  # no train top-1 recorded: nothing to judge by
    strict = Thresholds(chance_multiple=3.0, baseline_fraction=0.5, min_fit_gap=12.0)
    assert "3x chance (30.00)" in not_trained(SMOKE_R18_DEKD, "dekd", 10.0, th=strict)
    assert "< 12 points" in inconclusive_reason(R18_DEKD, R18_BASE, R18_BASE, chance=1.0, regularisation=True, th=strict)
    assert claim_verdict("improves", cell(None), R18_BASE, R18_BASE, chance=1.0, regularisation=True) == Verdict("n/a")
    assert fit_gap(Cell(train_top1_mean=9.0, mean=5.0)) == 4.0  # falls back to the reported top-1


@pytest.mark.parametrize("a,b", [(cell(10.0, 0.4), cell(9.0, 0.3)), (cell(10.0, 1.0, n=3), cell(9.5, 0.2, n=2)),
                                 (cell(10.0, 0.0, n=1), cell(9.0, 0.3))])
def test_two_se_is_report_noise(a, b):
    """One noise definition: `two_se` says clear exactly when report._noise does."""
    gain = a.mean - b.mean
    noise = two_se(a, b)
    want = _noise(gain, a, b)
    if noise is None:
        assert want == "1 seed"
    else:
        assert want == ("clear" if abs(gain) > noise else "within noise")


def test_beats_controls():
    trained = dict(train=20.0, n=2)
    treated = cell(12.0, 0.2, **trained)
    uniform = cell(11.0, 0.2, **trained)
    scaled_ce = cell(10.5, 0.3, **trained)
    assert beats_controls(treated, {"uniform teacher": uniform, "ce x 0.4": scaled_ce}, R18_BASE,
                          chance=1.0) == Verdict("yes")
    close = cell(11.8, 0.3, **trained)  # +0.20, 2 se = 0.51
    v = beats_controls(treated, {"uniform teacher": close, "ce x 0.4": scaled_ce}, R18_BASE, chance=1.0)
    assert str(v) == "no (+0.20 over uniform teacher, within noise)"
    above = cell(13.0, 0.1, **trained)
    assert str(beats_controls(treated, {"uniform teacher": above}, R18_BASE, chance=1.0)) == \
        "no (-1.00 over uniform teacher)"
    # a starved control still counts: the label term alone could not train, the teacher did it
    starved = cell(1.5, 0.1, n=2, train=1.6)
    assert beats_controls(treated, {"ce x 0.05": starved}, R18_BASE, chance=1.0) == Verdict("yes")


def test_beats_controls_inconclusive():
    ctrl = cell(9.0, 0.2, train=20.0)
    assert beats_controls(MV2_DEKD_R18, {"u": ctrl}, MV2_BASE, chance=1.0).reason.startswith("treated did not train")
    assert beats_controls(R18_DEKD, {}, R18_BASE, chance=1.0) == Verdict("inconclusive", "no controls")
    assert beats_controls(R18_DEKD, {"u": cell(None)}, R18_BASE, chance=1.0) == Verdict("inconclusive", "control u not run")
    one = cell(9.0, 0.0, n=1, train=20.0)
    assert beats_controls(R18_DEKD, {"u": one}, R18_BASE, chance=1.0).reason == "1 seed: the noise against u is unknown"
    assert beats_controls(cell(None), {"u": ctrl}, R18_BASE, chance=1.0) == Verdict("n/a")


# -- a treated run that did not train, judged by its controls -----------------------------

def test_starved_run_whose_controls_trained_is_no():
    """Smoke ResNet50 -> ResNet18: De-KD 9.7% while the uniform teacher (82.2%) and ce x (1-a)
    (80.3%) trained with the same loss weights: the teacher stopped the student."""
    ctrl = {"uniform teacher": SMOKE2_R18_UNIFORM, "ce x (1-a)": SMOKE2_R18_CE}
    v = claim_verdict("improves", SMOKE2_R18_DEKD, SMOKE2_R18_BASE, SMOKE2_R18_BASE, chance=10.0,
                      regularisation=True, names=("dekd", "student"), controls=ctrl)
    assert str(v) == ("no (dekd did not train: train top-1 9.67 < 2x chance (20.00); "
                      "both its controls trained, so the teacher stopped it)")
    # without its controls the same claim is untested, as before
    v = claim_verdict("improves", SMOKE2_R18_DEKD, SMOKE2_R18_BASE, SMOKE2_R18_BASE, chance=10.0,
                      regularisation=True, names=("dekd", "student"))
    assert v.outcome == "inconclusive" and v.reason.startswith("dekd did not train")


def test_starved_run_whose_controls_starved_stays_inconclusive():
    """Smoke ResNet18 -> MobileNetV2: both controls sit at chance too (train 9.5%, 9.7%)."""
    ctrl = {"uniform teacher": SMOKE2_MV2_UNIFORM, "ce x (1-a)": SMOKE2_MV2_CE}
    v = claim_verdict("improves", SMOKE2_MV2_DEKD, SMOKE2_MV2_BASE, SMOKE2_MV2_BASE, chance=10.0,
                      regularisation=True, names=("dekd", "student"), controls=ctrl)
    assert str(v) == "inconclusive (dekd did not train: train top-1 10.37 < 2x chance (20.00))"
    # one control trained, the other starved: not both, so still inconclusive
    one = {"uniform teacher": SMOKE2_R18_UNIFORM, "ce x (1-a)": SMOKE2_MV2_CE}
    v = claim_verdict("improves", SMOKE2_MV2_DEKD, SMOKE2_MV2_BASE, SMOKE2_MV2_BASE, chance=10.0,
                      regularisation=True, names=("dekd", "student"), controls=one)
    assert v.outcome == "inconclusive"
    # a baseline that did not train leaves nothing to compare with, whatever the controls did
    ctrl = {"uniform teacher": SMOKE2_R18_UNIFORM, "ce x (1-a)": SMOKE2_R18_CE}
    v = claim_verdict("improves", SMOKE2_MV2_DEKD, SMOKE_SV2_BASE, SMOKE_SV2_BASE, chance=10.0,
                      regularisation=True, names=("dekd", "student"), controls=ctrl)
    assert v.outcome == "inconclusive" and v.reason.startswith("baseline did not train")


def test_starved_run_whose_controls_are_pending_stays_inconclusive():
    """A partial table: the controls have not run (no train top-1), so nothing shows that the
    loss weights alone train; the claim is untested, not `no`."""
    pending = {"uniform teacher": cell(None), "ce x (1-a)": cell(None)}
    v = claim_verdict("improves", SMOKE2_R18_DEKD, SMOKE2_R18_BASE, SMOKE2_R18_BASE, chance=10.0,
                      regularisation=True, names=("dekd", "student"), controls=pending)
    assert str(v) == "inconclusive (dekd did not train: train top-1 9.67 < 2x chance (20.00))"
    one = {"uniform teacher": SMOKE2_R18_UNIFORM, "ce x (1-a)": cell(None)}
    v = claim_verdict("improves", SMOKE2_R18_DEKD, SMOKE2_R18_BASE, SMOKE2_R18_BASE, chance=10.0,
                      regularisation=True, names=("dekd", "student"), controls=one)
    assert v.outcome == "inconclusive"


def test_table_claim_uses_both_controls_of_its_row():
    """`claim_verdicts` on a hand-built row: both control columns present -> no; one missing ->
    inconclusive (the rule needs both)."""
    from tfkd_cli.tables.spec import Claim

    claim = Claim(text="De-KD improved the student", column="dekd", baseline="student", kind="improves")
    row = {"student": replace(SMOKE2_R18_BASE, method="ce"), "dekd": replace(SMOKE2_R18_DEKD, method="kd"),
           "dekd~uniform": replace(SMOKE2_R18_UNIFORM, method="kd"), "dekd~ce": replace(SMOKE2_R18_CE, method="ce")}
    verdict, beats = claim_verdicts(claim, row, [claim], chance=10.0)
    assert verdict.outcome == "no" and "the teacher stopped it" in verdict.reason
    assert beats.outcome == "inconclusive"  # "beats its controls?" keeps its own rule
    del row["dekd~ce"]
    verdict, _ = claim_verdicts(claim, row, [claim], chance=10.0)
    assert verdict.outcome == "inconclusive"
    assert "both its controls trained" in criteria()


# results/table3/mini seed 0 (tiny100-32, K=100: chance 1%; records of commit 566f80f)
MINI3_MV2_BASE = cell(12.74, 0.0, n=1, train=18.36, last=12.62)
MINI3_R18_BASE = cell(14.44, 0.0, n=1, train=18.24, last=13.96)


def test_regime_bar():
    """The reduced scales' bar on a CE baseline: test >= 10x chance (at most halfway to 100%)
    and train - last test >= 5 points; each missed part is named with its number."""
    assert regime_floor(1.0) == 10.0 and regime_floor(10.0) == 55.0  # 10 classes: 100% is out of reach
    assert regime_miss(MINI3_MV2_BASE, chance=1.0) is None
    assert regime_miss(MINI3_R18_BASE, chance=1.0) == "train - test +4.28 < 5 points"
    assert regime_miss(SMOKE2_MV2_BASE, chance=10.0) == "test top-1 26.94 < 55.00; train - test -5.78 < 5 points"
    assert regime_miss(cell(9.0, train=20.0, last=9.0), chance=1.0) == "test top-1 9.00 < 10.00"
    assert regime_miss(cell(9.0), chance=1.0) == "test top-1 9.00 < 10.00"  # no train top-1: the gap is unknown
    assert regime_miss(Cell(), chance=1.0) is None  # nothing known, nothing missed
