"""The two controls (issue #17) as methods: ce's label_weight and the uniform teacher.

Golden values are hand computations (plain Python over float64) from the formulas in the
losses' docstrings; the recipe, identity and bad-input contract are checked like any method's.
"""

from __future__ import annotations

import math

import pytest
import torch

from tfkd_cli.errors import TfkdError
from tfkd_cli.methods import build_loss
from tfkd_cli.config.recipe import from_dict

from conftest import fail

N, K = 5, 7


def _softmax(row, T=1.0):
    m = max(v / T for v in row)
    e = [math.exp(v / T - m) for v in row]
    return [x / sum(e) for x in e]


def _ce(z, y):
    return sum(-math.log(_softmax(z[i])[y[i]]) for i in range(len(y))) / len(y)


def _kl_sum(p_rows, q_rows):
    return sum(p * (math.log(p) - math.log(q)) for pr, qr in zip(p_rows, q_rows) for p, q in zip(pr, qr))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(11)
    z = torch.randn(N, K, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, K, (N,), generator=g)
    return z, y, z.tolist(), y.tolist()


@pytest.mark.parametrize("w", [0.05, 0.4, 1.0])
def test_ce_label_weight(batch, w):
    z, y, zl, yl = batch
    assert build_loss("ce", label_weight=w)(z, y).item() == pytest.approx(w * _ce(zl, yl), abs=1e-9)


def test_ce_label_weight_one_is_plain_ce_bit_for_bit(batch):
    z, y, *_ = batch
    assert torch.equal(build_loss("ce", label_weight=1.0)(z, y), build_loss("ce")(z, y))


@pytest.mark.parametrize("semantics,divisor", [("official", N * K), ("paper", N)])
@pytest.mark.parametrize("name,alpha,T,mult", [("kd", 0.95, 20.0, 1.0), ("kd", 0.6, 4.0, 1.0),
                                               ("kd_self", 0.95, 6.0, 50.0)])
def test_kd_uniform_teacher(batch, name, alpha, T, mult, semantics, divisor):
    """L = (1-a) CE + a T^2 m KL(u || s_T(z)) / R with u = 1/K; no teacher logits needed."""
    z, y, zl, yl = batch
    u = [[1.0 / K] * K for _ in range(N)]
    want = (1 - alpha) * _ce(zl, yl) + alpha * T * T * mult * _kl_sum(u, [_softmax(r, T) for r in zl]) / divisor
    got = build_loss(name, uniform_teacher=True, alpha=alpha, temperature=T, multiplier=mult, semantics=semantics)
    assert got(z, y).item() == pytest.approx(want, abs=1e-9)
    # the uniform teacher is all-equal teacher logits, whatever a caller passes as t
    zero = build_loss(name, alpha=alpha, temperature=T, multiplier=mult, semantics=semantics)(z, y, torch.zeros_like(z))
    assert got(z, y).item() == pytest.approx(zero.item(), abs=1e-12)


@pytest.mark.parametrize("semantics", ["official", "paper"])
@pytest.mark.parametrize("alpha,T,mult", [(0.95, 40.0, 1.0), (0.1, 20.0, 100.0)])
def test_tfkd_reg_uniform_teacher(batch, semantics, alpha, T, mult):
    """target = 1/K instead of softmax(p^d / T); the student form of the semantics is kept."""
    z, y, zl, yl = batch
    u = [[1.0 / K] * K for _ in range(N)]
    q = [_softmax(r, T if semantics == "paper" else 1.0) for r in zl]
    div = N * K if semantics == "official" else N
    want = (1 - alpha) * _ce(zl, yl) + alpha * mult * _kl_sum(u, q) / div
    got = build_loss("tfkd_reg", uniform_teacher=True, alpha=alpha, temperature=T, multiplier=mult,
                     semantics=semantics)(z, y)
    assert got.item() == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("name", ["ce", "lsr"])
