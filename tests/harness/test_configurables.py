"""The gin layer: strict parsing, every encoder file builds, recipes carry the official values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gin
import numpy as np
import pytest
import torch

from harness.configurables import (GIN_DIR, DataConfig, GinConfigError, Recipe, build_csre, build_encoder,
                                   by_layout, encoder_configurable, parse_gin)
from models import registry
from tests.conftest import REPO

DATASETS = {  # file -> (num_class, num_point, num_person, window, split, data path)
    "ntu60_xsub": (60, 25, 2, 64, "xsub", "data/h5/ntu60.h5"),
    "ntu60_xview": (60, 25, 2, 64, "xview", "data/h5/ntu60.h5"),
    "ntu120_xsub": (120, 25, 2, 64, "xsub", "data/h5/ntu120.h5"),
    "ntu120_xset": (120, 25, 2, 64, "xset", "data/h5/ntu120.h5"),
    "ucla": (10, 20, 1, 52, "xview", "data/h5/ucla.h5"),
}
# (C, V, M) of the forward check; T is short (16) to keep the suite fast, except for encoders
# whose layers are sized by the window (HCN's window_size), which get that many frames.
INPUT = {"ntu60_xsub": (3, 25, 2), "ucla": (3, 20, 1)}
ALWAYS_TESTED = {"ctrgcn", "agcn", "hcn"}


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The forward checks are tiny: one intra-op thread avoids oversubscribing a busy 2-core CI box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def encoder_files() -> list[Path]:
    return sorted((GIN_DIR / "encoders").glob("*.gin"))


def registered_encoder_params() -> list:
    """One param per encoder gin file; files of encoders not (yet) in the registry are skipped, so
    they are tested as soon as their model is registered."""
    params = []
    for path in encoder_files():
        mark = () if path.stem in registry.ENCODERS else pytest.mark.skip(
            reason=f"encoder {path.stem!r} is not in models.registry.ENCODERS yet")
        params.append(pytest.param(path.stem, id=path.stem, marks=mark))
    return params


def gin_path(*parts: str) -> str:
    return str(Path("gin", *parts))


def files_for(encoder: str, dataset: str) -> list[str]:
    files = [gin_path("encoders", f"{encoder}.gin"), gin_path("datasets", f"{dataset}.gin")]
    if dataset == "ucla":
        ucla = GIN_DIR / "recipes" / f"{encoder}_ucla.gin"
        files.append(gin_path("recipes", ucla.name if ucla.exists() else "ctrgcn_ucla.gin"))
    return files


# --------------------------------------------------------------------------- layout of gin/

def test_core_encoders_have_gin_files_and_are_registered():
    stems = {p.stem for p in encoder_files()}
    assert ALWAYS_TESTED <= stems
    assert ALWAYS_TESTED <= set(registry.ENCODERS)


def test_every_registered_encoder_has_a_gin_file():
    missing = [n for n in registry.ENCODERS if not (GIN_DIR / "encoders" / f"{n}.gin").exists()]
    assert not missing, f"registered encoders without gin/encoders/<name>.gin: {missing}"


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_dataset_files_define_the_macros(dataset):
    parse_gin([gin_path("datasets", f"{dataset}.gin")])
    num_class, num_point, num_person, window, split, path = DATASETS[dataset]
    for name, value in [("NUM_CLASS", num_class), ("NUM_POINT", num_point), ("NUM_PERSON", num_person),
                        ("WINDOW", window), ("SPLIT", split), ("DATA_PATH", path)]:
        assert gin.query_parameter(f"{name}/gin.macro.value") == value, name


# --------------------------------------------------------------------------- encoders

@pytest.mark.parametrize("dataset", sorted(INPUT))
@pytest.mark.parametrize("encoder", registered_encoder_params())
def test_encoder_file_builds_and_runs(encoder, dataset):
    parse_gin(files_for(encoder, dataset))
    model = build_encoder()
    assert isinstance(model, registry.encoder_class(encoder))
    num_class, _, num_person, *_ = DATASETS[dataset]
    assert model.num_class == num_class and model.num_person == num_person
    model.eval()
    c, v, m = INPUT[dataset]
    x = torch.randn(2, c, getattr(model, "window_size", 16), v, m, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, num_class)
    assert torch.isfinite(logits).all()
    # the configuration actually used is recorded, constructor arguments included
    operative = gin.operative_config_str()
    cls_name = encoder_configurable(encoder).split(".")[-1]
    assert f"{cls_name}.num_class = %NUM_CLASS" in operative or f"{cls_name}.num_class = {num_class}" in operative
    assert f"NUM_CLASS = {num_class}" in operative
    assert f"build_encoder.name = %ENCODER" in operative and f"ENCODER = '{encoder}'" in operative


@pytest.mark.parametrize("encoder", registered_encoder_params())
@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_encoder_file_parses_with_every_dataset(encoder, dataset):
    parse_gin(files_for(encoder, dataset))
    data = DataConfig()
    assert data.num_class == DATASETS[dataset][0] and data.split == DATASETS[dataset][4]
    assert Recipe().source


def test_official_parameter_counts_from_gin():
    expected = {"ctrgcn": 1_446_672, "agcn": 3_469_510, "hcn": 2_647_868}
    for encoder, count in expected.items():
        gin.clear_config()
        parse_gin(files_for(encoder, "ntu60_xsub"))
        assert sum(p.numel() for p in build_encoder().parameters()) == count, encoder


# --------------------------------------------------------------------------- recipes

CTRGCN_NTU = dict(optimizer="sgd", nesterov=True, momentum=0.9, base_lr=0.1, steps=(35, 55), gamma=0.1,
                  lr_decay_type="step", warm_up_epochs=5, epochs=65, batch_size=64, weight_decay=4e-4,
                  clip_norm_per_sample=None, drop_last=True)
NTU_AUG = dict(window=64, train_p_interval=(0.5, 1.0), test_p_interval=(0.95,), random_rot=0.3, repeat=1,
               spine_relative=False, origin_joint=None)
UCLA_AUG = dict(window=52, train_p_interval=None, test_p_interval=None, random_rot=None, repeat=5)

RECIPES = {
    # recipe file, dataset file -> expected Recipe fields, expected DataConfig fields
    "ctrgcn": ("ntu60_xsub", CTRGCN_NTU, NTU_AUG),
    "ctrgcn_ucla": ("ucla", {**CTRGCN_NTU, "steps": (50,), "batch_size": 16, "weight_decay": 1e-4},
                    {**UCLA_AUG, "spine_relative": False}),
    "hyperformer": ("ntu120_xsub", {**CTRGCN_NTU, "base_lr": 0.025, "steps": (110, 120), "epochs": 140},
                    {**NTU_AUG, "spine_relative": True}),
    "hyperformer_ucla": ("ucla", {**CTRGCN_NTU, "base_lr": 0.025, "steps": (110, 120), "epochs": 150,
                                  "batch_size": 16, "weight_decay": 0.0}, {**UCLA_AUG, "spine_relative": True}),
    "hyperformer_ntu60_xview": ("ntu60_xview", {**CTRGCN_NTU, "base_lr": 0.01, "gamma": 0.025, "steps": (110, 120),
                                                "epochs": 140, "test_batch_size": 512}, {**NTU_AUG, "spine_relative": True}),
    "hyperformer_ucla_bone": ("ucla", {**CTRGCN_NTU, "base_lr": 0.025, "steps": (110, 120), "epochs": 150,
                                       "batch_size": 16, "weight_decay": 0.0}, {**UCLA_AUG, "spine_relative": True}),
    "blockgcn": ("ntu60_xview", {**CTRGCN_NTU, "base_lr": 0.05, "steps": (110, 120), "epochs": 140},
                 {**NTU_AUG, "spine_relative": True}),
    "infogcn": ("ntu60_xsub", {**CTRGCN_NTU, "base_lr": 0.1, "steps": (90, 100), "epochs": 110,
                               "batch_size": 128, "weight_decay": 5e-4}, NTU_AUG),
    "agcn": ("ntu60_xsub", {**CTRGCN_NTU, "steps": (30, 40), "epochs": 50, "warm_up_epochs": 0,
                            "weight_decay": 1e-4},
             {**NTU_AUG, "window": 300, "train_p_interval": (1.0,), "test_p_interval": (1.0,), "random_rot": 0.0}),
    "agcn_ctrgcn_pipeline": ("ntu60_xsub", CTRGCN_NTU, NTU_AUG),
    "hcn": ("ntu60_xsub", dict(optimizer="adam", base_lr=1e-3, lr_decay_type="exp", gamma=0.99, steps=(),
                               warm_up_epochs=0, epochs=400, batch_size=64, weight_decay=1e-4,
                               clip_norm_per_sample=0.5, drop_last=False),
            {**NTU_AUG, "random_rot": 0.0, "origin_joint": 2}),
}


def test_every_recipe_file_is_checked():
    assert {p.stem for p in (GIN_DIR / "recipes").glob("*.gin")} == set(RECIPES)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_values(recipe):
    dataset, expect_recipe, expect_data = RECIPES[recipe]
    parse_gin([gin_path("datasets", f"{dataset}.gin"), gin_path("recipes", f"{recipe}.gin")])
    r, d = Recipe(), DataConfig()
    assert {k: getattr(r, k) for k in expect_recipe} == expect_recipe
    assert {k: getattr(d, k) for k in expect_data} == expect_data
    assert r.source and "/" in r.source
    assert "# Source: " in (GIN_DIR / "recipes" / f"{recipe}.gin").read_text()  # the comment naming the config


def test_recipe_order_later_file_wins_and_bindings_win_last():
    parse_gin([gin_path("encoders", "ctrgcn.gin"), gin_path("datasets", "ucla.gin"),
               gin_path("recipes", "ctrgcn_ucla.gin")], ["Recipe.base_lr = 0.05", "DataConfig.modality = 'bone'"])
    r, d = Recipe(), DataConfig()
    assert r.steps == (50,) and r.batch_size == 16 and r.base_lr == 0.05
    assert d.modality == "bone" and d.repeat == 5 and d.num_point == 20


@pytest.mark.parametrize("files, params, bound", [
    (("encoders/hcn.gin", "datasets/ntu60_xsub.gin"), [], 32.0),  # HCN-pytorch: clip 0.5 x batch_size_train 64
    (("encoders/hcn.gin", "datasets/ntu60_xsub.gin"), ["Recipe.batch_size = 8"], 4.0),
    # HCN's NW-UCLA cells run the CTR-GCN NW-UCLA recipe entirely: no clipping
    (("encoders/hcn.gin", "datasets/ucla.gin", "recipes/ctrgcn_ucla.gin"), [], None),
    (("encoders/ctrgcn.gin", "datasets/ntu60_xsub.gin"), [], None),
])
def test_gradient_clipping_is_hcns_and_scales_with_the_batch(files, params, bound):
    parse_gin([gin_path(*f.split("/")) for f in files], params)
    assert Recipe().max_grad_norm == bound


def test_gradient_clipping_bound_must_be_positive():
    with pytest.raises(ValueError, match="clip_norm_per_sample"):
        Recipe(clip_norm_per_sample=0.0)


@pytest.mark.parametrize("field, value, message", [
    ("num_point", 25, "20 joints, but num_point=25"),
    ("num_person", 2, "1 persons per sample, but num_person=2"),
    ("num_class", 5, "label 9 >= num_class=5"),
])
def test_feeder_checks_the_file_against_the_config(ucla_h5, field, value, message):
    d = DataConfig(path=str(ucla_h5), split="xview", num_class=10, num_point=20, num_person=1)
    d.feeder("test")  # consistent
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(d, **{field: value}).feeder("test")


def test_ntu_recipe_with_ucla_dataset_is_an_error_naming_the_fix():
    parse_gin([gin_path("encoders", "ctrgcn.gin"), gin_path("datasets", "ucla.gin")])
    with pytest.raises(ValueError, match="_ucla.gin"):
        DataConfig()


# --------------------------------------------------------------------------- strict parsing

def test_unknown_parameter_in_a_file_names_file_line_and_close_match(tmp_path):
    bad = tmp_path / "typo.gin"
    bad.write_text("include 'gin/encoders/ctrgcn.gin'\ninclude 'gin/datasets/ntu60_xsub.gin'\n\n"
                   "models.CTRGCN.num_clas = 60\n")
    with pytest.raises(GinConfigError) as e:
        parse_gin([bad])
    msg = str(e.value)
    assert str(bad) in msg and "line 4" in msg
    assert "'num_clas'" in msg and "did you mean: num_class?" in msg


def test_unknown_configurable_binding_names_close_matches():
    with pytest.raises(GinConfigError, match=r"unknown configurable 'models.CTRGC' \(did you mean: models.CTRGCN\?\)"):
        parse_gin([gin_path("encoders", "ctrgcn.gin"), gin_path("datasets", "ntu60_xsub.gin")],
                  ["models.CTRGC.num_class = 3"])


def test_typo_in_recipe_parameter_and_configurable():
    with pytest.raises(GinConfigError, match="did you mean: base_lr"):
        parse_gin([gin_path("datasets", "ucla.gin")], ["Recipe.base_rl = 0.1"])
    gin.clear_config()
    with pytest.raises(GinConfigError, match="did you mean: Recipe"):
        parse_gin([gin_path("datasets", "ucla.gin")], ["Recipes.base_lr = 0.1"])
    gin.clear_config()
    with pytest.raises(GinConfigError, match="gin bindings"):
        parse_gin([], ["DataConfig.window = @Recipee()"])


def test_constructor_arguments_bound_on_build_encoder_fail_at_parse_time():
    with pytest.raises(GinConfigError, match="models.CTRGCN.num_class"):
        parse_gin([], ["build_encoder.num_class = 60"])


def test_hyperformer_typo_binding_names_close_matches():
    """No catch-all ``**kwargs`` on the constructor: a misspelt argument is a parse-time error."""
    files = [gin_path("encoders", "hyperformer.gin"), gin_path("datasets", "ntu60_xsub.gin")]
    with pytest.raises(GinConfigError) as e:
        parse_gin(files, ["models.Hyperformer.num_of_head = 3"])
    msg = str(e.value)
    assert "unknown parameter 'num_of_head' of models.Hyperformer" in msg
    assert "did you mean: num_of_heads?" in msg and "gin bindings" in msg
    gin.clear_config()
    with pytest.raises(GinConfigError, match="unknown parameter 'foo' of models.Hyperformer"):
        parse_gin(files, ["models.Hyperformer.foo = 1"])


def test_the_stream_of_a_head_is_a_run_time_argument_not_a_binding():
    with pytest.raises(GinConfigError, match="stream"):
        parse_gin([gin_path("heads", "skeletongcl.gin")], ["models.SkeletonGCL.stream = 'bone'"])


@pytest.mark.parametrize("encoder", registered_encoder_params())
def test_every_encoder_rejects_an_unknown_binding(encoder):
    """Strict gin reaches the constructors: none of them swallows unknown keywords."""
    cls_name = encoder_configurable(encoder)
    with pytest.raises(GinConfigError, match=f"unknown parameter 'not_an_argument' of {cls_name}"):
        parse_gin(files_for(encoder, "ntu60_xsub"), [f"{cls_name}.not_an_argument = 1"])


@pytest.mark.skipif(not (GIN_DIR / "csre.gin").exists(), reason="gin/csre.gin not written yet")
def test_csre_runtime_denylist_survives_a_foreign_registration():
    """Registering ``models.CSRE`` again elsewhere (tests/models/test_csre.py does, without the
    denylist) replaces gin's entry; parse_gin and build_csre restore ours, whatever the order."""
    from models.csre import CSRE
    gin.external_configurable(CSRE, name="CSRE", module="models")  # a plain registration, no denylist
    with pytest.raises(GinConfigError, match="passed at run time"):
        parse_gin([], ["models.CSRE.labels = 3"])
    gin.clear_config()
    gin.external_configurable(CSRE, name="CSRE", module="models")  # again, then build without parsing
    labels = torch.arange(10).repeat(4)
    encoder = build_encoder("ctrgcn", num_class=10, num_point=20, num_person=1, graph="ucla")
    model = build_csre(encoder, len(labels), labels, input_shape=(3, 16, 20, 1), K_pos=2, K_hard=4, K_rand=4)
    assert type(model).__name__ == "CSRE"
    with pytest.raises(GinConfigError, match="passed at run time"):
        parse_gin([], ["models.CSRE.num_samples = 3"])


