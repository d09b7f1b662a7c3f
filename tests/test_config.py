"""Config: defaults are the original's, YAML round-trip, overrides, clear errors."""

import pytest

from sdnet_tf.config import CONFIG_DIR, Config, ConfigError, config_kind, load_config, save_config


def test_defaults_are_the_original():
    c = Config()
    assert (c.model.input_size, c.model.anatomy_channels, c.model.nz, c.model.unet_filters) == (224, 8, 8, 64)
    assert (c.loss.kl, c.loss.dice, c.loss.adversarial, c.loss.reconstruction, c.loss.z_reconstruction) == (
        0.01, 10.0, 10.0, 1.0, 1.0)
    t = c.train
    assert (t.learning_rate, t.beta_1, t.decay, t.batch_size, t.pool_size, t.patience, t.min_delta, t.seed) == (
        1e-4, 0.5, 1e-4, 4, 50, 100, 0.01, 1)


def test_yaml_round_trip(tmp_path):
    config = load_config("synthetic-quick", ["train.epochs=3", "loss.dice_mode=per_class"])
    save_config(config, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == config
    assert again.train.epochs == 3 and again.loss.dice_mode == "per_class"


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_shipped_configs_load(name):
    kind = config_kind(name)
    assert isinstance(load_config(name, kind=kind), kind)
    if kind is not Config:
        with pytest.raises(ConfigError, match="unknown|a shape prior's config|a T-L network's config"):
            load_config(name)  # a prior's or U-Net's file is not an SDNet config


def test_prior_config_defaults_are_the_thesis_default_n():
    from sdnet_tf.config import PriorConfig

    config = load_config("nvae-acdc", kind=PriorConfig)
    assert config.model.input_size == 128 and config.model.groups_per_scale == [1, 2, 4]
    assert config.model.latent_channels == 20
    t = config.train
    assert (t.learning_rate, t.epsilon, t.weight_decay, t.min_learning_rate) == (1e-2, 1e-3, 3e-4, 1e-4)
    assert t.kl_betas == [8.0, 9.0, 10.0] and t.kl_warmup_epochs == 30 and t.batch_size == 8 and t.epochs == 100
    again = config.override(["train.kl_betas=[1, 2, 3]"])
    assert again.train.kl_betas == [1, 2, 3]
    with pytest.raises(ConfigError, match="list of numbers"):
        config.override(["train.kl_betas=high"])


def test_original_config_file_matches_defaults():
    original = load_config("sdnet-acdc")
    assert original.model == Config().model
    assert original.loss == Config().loss


@pytest.mark.parametrize("override,message", [
    ("train.epoch=3", "unknown key 'epoch'"),
    ("optim.lr=3", "unknown section"),
    ("train.epochs=many", "expected an integer"),
    ("epochs=3", "section.key=value"),
    ("train.jit_compile=1", "true, false or auto"),
    ("train.jit_compile=sometimes", "true, false or auto"),
    ("train.decay=fast", "expected a number"),
])
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_xla_switch_is_true_false_or_auto():
    assert Config().train.jit_compile == "auto"
    for value, expected in (("true", True), ("false", False), ("auto", "auto"), ("AUTO", "auto"), ("Auto", "auto")):
        assert load_config(None, [f"train.jit_compile={value}"]).train.jit_compile == expected
        assert load_config(None, [f"train.graph_rewriting={value}"]).train.graph_rewriting == expected


def test_bad_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  filters: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: model.*unknown key"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")


def test_exponent_without_a_dot_is_a_number():
    # YAML 1.1 (PyYAML) reads "3e-3" as a string; a float field still takes it
    config = load_config(None, ["train.decay=3e-3", "train.learning_rate=1E-4"])
    assert config.train.decay == 0.003 and config.train.learning_rate == 1e-4


def test_an_unknown_dice_mode_is_refused_at_load():
    with pytest.raises(ConfigError, match=r"override 'loss.dice_mode=mean': loss.dice_mode 'mean': expected one of "
                                          r"pooled, per_class, batch"):
        load_config(None, ["loss.dice_mode=mean"])
    assert load_config(None, ["loss.dice_mode=batch"]).loss.dice_mode == "batch"


