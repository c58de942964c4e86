"""The validation split (data.val_per_class): class-balanced, seeded by data.subset_seed only,
part of the run identity; val metrics every epoch; best / selected / last in summary.json; the
val-selected number beside the official one in results tables."""

import json

import pytest
import torch
from click.testing import CliRunner

from tfkd_cli.storage import rundir
from tfkd_cli.cli.main import cli
from tfkd_cli.data import build_data
from tfkd_cli.data.split import val_split
from tfkd_cli.errors import TfkdError
from tfkd_cli.config.recipe import Recipe, from_dict
from tfkd_cli.storage.selection import select_epochs


def labels(counts):
    g = torch.Generator().manual_seed(0)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return y[torch.randperm(len(y), generator=g)]


def test_split_is_class_balanced_disjoint_and_complete():
    y = labels([12, 15, 9])
    train, val = val_split(y, 4, 0, 3)
    assert torch.bincount(y[val], minlength=3).tolist() == [4, 4, 4]
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(len(y)))
    assert train.tolist() == sorted(train.tolist()) and val.tolist() == sorted(val.tolist())


def test_split_depends_on_subset_seed_only():
    y = labels([30, 30])
    a = val_split(y, 5, 0, 2)[1]
    assert torch.equal(a, val_split(y, 5, 0, 2)[1])
    assert not torch.equal(a, val_split(y, 5, 1, 2)[1])


def test_per_class_subset_is_drawn_from_what_is_left():
    y = labels([20, 25])
    train, val = val_split(y, 5, 3, 2, per_class=10)
    assert torch.bincount(y[train], minlength=2).tolist() == [10, 10]
    assert set(train.tolist()).isdisjoint(val.tolist())
    # the held-out images do not depend on the training subset's size
    assert torch.equal(val, val_split(y, 5, 3, 2)[1]) and torch.equal(val, val_split(y, 5, 3, 2, per_class=3)[1])


def test_no_split_is_the_per_class_subset_of_old():
    from tfkd_cli.data.loaders import class_balanced_subset

    y = labels([20, 25, 30])
    train, val = val_split(y, 0, 4, 3, per_class=7)
    assert val.numel() == 0 and torch.equal(train, class_balanced_subset(y, 7, 4, 3, "toy"))
    assert torch.equal(val_split(y, 0, 4, 3)[0], torch.arange(len(y)))


def test_split_larger_than_a_class_is_one_line():
    y = labels([10, 6])
    with pytest.raises(TfkdError) as e:
        val_split(y, 6, 0, 2, what="toy")
    msg = str(e.value)
    assert "\n" not in msg and "val_per_class=6" in msg and "class 1 has only 6" in msg and "<= 5" in msg
    with pytest.raises(TfkdError, match="per_class=3 plus data.val_per_class=4.*per_class <= 2"):
        val_split(y, 4, 0, 2, per_class=3, what="toy")


def test_build_data_holds_out_val_and_keeps_test():
    plain = build_data("digits", per_class=30)
    d = build_data("digits", per_class=30, val_per_class=5)
    assert d.num_train == 300 and d.val.num_test == 50 and d.num_test == plain.num_test
    assert plain.val is None
    xs, ys = zip(*d.val.test_batches())
    assert torch.bincount(torch.cat(ys), minlength=10).tolist() == [5] * 10
    again = build_data("digits", val_per_class=5)  # no subset: the same held-out images
    assert torch.equal(torch.cat(xs), torch.cat([x for x, _ in again.val.test_batches()]))
    assert again.num_train == 1437 - 50


def test_recipe_field_identity_and_hash():
    # runs made before the field keep their identity: the hash of 35f0c10 (identity v1), and the
    # v2 hash of registry-era runs
    assert Recipe().legacy_hash() == "2d4853816a38d277" and Recipe().hash() == "3525d1f4f39ca466"
    r = from_dict({"data": {"val_per_class": 20}})
    assert r.identity()["data"]["val_per_class"] == 20 and r.hash() != Recipe().hash()
    assert "val_per_class" not in Recipe().identity()["data"]
    with pytest.raises(TfkdError, match="data.val_per_class must be >= 0"):
        from_dict({"data": {"val_per_class": -1}})