def test_undefined_macro_is_caught_at_parse_time():
    with pytest.raises(GinConfigError, match=r"undefined macro %WINDOWS.*did you mean %WINDOW\?"):
        parse_gin([gin_path("encoders", "ctrgcn.gin"), gin_path("datasets", "ntu60_xsub.gin")],
                  ["DataConfig.window = %WINDOWS"])
    gin.clear_config()
    with pytest.raises(GinConfigError, match="gin/datasets"):  # encoder without a dataset file
        parse_gin([gin_path("encoders", "hcn.gin")])


@pytest.mark.skipif(not (GIN_DIR / "csre.gin").exists(), reason="gin/csre.gin not written yet")
def test_csre_file_parses_and_builds_the_wrapper():
    parse_gin([gin_path("encoders", "ctrgcn.gin"), gin_path("datasets", "ucla.gin"),
               gin_path("recipes", "ctrgcn_ucla.gin"), gin_path("csre.gin")])
    labels = torch.arange(10).repeat(5 * 102)  # 5 x 1,020 training indices, 510 per class
    model = build_csre(build_encoder(), len(labels), labels)
    assert type(model).__name__ == "CSRE"
    assert "CSRE.K_pos = " in gin.operative_config_str()
    gin.clear_config()
    with pytest.raises(GinConfigError, match="passed at run time"):
        parse_gin([], ["models.CSRE.num_samples = 3"])


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gin"):
        parse_gin([gin_path("encoders", "nope.gin")])