def test_default_run_directories_follow_one_rule():
    from pathlib import Path

    from sdnet_tf.config import SegmentationConfig
    from sdnet_tf.data.sources import default_run_dir

    assert default_run_dir("acdc", load_config("phantom-quick"), "phantom-quick", "phantom") == Path(
        "runs/phantom-phantom-quick-split0")
    assert default_run_dir("synthetic", load_config(None)) == Path("runs/synthetic-default")
    unet = load_config(None, ["data.path=/data/ACDC/training", "data.split=2", "loss.shape_prior=p"],
                       kind=SegmentationConfig)
    assert default_run_dir("unet", unet) == Path("runs/unet-shape-training-split2")
    tl = load_config("tl-acdc", ["data.path=/data/ACDC/training", "loss.shape_prior=p"], kind=config_kind("tl-acdc"))
    assert default_run_dir("tl", tl) == Path("runs/tl-training-split0")


def test_tl_config_is_its_own_kind_with_the_paper_s_loss():
    # tl-* files are T-L network configs (not unet-*, which are the U-Net's); Oktay et al.'s
    # T-L network regresses the code alone, so the decoded mask's cross-entropy is off
    from sdnet_tf.config import TLConfig

    assert config_kind("tl-acdc") is TLConfig
    config = load_config("tl-acdc", kind=TLConfig)
    assert config.model.kind == "tl" and (config.loss.code, config.loss.cross_entropy) == (1.0, 0.0)
    assert (config.model.filters, config.model.levels) == (0, 0)  # the autoencoder's: its encoder's mirror
    assert TLConfig().loss == config.loss
    with pytest.raises(ConfigError, match="a T-L network's config .* sdnet-tf baseline train tl"):
        load_config("tl-acdc")


def test_run_kinds_and_wrong_kinds_are_one_clear_error(tmp_path):
    # predict / evaluate / export refuse a prior run, shape-eval an SDNet run, by name
    from sdnet_infer.io import DataError
    from sdnet_tf.config import Config, PriorConfig, SegmentationConfig, TLConfig
    from sdnet_tf.data.sources import data_folder
    from sdnet_tf.inference import load_prior, load_run, run_kind
    from sdnet_tf.apps.shape_eval import run_kind as shape_run_kind

    for name, config in (("sdnet", Config()), ("unet", SegmentationConfig()), ("acnn", PriorConfig()),
                         ("tl", TLConfig())):
        if name == "acnn":
            config.model.kind = "acnn"
        (tmp_path / name).mkdir()
        save_config(config, tmp_path / name / "config.yaml")
        assert run_kind(tmp_path / name) == name
    with pytest.raises(DataError, match=r"acnn: a shape-prior run \(acnn\); this command takes an SDNet run"):
        load_run(tmp_path / "acnn")
    with pytest.raises(DataError, match=r"an SDNet run; shape-eval takes shape-prior, U-Net \(baseline train unet\)"):
        shape_run_kind(tmp_path / "sdnet")
    (tmp_path / "gan").mkdir()
    save_config(load_config("gan-phantom-quick"), tmp_path / "gan" / "config.yaml")
    with pytest.raises(DataError, match=r"gan: a U-Net or GAN baseline run of sdnet-tf train .*evaluate --run scores"):
        shape_run_kind(tmp_path / "gan")
    assert shape_run_kind(tmp_path / "tl") == "tl"
    with pytest.raises(DataError, match="tl: no best.npz yet"):
        load_run(tmp_path / "tl")
    with pytest.raises(DataError, match="no such run directory"):
        run_kind(tmp_path / "missing")
    (tmp_path / "acnn" / "best.npz").write_bytes(b"not a numpy file")
    with pytest.raises(DataError, match="best.npz: not a readable weights file"):
        load_prior(tmp_path / "acnn")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="afile: a file, not a run directory"):
        run_kind(tmp_path / "afile")
    with pytest.raises(DataError, match="is a file, not a folder"):
        data_folder(PriorConfig().data.__class__(path=str(tmp_path / "afile")))


