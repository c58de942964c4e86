"""Scale overlays (`per_model` overrides, validation) and the CPU cost model behind `--dry-run`."""

import shutil

import pytest

from tfkd_cli.errors import TfkdError
from tfkd_cli.config.recipe import Recipe, recipes_dir
from tfkd_cli.execution import cost
from tfkd_cli.tables.plan import build_plan
from tfkd_cli.tables.spec import load_scale, load_table


@pytest.fixture
def recipes(tmp_path, monkeypatch):
    root = tmp_path / "recipes"
    shutil.copytree(recipes_dir(), root)
    monkeypatch.setenv("TFKD_RECIPES", str(root))
    return root


def _scale(recipes, text):
    (recipes / "scales" / "t.yaml").write_text("scale: t\ndescription: test\n" + text)
    return load_scale("t")


def test_per_model_applies_after_overrides_to_that_model_only(recipes, tmp_path):
    sc = _scale(recipes, "epoch_factor: 0.01\noverrides: {width: 0.25}\n"
                         "per_model: {ResNet50: {width: 0.125, train: {batch_size: 16}}}\n")
    assert sc.per_model == {"resnet50": {"width": 0.125, "train": {"batch_size": 16}}}  # alias resolved
    plan = build_plan(load_table("table3"), sc, [0], tmp_path / "runs")
    widths = {p.id: (p.recipe.width, p.recipe.train.batch_size) for p in plan}
    assert widths["resnet50_pt"] == (0.125, 16)
    assert widths["resnext29_pt"][0] == 0.25 and widths["mobilenetv2"] == (0.25, 128)


def test_per_model_unknown_model_is_one_line_error(recipes):
    with pytest.raises(TfkdError, match=r"t\.yaml: per_model: unknown model 'resnet9000'; choose from: .*resnet18"):
        _scale(recipes, "per_model: {resnet9000: {width: 0.5}}\n")


def test_per_model_value_must_be_a_mapping(recipes):
    with pytest.raises(TfkdError, match=r"per_model\.resnet18 must be a mapping"):
        _scale(recipes, "per_model: {resnet18: 0.5}\n")


def test_regime_notes_are_sentences_by_model(recipes):
    assert _scale(recipes, "regime_notes: {ResNet18: narrow for cost}\n").regime_notes == {"resnet18": "narrow for cost"}
    with pytest.raises(TfkdError, match=r"t\.yaml: regime_notes: unknown model 'resnet9000'"):
        _scale(recipes, "regime_notes: {resnet9000: why}\n")
    with pytest.raises(TfkdError, match=r"regime_notes\.resnet18 must be a sentence, got 5"):
        _scale(recipes, "regime_notes: {resnet18: 5}\n")


def test_per_model_bad_field_fails_when_planned(recipes, tmp_path):
    sc = _scale(recipes, "per_model: {resnet18: {widht: 0.5}}\n")
    with pytest.raises(TfkdError, match="widht"):
        build_plan(load_table("table3"), sc, [0], tmp_path / "runs")


# -- cost model -----------------------------------------------------------------------


@pytest.mark.parametrize("model", sorted(cost.CPU_MS))
def test_cpu_cost_reproduces_its_measurements(model):
    for width, train_ms, infer_ms in cost.CPU_MS[model]:
        assert cost._seconds_per_image("cpu", "train", model, width, 100, 32) == pytest.approx(train_ms / 1e3)
        assert cost._seconds_per_image("cpu", "infer", model, width, 100, 32) == pytest.approx(infer_ms / 1e3)


@pytest.mark.parametrize("model", sorted(cost.CPU_MS) + ["densenet121"])
def test_cpu_cost_grows_with_width_and_stays_positive(model):
    t = [cost._seconds_per_image("cpu", "train", model, w, 100, 32) for w in (0.03, 0.0625, 0.25, 0.5, 1.0)]
    assert all(x > 0 for x in t)
    assert t[2:] == sorted(t[2:]) and t[-1] > t[2]


def test_estimate_counts_epochs_images_and_teacher():
    r = Recipe(model="resnet18", width=0.25)
    r.data.dataset, r.data.per_class, r.train.epochs = "cifar-layout", 20, 30
    r.runtime.fast_eval = False  # the model's own eval forward (fast_eval: test_registries.test_cost_of_fast_eval)
    per_image = cost._seconds_per_image("cpu", "train", "resnet18", 0.25, 100, 32)
    per_eval = cost._seconds_per_image("cpu", "infer", "resnet18", 0.25, 100, 32)
    assert cost.estimate_seconds(r) == pytest.approx(30 * (2000 * per_image + 5000 * per_eval))
    r.method, r.teacher.path = "kd", "somewhere"
    teacher = Recipe(model="resnet50", width=0.125)
    extra = 30 * 2000 * cost._seconds_per_image("cpu", "infer", "resnet50", 0.125, 100, 32)
    assert cost.estimate_seconds(r, teacher=teacher) == pytest.approx(cost.estimate_seconds(Recipe(
        model="resnet18", width=0.25, data=r.data, train=r.train, runtime=r.runtime)) + extra)
    assert cost.estimate_seconds(r, "cuda", teacher) < cost.estimate_seconds(r, "cpu", teacher) / 10