def test_uniform_teacher_refused_without_a_teacher_distribution(name):
    with pytest.raises(TfkdError, match="control of kd, kd_self, tfkd_reg"):
        build_loss(name, uniform_teacher=True)


def test_identity_of_the_controls():
    kd = from_dict({"method": "kd", "teacher": {"path": "t"}, "loss": {"alpha": 0.95}})
    uni = from_dict({"method": "kd", "teacher": {"uniform": True}, "loss": {"alpha": 0.95}})
    assert uni.hash() != kd.hash() and uni.legacy_hash() is None
    assert "uniform" not in kd.identity_v1()["teacher"] or not kd.identity_v1()["teacher"]["uniform"]
    ce = from_dict({})
    assert from_dict({"loss": {"label_weight": 1.0}}).hash() == ce.hash()  # w = 1 is plain ce
    w = from_dict({"loss": {"label_weight": 0.05}})
    assert w.hash() != ce.hash() and w.identity()["loss"] == {"label_weight": 0.05} and w.legacy_hash() is None
    assert from_dict({"method": "tfkd_reg", "teacher": {"uniform": True}}).hash() != from_dict({"method": "tfkd_reg"}).hash()


@pytest.mark.parametrize("args,expect", [
    (["train-teacher", "--method", "lsr", "--teacher", "uniform"], "teacher.uniform: a uniform teacher"),
    (["train-teacher", "--teacher", "uniform"], "method ce has no teacher to replace"),
    (["train-teacher", "--set", "loss.label_weight=0"], "loss.label_weight must be in (0, 1] (got 0.0)"),
    (["train-teacher", "--set", "loss.label_weight=1.5"], "loss.label_weight must be in (0, 1] (got 1.5)"),
    (["train-teacher", "--method", "lsr", "--set", "loss.label_weight=0.5"],
     "loss.label_weight must be unset for method lsr, which does not read it (only ce does)"),
    (["distill", "--teacher", "uniform", "--set", "loss.label_weight=0.5"], "only ce does"),
    (["distill", "--teacher", "uniform", "--set", "teacher.path=x"], "teacher.path must be empty with teacher.uniform"),
])
def test_bad_control_input_is_one_line(args, expect, tmp_path):
    line = fail([*args, "--dataset", "digits", "--out", tmp_path / "r", "--dry-run"])
    assert expect in line, line
    assert not (tmp_path / "r").exists()