@pytest.mark.parametrize("override", ["loss.focal=-1", "loss.dice=-10", "loss.lv_volume=nan", "loss.kl=inf"])
def test_a_negative_or_non_finite_loss_weight_is_refused(override):
    with pytest.raises(ConfigError, match="expected a finite number of at least 0"):
        load_config("sdnet-adain-acdc", [override])
    assert load_config("sdnet-adain-acdc", ["loss.focal=0"]).loss.focal == 0.0


@pytest.mark.parametrize("config,override", [("phantom-quick", "train.iterations_per_epoch=-5"),
                                             ("prior-phantom", "train.steps_per_epoch=-2"),
                                             ("prior-phantom", "train.max_steps=-3"),
                                             ("prior-phantom", "train.epochs=0"),
                                             ("tl-acdc", "train.max_steps=-1"), ("unet-acdc", "train.epochs=0")])
def test_negative_step_counts_and_no_epochs_are_refused(config, override):
    # they were taken, and a run of 0 steps printed "best validation epoch None () after 0 steps"
    from sdnet_tf.config import PriorConfig, SegmentationConfig, TLConfig

    kind = {"prior-phantom": PriorConfig, "tl-acdc": TLConfig, "unet-acdc": SegmentationConfig}.get(config, Config)
    with pytest.raises(ConfigError, match="expected a finite number of at least"):
        load_config(config, [override], kind=kind)


@pytest.mark.parametrize("value", ["1", "2", "-0.5", "nan"])
def test_a_self_training_threshold_outside_0_1_is_refused(value):
    # a probability never exceeds 1: a threshold of 1 or more would pseudo-label every pixel background
    with pytest.raises(ConfigError, match=r"train.self_training_threshold .*expected a number in \[0, 1\)"):
        load_config("self-training-acdc-cpu", [f"train.self_training_threshold={value}"])
    assert load_config("self-training-acdc-cpu", ["train.self_training_threshold=0.9"]).train.self_training_threshold == 0.9


@pytest.mark.parametrize("name", ["sdnet-mmwhs", "sdnet-multimodal-phantom"])
def test_multimodal_configs_round_trip_and_are_sdnet_with_16_anatomy_channels(tmp_path, name):
    config = load_config(name)
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config
    assert config.data.dataset == "mmwhs" and config.model.anatomy_channels == 16
    if name == "sdnet-mmwhs":  # the original SDNet but for C
        original = load_config("sdnet-acdc")
        original.model.anatomy_channels = 16
        assert config.model == original.model and config.loss == original.loss and config.train == original.train


@pytest.mark.parametrize("name", ["sdnet-mnms", "sdnet-mnms-phantom-quick"])
def test_mnms_configs_round_trip_with_liu_et_al_s_vendors_and_resolution_augmentation(tmp_path, name):
    config = load_config(name)
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config
    d = config.data
    assert d.dataset == "mnms" and d.resolution_augmentation and d.augment
    assert (d.train_vendors, d.unlabelled_vendors, d.test_vendors) == (["A", "B"], ["C"], ["D"])
    # the zoom factors spacing / side are the same at either spacing: 1.37 / 1.641 .. 1.37 / 0.977
    assert [round(d.spacing / side, 2) for side in d.resolution_range] == [1.40, 0.83]
    if name == "sdnet-mnms":  # the original SDNet
        original = load_config("sdnet-acdc")
        assert config.model == original.model and config.loss == original.loss and config.train == original.train
        assert d.resolution_range == [0.977, 1.641]  # sqrt of the paper's 0.954-2.692 mm^2 pixel areas