def test_cli_flag_sets_the_recipe_field():
    r = CliRunner().invoke(cli, ["train-teacher", "--dataset", "digits", "--val-per-class", "7", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "val_per_class: 7" in r.output


def row(epoch, test, val=None):
    r = {"epoch": epoch, "train_top1": 50.0, "test_top1": test, "test_top5": 90.0, "test_nll": 1.0, "test_ece": 5.0}
    if val is not None:
        r.update({"val_top1": val, "val_nll": 1.5})
    return r


def test_selection_best_on_test_selected_on_val():
    rows = [row(1, 40.0, 45.0), row(2, 60.0, 50.0), row(3, 55.0, 58.0), row(4, 50.0, 58.0)]
    s = select_epochs(rows)
    assert s["best"]["epoch"] == 2 and s["best"]["top1"] == 60.0  # official: the test set picks
    assert s["selected"]["epoch"] == 4 and s["selected"]["top1"] == 50.0  # val picks; ties to the later
    assert s["selected"]["val_top1"] == 58.0 and s["last"]["epoch"] == 4
    no_val = select_epochs([row(1, 40.0), row(2, 40.0)])
    assert no_val["selected"] is None and no_val["best"]["epoch"] == 2
    assert select_epochs([]) == {"best": None, "selected": None, "last": None}


def test_run_with_split_reports_val_every_epoch(tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train-teacher", "--dataset", "digits", "--epochs", "2", "--width", "0.125",
                                 "--per-class", "30", "--val-per-class", "5", "--set", "runtime.threads=1",
                                 "--quiet", "--device", "cpu", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "val-selected top-1" in r.output
    rows = rundir.read_metrics(out)
    assert len(rows) == 2 and all(r["val_top1"] != "" and r["val_nll"] != "" for r in rows)
    s = json.loads((out / "summary.json").read_text())
    assert s["val_per_class"] == 5 and s["num_val"] == 50 and s["num_train"] == 300
    vals = [float(r["val_top1"]) for r in rows]
    want = max(i for i in range(2) if vals[i] == max(vals))
    sel = s["selected"]
    assert sel["epoch"] == want + 1 and sel["top1"] == float(rows[want]["test_top1"])
    assert set(sel) >= {"top1", "top5", "nll", "ece", "val_top1", "val_nll"}
    tests = [float(r["test_top1"]) for r in rows]
    assert s["best"]["top1"] == max(tests) and s["last"]["epoch"] == 2


def test_val_split_too_large_for_a_run_is_one_line(tmp_path):
    r = CliRunner().invoke(cli, ["train-teacher", "--dataset", "digits", "--epochs", "1", "--val-per-class", "500",
                                 "--quiet", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "val_per_class=500" in lines[0] and "Traceback" not in r.output
    assert not (tmp_path / "r").exists()


def test_results_cell_shows_val_selected_beside_official(tmp_path):
    from tfkd_cli.tables import render
    from tfkd_cli.tables import report
    from tfkd_cli.tables.plan import PlannedRun
    from tfkd_cli.tables.spec import Cell, Column, Row, Scale, Table

    recipe = from_dict({"data": {"val_per_class": 5}})
    runs = []
    for seed, (best, sel) in enumerate([(70.0, 66.0), (72.0, 68.0)]):
        d = tmp_path / f"r{seed}"
        d.mkdir()
        rundir.write_summary(d, {"status": "finished", "recipe_hash": recipe.hash(), "run_time_s": 1.0,
                                 "train_time_s": 1.0, "best": {"epoch": 3, "top1": best},
                                 "selected": {"epoch": 2, "top1": sel, "val_top1": 60.0},
                                 "last": {"epoch": 3, "top1": best, "train_top1": 90.0}})
        runs.append(PlannedRun("r", seed, recipe, d, "k"))
    table = Table(table="t", title="toy", source="none", status="partial", dataset="digits",
                  columns=[Column("a", "A")], rows=[Row("row", {"a": Cell(run="r", paper=71.0)})], runs={"r": {}})
    res = report.build_results(table, Scale("tiny", "toy"), runs, [0, 1])
    cell = res.rows[0].cells["a"]
    assert cell.mean == 71.0 and cell.selected_mean == 67.0 and cell.n_selected == 2
    assert cell.delta_paper == 0.0  # paper comparisons keep the official number
    md = render.to_markdown(res)
    assert "71.00±1.41 (n=2); val-sel 67.00±1.41" in md and "- headline: the official number" in md
