"""Table recipes resolve into plans: every table, every scale, no training.

Checks the declarative side of `tfkd reproduce`: the recipes load, plans build with
dependencies first, shared teachers are planned once, the official hyper-parameters
(recipes/paper/tables.md §2.4/§2.5) come out exactly, scales scale, and every paper number
of recipes/paper/tables.yaml sits in the right cell.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tfkd_cli.errors import TfkdError
from tfkd_cli.tables.plan import PlannedRun, build_plan, unique_runs
from tfkd_cli.tables.spec import index, load_scale, load_table, resolve_id, table_ids

TABLES_YAML = Path(__file__).resolve().parents[1] / "recipes" / "paper" / "tables.yaml"
SCALES = ("paper", "mini", "smoke")
SEEDS = [0, 1]
CIFAR_TABLES = ("table1", "table3", "tfkd-self-cifar100", "tfkd-reg-cifar100")

# Distinct runs (directories) per seed.
EXPECTED_RUNS = {
    # 6 CE baselines + 8 normal-KD students + 8 Re-KD students
    "table1": 22,
    # 3 full baselines + 2 poorly-trained (51-epoch) teachers + 8 De-KD students
    "table3": 13,
    # 6 baselines + 6 Tf-KD_self runs
    "tfkd-self-cifar100": 12,
    # 4 baselines + 2 KD teachers + 4 Tf-KD_reg + 4 normal KD + 4 LSR
    "tfkd-reg-cifar100": 18,
    # 2 models x (baseline, Tf-KD_self, Tf-KD_reg, LSR)
    "tfkd-imagenet": 8,
}

OFFICIAL_RELEASES = {"base_resnet18", "base_resnet50", "base_resnext29", "base_densenet121",
                     "base_mobilenet_v2", "base_shufflenet_v2", "base_googlenet"}


@pytest.fixture(scope="module")
def plans(tmp_path_factory) -> dict:
    """(table id, scale) -> (table, plan), built once for the module."""
    runs_dir = tmp_path_factory.mktemp("runs")
    out = {}
    for tid in table_ids():
        table = load_table(tid)
        for sc in SCALES:
            out[(tid, sc)] = (table, build_plan(table, load_scale(sc), seeds=SEEDS, runs_dir=runs_dir))
    return out


def _run(plan: list[PlannedRun], rid: str, seed: int = 0) -> PlannedRun:
    hits = [p for p in plan if p.id == rid and p.seed == seed]
    assert len(hits) == 1, f"{rid}@s{seed} planned {len(hits)} times"
    return hits[0]


def _paper_tables() -> dict:
    return {t["id"]: t for t in yaml.safe_load(TABLES_YAML.read_text())["tables"]}


# -- every table, every scale ---------------------------------------------------------


def test_index_lists_expected_tables():
    assert set(table_ids()) == set(EXPECTED_RUNS)


@pytest.mark.parametrize("tid", sorted(EXPECTED_RUNS))
def test_resolve_id_aliases(tid):
    assert resolve_id(tid) == tid
    for alias in index()[tid].get("aliases") or []:
        assert resolve_id(alias) == tid
        assert load_table(alias).table == tid


def test_resolve_id_unknown():
    with pytest.raises(TfkdError):
        resolve_id("table99")


@pytest.mark.parametrize("tid", sorted(EXPECTED_RUNS))
@pytest.mark.parametrize("scale", SCALES)
def test_plan_builds(plans, tid, scale, tmp_path):
    table = load_table(tid)
    assert table.table == tid
    plan = build_plan(table, load_scale(scale), seeds=SEEDS, runs_dir=tmp_path)
    assert plan
    assert {p.seed for p in plan} == set(SEEDS)
    # the fixture's plan (another runs_dir) has the same runs and keys
    _, other = plans[(tid, scale)]
    assert [(p.id, p.seed, p.key) for p in plan] == [(p.id, p.seed, p.key) for p in other]


@pytest.mark.parametrize("tid", sorted(EXPECTED_RUNS))
@pytest.mark.parametrize("scale", SCALES)
def test_dependencies_first_and_teacher_paths(plans, tid, scale):
    table, plan = plans[(tid, scale)]
    pos = {(p.id, p.seed): i for i, p in enumerate(plan)}
    assert len(pos) == len(plan), "a (run, seed) is planned twice"
    for i, p in enumerate(plan):
        for dep in p.deps:
            assert pos[dep] < i, f"{p.name} planned before its dependency {dep}"
            assert dep[1] == p.seed
            # the student reads exactly its teacher's planned directory
            assert Path(p.recipe.teacher.path) == plan[pos[dep]].dir
        if p.recipe.method in ("kd", "kd_self"):
            assert p.deps, f"{p.name}: a {p.recipe.method} run needs a teacher run of the table"
        else:
            assert not p.deps and p.recipe.teacher.path is None


@pytest.mark.parametrize("tid", sorted(EXPECTED_RUNS))
@pytest.mark.parametrize("scale", SCALES)
def test_every_cell_run_is_planned(plans, tid, scale):
    table, plan = plans[(tid, scale)]
    planned = {(p.id, p.seed) for p in plan}
    for row in table.rows:
        assert set(row.cells) <= {c.key for c in table.columns}
        for key, cell in row.cells.items():
            assert cell.run, f"{row.label}.{key} has no run"
            for seed in SEEDS:
                assert (cell.run, seed) in planned
    # and every declared run serves a cell or a student
    used = {c.run for r in table.rows for c in r.cells.values()}
    used |= {(spec.get("teacher") or {}).get("run") for spec in table.runs.values()}
    assert set(table.runs) <= used


@pytest.mark.parametrize("tid", sorted(EXPECTED_RUNS))
@pytest.mark.parametrize("scale", SCALES)
def test_unique_run_counts(plans, tid, scale):
    _, plan = plans[(tid, scale)]
    for seed in SEEDS:
        per_seed = [p for p in plan if p.seed == seed]
        assert len(unique_runs(per_seed)) == EXPECTED_RUNS[tid]
        assert len(per_seed) == EXPECTED_RUNS[tid], "two run ids resolve to one run"
    assert len(unique_runs(plan)) == EXPECTED_RUNS[tid] * len(SEEDS)
    # seeds give different directories
    assert len({p.dir for p in plan}) == len(plan)


@pytest.mark.parametrize("tid", sorted(EXPECTED_RUNS))
def test_releases_are_official_folders(tid):
    table = load_table(tid)
    assert set(table.releases.values()) <= OFFICIAL_RELEASES
    for rid in table.releases:
        assert table.runs[rid]["method"] == "ce"


# -- shared teachers ------------------------------------------------------------------


@pytest.mark.parametrize("scale", SCALES)
def test_table3_resnet18_planned_once(plans, scale):
    table, plan = plans[("table3", scale)]
    for seed in SEEDS:
        r18 = _run(plan, "resnet18", seed)
        # pt-teacher of two rows and student baseline of two rows
        assert sum(1 for r in table.rows for k, c in r.cells.items() if c.run == "resnet18" and k == "teacher") == 2
        assert sum(1 for r in table.rows for k, c in r.cells.items() if c.run == "resnet18" and k == "student") == 2
        dirs = {p.dir for p in plan if p.seed == seed and p.recipe.model == "resnet18" and p.recipe.method == "ce"}
        assert dirs == {r18.dir}
        for sid in ("mv2_from_r18pt", "sv2_from_r18pt"):
            st = _run(plan, sid, seed)
            assert Path(st.recipe.teacher.path) == r18.dir
            if scale == "paper":
                assert st.recipe.teacher.epoch == 1
            else:  # pt_teachers: strength (the epoch is picked from the finished teacher run)
                assert st.recipe.teacher.epoch is None and st.recipe.teacher.ratio == 0.2


@pytest.mark.parametrize("scale", SCALES)
def test_table1_each_baseline_one_run(plans, scale):
    table, plan = plans[("table1", scale)]
    baselines = {"mobilenetv2", "shufflenetv2", "resnet18", "resnet50", "densenet121", "resnext29"}
    assert {rid for rid, s in table.runs.items() if s["method"] == "ce"} == baselines
    for seed in SEEDS:
        ce = [p for p in plan if p.seed == seed and p.recipe.method == "ce"]
        assert len(ce) == len({p.dir for p in ce}) == 6
        assert len({p.recipe.model for p in ce}) == 6
        # each baseline is the teacher of its normal-KD students and its Re-KD students
        for rid in baselines:
            b = _run(plan, rid, seed)
            students = [p for p in plan if p.seed == seed and p.deps == [(rid, seed)]]
            assert students, rid
            assert all(Path(s.recipe.teacher.path) == b.dir for s in students)
    # the rows' teacher/student cells are the baselines, the KD cells are distinct runs
    kd_runs = [r.cells[k].run for r in table.rows for k in ("kd", "rekd")]
    assert len(kd_runs) == len(set(kd_runs)) == 16


def test_shared_runs_across_tables(plans):
    """A baseline (or KD pair) declared in several tables is one run directory."""
    shared = ["mobilenetv2", "shufflenetv2", "resnet18", "resnet50", "densenet121", "resnext29", "googlenet",
              "mv2_from_r18", "sv2_from_r18"]
    for scale in SCALES:
        for rid in shared:
            dirs = {}
            for tid in CIFAR_TABLES:
                table, plan = plans[(tid, scale)]
                if rid in table.runs:
                    dirs[tid] = _run(plan, rid, 0).dir
            assert len(dirs) >= 2, (rid, dirs)
            assert len(set(dirs.values())) == 1, (scale, rid, dirs)
            if rid == "resnet18":
                assert set(dirs) == set(CIFAR_TABLES)


# -- official hyper-parameters --------------------------------------------------------


def _check(p: PlannedRun, method, alpha=None, temperature=None, multiplier=None, batch=128, lr=None,
           teacher=None, plan=None):
    r = p.recipe
    assert r.method == method
    if alpha is not None:
        assert r.loss.alpha == alpha
    if temperature is not None:
        assert r.loss.temperature == temperature
    if multiplier is not None:
        assert r.loss.multiplier == multiplier
    assert r.train.batch_size == batch
    assert r.optim.lr == 0.1 and r.optim.lr_ref_batch == 128
    assert r.lr == pytest.approx(lr if lr is not None else 0.1 * batch / 128, abs=1e-12)
    if teacher is not None:
        assert p.deps == [(teacher, p.seed)]
        assert Path(r.teacher.path) == _run(plan, teacher, p.seed).dir
        assert r.teacher.epoch is None


def test_table1_official_hyperparameters(plans):
    _, plan = plans[("table1", "paper")]
    g = lambda rid: _run(plan, rid)  # noqa: E731
    # mobilenet_distill/resnet18_teacher
    _check(g("mv2_from_r18"), "kd", 0.95, 20, batch=128, lr=0.1, teacher="resnet18", plan=plan)
    assert g("mv2_from_r18").recipe.model == "mobilenetv2"
    # chosen: no official ResNet50 -> MobileNetV2 config
    _check(g("mv2_from_r50"), "kd", 0.95, 20, batch=128, lr=0.1, teacher="resnet50", plan=plan)
    _check(g("mv2_from_rx29"), "kd", 0.95, 20, batch=64, lr=0.05, teacher="resnext29", plan=plan)
    _check(g("r18_from_rx29"), "kd", 0.6, 20, batch=64, lr=0.05, teacher="resnext29", plan=plan)
    # Re-KD
    _check(g("r18_from_mv2"), "kd", 0.6, 20, batch=128, teacher="mobilenetv2", plan=plan)
    _check(g("r50_from_mv2"), "kd", 0.6, 20, batch=128, lr=0.1, teacher="mobilenetv2", plan=plan)
    _check(g("d121_from_sv2"), "kd", 0.6, 20, batch=100, lr=0.078125, teacher="shufflenetv2", plan=plan)
    _check(g("rx29_from_mv2"), "kd", 0.6, 20, batch=64, lr=0.05, teacher="mobilenetv2", plan=plan)
    # the config bug: resnext29_distill/resnet18_teacher says mobilenet_v2; the row means ResNet18
    _check(g("rx29_from_r18"), "kd", 0.6, 20, batch=64, lr=0.05, teacher="resnet18", plan=plan)
    assert g("rx29_from_r18").recipe.model == "resnext29_8x64d"
    assert g("rx29_from_r18").key != g("rx29_from_mv2").key
    # baselines
    for rid, model, bs in [("mobilenetv2", "mobilenetv2", 128), ("shufflenetv2", "shufflenetv2", 128),
                           ("resnet18", "resnet18", 128), ("resnet50", "resnet50", 64),
                           ("densenet121", "densenet121", 128), ("resnext29", "resnext29_8x64d", 64)]:
        p = g(rid)
        _check(p, "ce", batch=bs)
        assert p.recipe.model == model and p.recipe.train.epochs == 200
    for p in plan:
        assert p.recipe.data.dataset == "cifar100"
        assert p.recipe.loss.semantics == "official"
        assert p.recipe.optim.weight_decay == 5e-4 and p.recipe.optim.warmup_epochs == 1
        assert p.recipe.optim.gamma == 0.2 and p.recipe.optim.milestones == [60, 120, 160]


def test_tfkd_self_official_hyperparameters(plans):
    _, plan = plans[("tfkd-self-cifar100", "paper")]
    g = lambda rid: _run(plan, rid)  # noqa: E731
    _check(g("mv2_self"), "kd_self", 0.95, 20, 1, batch=128, teacher="mobilenetv2", plan=plan)
    _check(g("sv2_self"), "kd_self", 0.95, 20, 1, batch=128, teacher="shufflenetv2", plan=plan)
    _check(g("r18_self"), "kd_self", 0.95, 6, 50, batch=128, teacher="resnet18", plan=plan)
    _check(g("gn_self"), "kd_self", 0.4, 20, 50, batch=64, lr=0.05, teacher="googlenet", plan=plan)
    _check(g("d121_self"), "kd_self", 0.9, 20, 50, batch=100, lr=0.078125, teacher="densenet121", plan=plan)
    _check(g("rx29_self"), "kd_self", 0.9, 20, 100, batch=64, lr=0.05, teacher="resnext29", plan=plan)
    for p in plan:
        if p.recipe.method == "kd_self":
            teacher = plan[[(q.id, q.seed) for q in plan].index(p.deps[0])]
            assert teacher.recipe.model == p.recipe.model and teacher.recipe.method == "ce"
    _check(g("googlenet"), "ce", batch=64, lr=0.05)


def test_tfkd_reg_official_hyperparameters(plans):
    _, plan = plans[("tfkd-reg-cifar100", "paper")]
    g = lambda rid: _run(plan, rid)  # noqa: E731
    # base_* --regularization: alpha = reg_alpha, T = reg_temperature, multiplier
    _check(g("mv2_reg"), "tfkd_reg", 0.95, 40, 1, batch=128)
    _check(g("sv2_reg"), "tfkd_reg", 0.95, 10, 1, batch=128)
    _check(g("r18_reg"), "tfkd_reg", 0.1, 20, 100, batch=128)
    gn = g("gn_reg")
    _check(gn, "tfkd_reg", 0.1, 40, 50, batch=64)
    assert gn.recipe.lr == 0.05
    assert gn.recipe.loss.correct_prob == 0.99
    # normal KD
    _check(g("mv2_from_r18"), "kd", 0.95, 20, batch=128, teacher="resnet18", plan=plan)
    _check(g("sv2_from_r18"), "kd", 0.95, 20, batch=128, teacher="resnet18", plan=plan)
    _check(g("r18_from_r50"), "kd", 0.6, 20, batch=64, lr=0.05, teacher="resnet50", plan=plan)
    _check(g("gn_from_rx29"), "kd", 0.6, 20, batch=64, lr=0.05, teacher="resnext29", plan=plan)  # chosen
    # LSR
    for rid, bs in [("mv2_lsr", 128), ("sv2_lsr", 128), ("r18_lsr", 128), ("gn_lsr", 64)]:
        _check(g(rid), "lsr", batch=bs)
        assert g(rid).recipe.loss.epsilon == 0.1
    # teachers are full-schedule CE baselines
    for rid, bs in [("resnet18", 128), ("resnet50", 64), ("resnext29", 64)]:
        _check(g(rid), "ce", batch=bs)
        assert g(rid).recipe.train.epochs == 200


def test_tfkd_reg_claims():
    table = load_table("tfkd-reg-cifar100")
    kinds = {(c.column, c.baseline): (c.kind, c.tolerance) for c in table.claims}
    assert kinds == {("reg", "baseline"): ("improves", 0.0), ("reg", "kd"): ("matches", 0.5),
                     ("lsr", "baseline"): ("improves", 0.0)}


def test_imagenet_protocol(plans):
    table, plan = plans[("tfkd-imagenet", "paper")]
    assert table.status == "partial"
    for p in plan:
        r = p.recipe
        assert r.model.startswith("tv:")
        assert r.data.dataset == "imagenet"
        assert r.optim.lr == 0.1 and r.optim.lr_ref_batch == 256 and r.lr == pytest.approx(0.2)
        assert r.optim.weight_decay == 1e-4 and r.optim.momentum == 0.9 and r.optim.warmup_epochs == 0
        assert r.optim.milestones == [30, 60, 80] and r.optim.gamma == 0.1
        assert r.train.epochs == 90 and r.train.batch_size == 512 and r.width == 1.0
        if r.method in ("kd_self", "tfkd_reg"):
            assert (r.loss.alpha, r.loss.temperature, r.loss.multiplier) == (0.1, 20.0, 1.0)
        if r.method == "lsr":
            assert r.loss.epsilon == 0.1
        if r.method == "kd_self":
            # our own baseline of the same architecture stands in for torchvision's pretrained model
            (dep,) = p.deps
            t = _run(plan, dep[0], dep[1])
            assert t.recipe.method == "ce" and t.recipe.model == r.model
            assert Path(r.teacher.path) == t.dir
    paper = [(r.label, k, c.paper) for r in table.rows for k, c in r.cells.items() if c.paper is not None]
    assert paper == [("ResNet-18", "self", 70.42)]
    facts = _paper_tables()["tf_kd_self_imagenet"]["partial"]
    assert any(f.get("tf_kd_top1") == 70.42 for f in facts)


# -- scales ---------------------------------------------------------------------------


@pytest.mark.parametrize("tid", CIFAR_TABLES)
def test_scale_paper_unscaled(plans, tid):
    table, plan = plans[(tid, "paper")]
    for p in plan:
        r = p.recipe
        assert r.width == 1.0 and r.data.dataset == "cifar100" and r.data.per_class is None
        assert r.optim.milestones == [60, 120, 160]
        spec_epochs = (table.runs[p.id].get("train") or {}).get("epochs")
        assert r.train.epochs == (spec_epochs or 200)


@pytest.mark.parametrize("tid", CIFAR_TABLES)
def test_scale_mini(plans, tid):
    # mini v4 (recipes/scales/mini.yaml): 50 per class, batch 32, per-model widths and epochs
    table, plan = plans[(tid, "mini")]
    scale = load_scale("mini")
    for p in plan:
        r = p.recipe
        narrow = {"resnet18": 0.125, "resnet50": 0.125, "resnext29_8x64d": 0.0625, "googlenet": 0.0625}
        assert r.width == narrow.get(r.model, 0.25)
        assert r.data.dataset == "cifar-layout" and r.data.per_class == 50
        assert r.train.batch_size == 32 and r.runtime.channels_last
        f = {"mobilenetv2": 0.2, "shufflenetv2": 0.25, "resnet50": 0.1, "resnext29_8x64d": 0.1}.get(r.model, 0.15)
        assert scale.factor(r.model) == f
        if (table.runs[p.id].get("train") or {}).get("epochs") is None:
            assert r.train.epochs == round(200 * f)
            assert r.optim.milestones == [round(m * f) for m in (60, 120, 160)]


def test_scale_mini_table3_pt_teachers(plans):
    # pt_teachers: strength (issue 22): the teacher runs train the whole scaled baseline schedule,
    # keep every epoch, and each student names the paper's ratio, not an epoch
    _, plan = plans[("table3", "mini")]
    assert _run(plan, "resnet50_pt").recipe.train.epochs == 20  # its own factor, 0.1
    assert _run(plan, "resnet50_pt").recipe.train.keep_epochs == list(range(1, 21))
    assert _run(plan, "resnet18").recipe.train.keep_epochs == list(range(1, 31))
    assert _run(plan, "mv2_from_r50pt").recipe.teacher.epoch is None
    assert _run(plan, "mv2_from_r50pt").recipe.teacher.ratio == 0.59
    assert _run(plan, "mv2_from_r18pt").recipe.teacher.ratio == 0.2


def test_scale_mini_imagenet(plans):
    _, plan = plans[("tfkd-imagenet", "mini")]
    for p in plan:
        assert p.recipe.train.epochs == 14  # round(90 * 0.15)
        assert p.recipe.optim.milestones == [4, 9, 12]
        assert p.recipe.data.dataset == "cifar-layout"


@pytest.mark.parametrize("tid", sorted(EXPECTED_RUNS))
def test_scale_smoke(plans, tid):
    _, plan = plans[(tid, "smoke")]
    for p in plan:
        assert p.recipe.data.dataset == "digits"
        narrow = {"resnet50": 0.0625, "resnext29_8x64d": 0.0625, "googlenet": 0.0625}
        assert p.recipe.width == (1.0 if p.recipe.model.startswith("tv:") else narrow.get(p.recipe.model, 0.125))
        # 5 epochs; ResNet18 and ResNeXt29 10, ResNet50 15: the De-KD teachers' strength (smoke.yaml)
        longer = {"resnet18": 10, "resnext29_8x64d": 10, "resnet50": 15}
        assert p.recipe.train.epochs <= longer.get(p.recipe.model, 5)


@pytest.mark.parametrize("tid", sorted(EXPECTED_RUNS))
def test_scales_keep_loss_settings(plans, tid):
    """A scale changes epochs, width, data (and at mini the batch), never the method or loss of a run."""
    _, full = plans[(tid, "paper")]
    for sc in ("mini", "smoke"):
        _, small = plans[(tid, sc)]
        assert [(p.id, p.seed, p.deps) for p in small] == [(p.id, p.seed, p.deps) for p in full]
        for a, b in zip(full, small):
            assert a.recipe.method == b.recipe.method and a.recipe.model == b.recipe.model
            assert a.recipe.loss == b.recipe.loss
            if sc == "smoke":
                assert a.recipe.train.batch_size == b.recipe.train.batch_size
            assert a.key != b.key


# -- paper numbers --------------------------------------------------------------------


def _cells(tid):
    return [(r, r.cells) for r in load_table(tid).rows]


def _mean(cell, entry):
    assert cell.paper == entry["mean"]
    assert cell.paper_std == entry.get("std")
    assert cell.paper_gain == entry["gain_printed"]


def test_paper_numbers_table1():
    src = _paper_tables()["re_kd_cifar100"]["rows"]
    rows = _cells("table1")
    assert len(rows) == len(src)
    for (row, c), e in zip(rows, src):
        assert c["teacher"].name == e["teacher"] and c["teacher"].paper == e["teacher_baseline"]
        assert c["student"].name == e["student"] and c["student"].paper == e["student_baseline"]
        _mean(c["kd"], e["normal_kd_T_to_S"])
        _mean(c["rekd"], e["re_kd_S_to_T"])


def test_paper_numbers_table3():
    src = _paper_tables()["de_kd_cifar100"]["rows"]
    rows = _cells("table3")
    assert len(rows) == len(src)
    for (row, c), e in zip(rows, src):
        assert c["teacher"].name == e["pt_teacher"] and c["teacher"].paper == e["pt_teacher_acc"]
        assert c["student"].name == e["student"] and c["student"].paper == e["student_baseline"]
        _mean(c["dekd"], e["de_kd"])


def test_paper_numbers_tfkd_self():
    src = _paper_tables()["tf_kd_self_cifar100"]["rows"]
    rows = _cells("tfkd-self-cifar100")
    assert len(rows) == len(src)
    for (row, c), e in zip(rows, src):
        assert row.label == e["model"]
        assert c["baseline"].paper == e["baseline"] and c["baseline"].paper_std is None
        _mean(c["self"], e["tf_kd_self"])


def test_paper_numbers_tfkd_reg():
    src = _paper_tables()["tf_kd_reg_vs_kd_vs_lsr_cifar100"]["rows"]
    rows = _cells("tfkd-reg-cifar100")
    assert len(rows) == len(src)
    for (row, c), e in zip(rows, src):
        assert row.label == e["model"]
        assert c["baseline"].paper == e["baseline"]
        _mean(c["reg"], e["tf_kd_reg"])
        _mean(c["kd"], e["normal_kd"])
        assert c["kd"].name == f"[{e['normal_kd_teacher']}]"
        _mean(c["lsr"], e["lsr"])
    # the GoogLeNet baseline inconsistency is kept as printed
    assert rows[3][1]["baseline"].paper == 78.15
    assert _cells("tfkd-self-cifar100")[3][1]["baseline"].paper == 78.72


@pytest.mark.parametrize("tid", CIFAR_TABLES)
def test_cifar_tables_complete(tid):
    """Complete tables: every cell has a paper number; no paper number is invented."""
    table = load_table(tid)
    assert table.status == "complete"
    src = {"table1": "re_kd_cifar100", "table3": "de_kd_cifar100", "tfkd-self-cifar100": "tf_kd_self_cifar100",
           "tfkd-reg-cifar100": "tf_kd_reg_vs_kd_vs_lsr_cifar100"}[tid]
    numbers: set[float] = set()

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            numbers.add(float(x))

    walk(_paper_tables()[src]["rows"])
    for row in table.rows:
        for key in (c.key for c in table.columns):
            cell = row.cells[key]
            assert cell.paper is not None, (row.label, key)
            for v in (cell.paper, cell.paper_std, cell.paper_gain):
                assert v is None or v in numbers, (row.label, key, v)


@pytest.mark.parametrize("scale", ("mini", "smoke"))
def test_imagenet_reduced_scales_keep_torchvision_width(plans, scale):
    _, plan = plans[("tfkd-imagenet", scale)]
    for p in plan:
        assert p.recipe.width == 1.0, f"{p.name}: width {p.recipe.width} on {p.recipe.model}"


# -- controls (issue #17): the uniform-teacher run and ce x (1 - alpha) of every cell with a teacher --

# Distinct control runs per seed (uniform teacher, ce x (1 - alpha)); identical controls are one run.
EXPECTED_CONTROLS = {
    # normal KD + Re-KD students: 16 cells; one control per distinct (student, alpha, batch size)
    ("table1", "paper"): (9, 9), ("table1", "mini"): (6, 6), ("table1", "smoke"): (9, 9),
    # 8 De-KD students: mv2/sv2 at bs 128 (from r18pt, r50pt) and bs 64 (rx29pt), r18 at bs 64 (r50pt, rx29pt)
    ("table3", "paper"): (5, 5), ("table3", "mini"): (3, 3), ("table3", "smoke"): (5, 5),
    # 6 Tf-KD_self runs, each its own model
    ("tfkd-self-cifar100", "paper"): (6, 6), ("tfkd-self-cifar100", "mini"): (6, 6),
    ("tfkd-self-cifar100", "smoke"): (6, 6),
    # 4 Tf-KD_reg + 4 normal KD; ce x 0.05 of MobileNetV2 and ShuffleNetV2 is shared by reg and KD
    ("tfkd-reg-cifar100", "paper"): (8, 6), ("tfkd-reg-cifar100", "mini"): (8, 6),
    ("tfkd-reg-cifar100", "smoke"): (8, 6),
    # 2 models x (Tf-KD_self, Tf-KD_reg); both alpha 0.1, so one ce x 0.9 per model
    ("tfkd-imagenet", "paper"): (4, 2), ("tfkd-imagenet", "mini"): (4, 2), ("tfkd-imagenet", "smoke"): (4, 2),
}


@pytest.mark.parametrize("tid", sorted(EXPECTED_RUNS))
@pytest.mark.parametrize("scale", SCALES)
def test_plan_counts_with_and_without_controls(plans, tid, scale, tmp_path):
    from tfkd_cli.tables.controls import add_controls

    table, without = plans[(tid, scale)]
    plan = build_plan(add_controls(table), load_scale(scale), seeds=SEEDS, runs_dir=tmp_path)
    n_uniform, n_ce = EXPECTED_CONTROLS[(tid, scale)]
    for seed in SEEDS:
        per_seed = unique_runs([p for p in plan if p.seed == seed])
        assert len(unique_runs([p for p in without if p.seed == seed])) == EXPECTED_RUNS[tid]
        assert len(per_seed) == EXPECTED_RUNS[tid] + n_uniform + n_ce
        uniform = [p for p in per_seed if p.id.endswith("~uniform")]
        ce = [p for p in per_seed if p.id.endswith("~ce")]
        assert (len(uniform), len(ce)) == (n_uniform, n_ce)
        assert all(p.recipe.teacher.uniform and not p.recipe.teacher.path and not p.deps for p in uniform)
        assert all(p.recipe.method == "ce" and 0 < p.recipe.loss.label_weight < 1 and not p.deps for p in ce)
    # the table's own runs are planned exactly as without controls (same directories)
    assert {p.dir.name for p in plan if "~" not in p.id} == {p.dir.name for p in without}


@pytest.mark.parametrize("tid", sorted(EXPECTED_RUNS))
def test_every_cell_with_a_teacher_has_both_controls(tid):
    from tfkd_cli.tables.controls import add_controls, control_key

    table = add_controls(load_table(tid))
    keys = {c.key for c in table.columns}
    for row in table.rows:
        for key, cell in row.cells.items():
            if cell.run is None or "~" in key:
                continue
            method = table.runs[cell.run].get("method")
            has = {control_key(key, k) in row.cells for k in ("uniform", "ce")}
            assert has == {method in ("kd", "kd_self", "tfkd_reg")}, (tid, row.label, key)
            if method in ("kd", "kd_self", "tfkd_reg"):
                assert {control_key(key, "uniform"), control_key(key, "ce")} <= keys


def test_ce_control_has_the_label_term_of_its_run(tmp_path):
    """table3's ResNet18 De-KD student (alpha 0.6) -> ce x 0.4; the alpha-0.95 ones -> ce x 0.05,
    with the student's batch size; the uniform control keeps alpha and T."""
    from tfkd_cli.tables.controls import add_controls

    plan = build_plan(add_controls(load_table("table3")), load_scale("paper"), seeds=[0], runs_dir=tmp_path)
    r18, mv2 = _run(plan, "r18_from_r50pt~ce").recipe, _run(plan, "mv2_from_r18pt~ce").recipe
    assert (r18.loss.label_weight, r18.train.batch_size) == (0.4, 64)
    assert (mv2.loss.label_weight, mv2.train.batch_size) == (0.05, 128)
    u = _run(plan, "r18_from_r50pt~uniform").recipe
    assert (u.method, u.loss.alpha, u.loss.temperature, u.train.batch_size) == ("kd", 0.6, 20.0, 64)
    assert _run(plan, "mv2_from_r18pt~uniform").dir == _run(plan, "mv2_from_r50pt~uniform").dir  # shared


def test_reproduce_no_controls_dry_run(tmp_path):
    from click.testing import CliRunner

    from tfkd_cli.cli.main import cli

    args = ["reproduce", "table3", "--scale", "smoke", "--dry-run", "--runs-dir", str(tmp_path)]
    with_c, without = CliRunner().invoke(cli, args), CliRunner().invoke(cli, args + ["--no-controls"])
    assert with_c.exit_code == 0 and without.exit_code == 0, with_c.output + without.output
    assert "23 runs;" in with_c.stdout and "~uniform@s0" in with_c.stdout and "ce w=0.05" in with_c.stdout
    assert "13 runs;" in without.stdout and "~" not in without.stdout