def test_vendor_lists_take_names_only():
    config = load_config(None, ["data.test_vendors=[D]", "data.train_vendors=[A, B]"])
    assert config.data.test_vendors == ["D"] and config.data.train_vendors == ["A", "B"]
    assert Config().data.train_vendors == [] and not Config().data.resolution_augmentation
    with pytest.raises(ConfigError, match=r"data.test_vendors: expected a list of names, e.g. \[A, B\], got 4"):
        load_config(None, ["data.test_vendors=4"])
    with pytest.raises(ConfigError, match="expected a list of names"):
        load_config(None, ["data.train_vendors=[1, 2]"])
    for bad in ("[1.6, 1.0]", "[0, 1.0]", "[1.0]"):
        with pytest.raises(ConfigError, match=r"data.resolution_range.*expected \[lo, hi\] with 0 < lo <= hi"):
            load_config(None, [f"data.resolution_range={bad}"])


def test_sizes_and_counts_below_one_and_sizes_the_networks_cannot_take_are_one_line_errors(tmp_path):
    from sdnet_tf.apps.train import build_sdnet, train_run

    for key in ("train.batch_size=0", "train.epochs=0", "model.input_size=0", "train.validation_batch_size=-4"):
        with pytest.raises(ConfigError, match="at least 1"):
            load_config(None, [key])
    with pytest.raises(ConfigError, match="input_size 100 is not divisible by 2\\*\\*depth = 16"):
        build_sdnet(load_config(None, ["model.input_size=100"]))
    with pytest.raises(ConfigError, match="not divisible"):
        build_sdnet(load_config("sdnet2018-acdc", ["model.input_size=100"]))
    with pytest.raises(ConfigError, match="not divisible"):  # before any data are read or written
        train_run(load_config(None, ["model.input_size=100", "data.path=/nonexistent"]), tmp_path / "run")
    assert not (tmp_path / "run" / "data.json").exists()


def test_resolution_augmentation_without_augmentation_is_refused(tmp_path):
    from sdnet_tf.apps.train import train_run

    config = load_config(None, ["data.resolution_augmentation=true", "data.augment=false", "data.dataset=synthetic"])
    with pytest.raises(ConfigError, match="needs data.augment true"):
        train_run(config, tmp_path / "run")


def test_a_run_resumed_with_other_settings_says_which(tmp_path, caplog):
    import logging

    from sdnet_tf.config import save_config

    path = tmp_path / "config.yaml"
    save_config(load_config("sdnet-acdc-cpu"), path)
    with caplog.at_level(logging.WARNING, logger="sdnet_tf.train"):
        save_config(load_config("sdnet-acdc-cpu"), path)  # the same settings: nothing said
        assert not caplog.records
        save_config(load_config("sdnet-acdc-cpu", ["train.epochs=60", "loss.dice_mode=batch"]), path)
    [record] = caplog.records
    assert "2 changed setting(s): loss.dice_mode: 'per_class' -> 'batch'; train.epochs: 30 -> 60" in record.getMessage()
    assert load_config(str(path)).train.epochs == 60


def test_a_key_added_since_a_run_was_saved_is_a_change_only_off_its_default(tmp_path, caplog):
    """A config.yaml written before ``data.seed`` existed lacks it; resuming at the default
    (-1, the old draws) says nothing, another value is named."""
    import logging

    import yaml

    from sdnet_tf.config import config_changes, save_config

    path = tmp_path / "config.yaml"
    values = load_config("sdnet-acdc-cpu").to_dict()
    del values["data"]["seed"]
    path.write_text(yaml.safe_dump(values))
    with caplog.at_level(logging.WARNING, logger="sdnet_tf.train"):
        save_config(load_config("sdnet-acdc-cpu"), path)
        assert not caplog.records
        path.write_text(yaml.safe_dump(values))
        save_config(load_config("sdnet-acdc-cpu", ["data.seed=3"]), path)
    [record] = caplog.records
    assert "1 changed setting(s): data.seed: '(unset)' -> 3" in record.getMessage()
    # without defaults, a missing key always counts; a key dropped from the code is named
    assert config_changes({"a": {"x": 1}}, {"a": {}}) == ["a.x: 1 -> '(unset)'"]
    assert config_changes({"a": {"x": 1}}, {"a": {}}, defaults={"a": {"x": 1}}) == []