def test_files_resolve_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parse_gin([gin_path("encoders", "hcn.gin"), gin_path("datasets", "ntu60_xsub.gin")])
    assert Recipe().optimizer == "adam"


def test_config_is_finalized_and_cleared_between_tests():
    parse_gin([gin_path("datasets", "ucla.gin")])
    assert gin.config_is_locked()
    with pytest.raises(RuntimeError):
        gin.bind_parameter("Recipe.base_lr", 1.0)


def test_previous_test_left_no_config():
    assert not gin.config_is_locked()
    assert gin.config_str().strip() == ""


# --------------------------------------------------------------------------- without gin

def test_configurables_run_without_gin():
    r = Recipe()
    assert (r.optimizer, r.base_lr, r.steps, r.epochs, r.weight_decay) == ("sgd", 0.1, (35, 55), 65, 4e-4)
    d = DataConfig(path="data/h5/ucla.h5", split="xview", num_class=10, num_point=20, num_person=1)
    assert d.window is None and d.layout == "ucla" and d.resolve_path() == REPO / "data/h5/ucla.h5"
    model = build_encoder("ctrgcn", num_class=10, num_point=20, num_person=1, graph="ucla")
    assert model.num_class == 10
    assert by_layout("ucla", ntu="a", ucla="b") == "b"
    with pytest.raises(ValueError, match="no value for layout 'ucla'"):
        by_layout("ucla", ntu="a")
    with pytest.raises(RuntimeError, match="path"):  # gin.REQUIRED without a binding
        DataConfig(split="xsub", num_class=60)