def test_uniform_teacher_dry_run_resolves(tmp_path):
    from click.testing import CliRunner

    from tfkd_cli.cli.main import cli

    r = CliRunner().invoke(cli, ["distill", "--teacher", "uniform", "--dataset", "digits", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "uniform: true" in r.stdout and "path: null" in r.stdout


# -- controls and verdicts in a results table (fixture summaries, no training) ----------

def _fake_results(tmp_path, values):
    """table3 at smoke with controls, 2 seeds; every run 'finished' with values(run id) ->
    (test top-1, train top-1, teacher_share)."""
    import json

    from tfkd_cli.tables import report
    from tfkd_cli.tables.controls import add_controls
    from tfkd_cli.tables.plan import build_plan
    from tfkd_cli.tables.spec import load_scale, load_table

    table, scale = add_controls(load_table("table3")), load_scale("smoke")
    plan = build_plan(table, scale, [0, 1], tmp_path / "runs")
    for p in plan:
        test, train, share = values(p.id)
        test += 0.1 * p.seed
        p.dir.mkdir(parents=True, exist_ok=True)
        (p.dir / "summary.json").write_text(json.dumps({
            "status": "finished", "best": {"top1": test, "epoch": 5},
            "last": {"top1": test, "train_top1": train, "epoch": 5},
            "diagnostics": {"grad_label": 0.1, "grad_teacher": 0.0, "teacher_share": share}}))
        (p.dir / "metrics.csv").write_text(f"epoch,test_top1,teacher_share\n1,{test},{share / 2}\n5,{test},{share}\n")
    return report.build_results(table, scale, plan, [0, 1])


def _values(rid):
    if rid == "mv2_from_r18pt":
        return 11.0, 12.0, 0.02  # starved: train below 2x chance (digits: 20%)
    if rid.endswith("~uniform"):
        return 40.0, 70.0, 0.3
    if rid.endswith("~ce"):
        return 30.0, 60.0, 0.0
    if "_from_" in rid:
        return 45.0, 75.0, 0.25
    return 40.0, 80.0, 0.0  # baselines and teachers: they over-fit (80 train vs 40 test)


def test_report_verdicts_and_controls(tmp_path):
    from tfkd_cli.tables import render
    from tfkd_cli.tables import report
    from tfkd_cli.tables.compare import tally

    res = _fake_results(tmp_path, _values)
    claims = {r.label: r.claims[0] for r in res.rows}
    outcomes = [cl.verdict for cl in claims.values()]
    # the starved run's controls trained (60-70% train): no, the teacher stopped it (docs/verdicts.md)
    assert outcomes.count("no") == 1 and outcomes.count("yes") == len(outcomes) - 1
    bad = next(cl for cl in claims.values() if cl.verdict == "no")
    assert bad.reason.startswith("dekd did not train: train top-1 12.00 < 2x chance (20.00)")
    assert bad.reason.endswith("both its controls trained, so the teacher stopped it")
    # beats its controls: +5 over the uniform teacher, +15 over ce x (1-a), 2 seeds, std 0.07
    good = [cl for cl in claims.values() if cl.verdict == "yes"]
    assert all(cl.controls_verdict == "yes" for cl in good)
    assert bad.controls_verdict == "inconclusive" and "did not train" in bad.controls_reason
    assert tally(list(claims.values())) == f"{len(good)} yes, 1 no, 0 inconclusive, 0 n/a"
    md = render.to_markdown(res)
    assert "De-KD [uniform teacher] (ours)" in md and "De-KD [ce x (1-a)] (ours)" in md
    assert "De-KD improved the student: beats its controls?" in md
    assert "no (dekd did not train" in md and "docs/verdicts.md" in md
    assert "teacher_share first" in md and "0.1250" in md and "0.2500" in md
    files = report.write(res, tmp_path / "out")
    assert all(f.stat().st_size > 0 for f in files)


def test_a_control_within_noise_means_no(tmp_path):
    def values(rid):
        if rid.endswith("~uniform"):
            return 45.05, 75.0, 0.3  # as good as the teacher: the gain is not the teacher's
        return _values(rid) if rid != "mv2_from_r18pt" else (45.0, 75.0, 0.25)

    res = _fake_results(tmp_path, values)
    for r in res.rows:
        cl = r.claims[0]
        assert cl.verdict == "yes"
        assert cl.controls_verdict == "no" and "over uniform teacher" in cl.controls_reason


def test_compare_counts_the_three_outcomes(tmp_path):
    from click.testing import CliRunner

    from tfkd_cli.cli.main import cli
    from tfkd_cli.tables import report

    def values(rid):  # one claim no: a student below its baseline
        if rid.startswith(("mv2_from_r18pt~", "mv2_from_r50pt~")):  # one run, content-addressed
            return 11.0, 12.0, 0.0  # the starved run's controls starve too: it stays inconclusive
        return (35.0, 75.0, 0.2) if rid == "r18_from_r50pt" else _values(rid)

    report.write(_fake_results(tmp_path, values), tmp_path / "out")
    r = CliRunner().invoke(cli, ["compare", str(tmp_path / "out"), "--fail-on-claims", "--format", "md"])
    assert r.exit_code == 1
    assert "claims: 6 yes, 1 no, 1 inconclusive, 0 n/a" in r.stdout
    assert "1 claim(s) do not hold (6 yes, 1 no, 1 inconclusive, 0 n/a)" in r.stderr
    assert "inconclusive (dekd did not train" in r.stdout and "beats its controls: yes" in r.stdout