def test_recipe_schedule_matches_official_adjust_learning_rate():
    r = Recipe()  # CTR-GCN: warm-up 5, steps 35 and 55
    assert [r.lr_at(e) for e in range(5)] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert r.lr_at(34) == pytest.approx(0.1) and r.lr_at(35) == pytest.approx(0.01)
    assert r.lr_at(55) == pytest.approx(0.001) and r.lr_at(64) == pytest.approx(0.001)
    hcn = Recipe(optimizer="adam", base_lr=1e-3, lr_decay_type="exp", gamma=0.99, steps=(), warm_up_epochs=0,
                 epochs=400)
    assert hcn.lr_at(0) == pytest.approx(1e-3) and hcn.lr_at(100) == pytest.approx(1e-3 * 0.99 ** 100)
    with pytest.raises(ValueError, match="lr_decay_type"):
        Recipe(lr_decay_type="cosine")
    with pytest.raises(ValueError, match="increasing"):
        Recipe(steps=(55, 35))


def test_make_optimizer_is_recorded_in_the_operative_config():
    parse_gin([gin_path("encoders", "ctrgcn.gin"), gin_path("datasets", "ntu60_xsub.gin")])
    model = build_encoder()
    recipe = Recipe()
    opt = recipe.make_optimizer(model.parameters())
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.1, 0.9, True, 4e-4)
    assert recipe.set_lr(opt, 0) == pytest.approx(0.02) and opt.param_groups[0]["lr"] == pytest.approx(0.02)
    operative = gin.operative_config_str()
    assert "Recipe.base_lr = 0.1" in operative and "Recipe.steps = [35, 55]" in operative
    assert "SGD.dampening = 0" in operative  # every optimiser argument, defaults included
    adam = Recipe(optimizer="adam", base_lr=1e-3).make_optimizer([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(adam, torch.optim.Adam)


# --------------------------------------------------------------------------- data

@pytest.fixture(scope="module")
def tiny_ntu60(tmp_path_factory):
    from data.synthetic import write_h5
    return write_h5(tmp_path_factory.mktemp("h5") / "ntu60.h5", n_samples=6, variant="ntu60", frames=(40, 70))


def test_data_config_builds_the_feeders(tiny_ntu60):
    parse_gin([gin_path("recipes", "hyperformer.gin"), gin_path("datasets", "ntu60_xsub.gin")],
              [f"DATA_PATH = '{tiny_ntu60}'"])
    data = DataConfig()
    train, test = data.feeder("train", seed=1), data.feeder("test")
    assert (train.window, train.p_interval, train.random_rot, train.spine_relative) == (64, (0.5, 1.0), 0.3, True)
    assert (test.p_interval, test.random_rot) == ((0.95,), 0.0)
    x, label, index = test[0]
    assert np.asarray(x).shape == (3, 64, 25, 2) and 0 <= label < 60 and index == 0


def test_data_config_rejects_a_file_of_another_layout(tiny_ntu60):
    data = DataConfig(path=str(tiny_ntu60), split="xsub", num_class=10, num_point=20, num_person=1)
    with pytest.raises(ValueError):
        data.feeder("test")
