"""Factor-based augmentation (Liu et al., M&Ms 2020): anatomies paired with modalities of other
vendors, labels following the anatomy, images equal to the source model's own decoding of
the pair, deterministic and cached, unfit source runs refused, and a training run on the
four-vendor phantom that uses it. Tiny sizes (32 x 32, 8 filters): these check the
mechanics, not what the images look like."""

import dataclasses
import json
import logging
import shutil

import numpy as np
import pytest
import yaml

from sdnet_tf.apps.factor_augmentation import CACHE_NAME, draw_pairs, factor_augment
from sdnet_tf.config import ConfigError, load_config, save_config
from sdnet_tf.data.arrays import DataError

TINY = ["model.input_size=32", "model.unet_filters=8", "model.unet_depth=2", "model.segmentor_filters=8",
        "model.discriminator_filters=4", "model.modality_filters=4"]


def write_source_run(folder, config, seed=1):
    """A run directory holding an untrained SDNet of ``config`` (its weights seeded with
    ``seed``), as training leaves one: config.yaml, model.keras, summary.json."""
    import keras

    from sdnet_tf.apps.train import build_sdnet

    keras.utils.set_random_seed(seed)
    model = build_sdnet(config, seed=seed)
    model.build()
    folder.mkdir(parents=True, exist_ok=True)
    save_config(config, folder / "config.yaml")
    model.save(folder / "model.keras")
    (folder / "summary.json").write_text("{}\n")
    return folder


@pytest.fixture(scope="module")
def config():
    return load_config(None, TINY)


@pytest.fixture(scope="module")
def source(tmp_path_factory, config):
    return write_source_run(tmp_path_factory.mktemp("fa") / "pretrained", config)


@pytest.fixture(scope="module")
def arrays():
    """24 training images (12 labelled of vendors A, B; 12 unlabelled of A, B, C) and 8 validation images."""
    from sdnet_tf.data.synthetic import synthetic_arrays

    base = synthetic_arrays(24, 8, 32, labelled_fraction=0.5, seed=0)
    return dataclasses.replace(base, vendors=("A", "B", "C"), labelled_vendors=np.arange(12) % 2,
                               unlabelled_vendors=np.arange(12) % 3, validation_vendors=np.arange(8) % 2)


def test_pairs_cross_vendors_and_labels_follow_the_anatomy(arrays, source, config, tmp_path):
    out, description = factor_augment(arrays, source, config, count=40, seed=3, cache=tmp_path / CACHE_NAME)
    saved = np.load(tmp_path / CACHE_NAME)
    anatomy, modality, labelled = saved["anatomy_index"], saved["modality_index"], saved["labelled"]
    pool = np.concatenate([arrays.labelled_vendors, arrays.unlabelled_vendors])
    assert len(anatomy) == 40 and (pool[anatomy] != pool[modality]).all()
    # each of the 24 images lends its anatomy once per pass: once or twice in 40 draws
    assert set(np.bincount(anatomy, minlength=24).tolist()) == {1, 2}
    assert np.array_equal(labelled, anatomy < 12)
    n_new = int(labelled.sum())
    assert description["labelled"] == n_new and description["unlabelled"] == 40 - n_new
    assert out.counts() == {"labelled": 12 + n_new, "unlabelled": 12 + 40 - n_new, "real_masks": 24, "validation": 8}
    # the generated labelled images carry their anatomy image's mask, and the modality's vendor
    assert np.array_equal(out.labelled_masks[12:], arrays.labelled_masks[anatomy[labelled]])
    assert np.array_equal(out.labelled_images[12:], saved["images"][labelled])
    assert np.array_equal(out.unlabelled_images[12:], saved["images"][~labelled])
    assert np.array_equal(out.labelled_vendors[12:], pool[modality[labelled]])
    assert np.array_equal(out.unlabelled_vendors[12:], pool[modality[~labelled]])
    assert out.validation_images is arrays.validation_images and out.real_masks is arrays.real_masks
    assert sum(description["vendor_pairs"].values()) == 40 and "A -> A" not in description["vendor_pairs"]
    out.check(32, 3)


def test_pairs_without_vendors_are_two_different_images_and_one_vendor_is_refused():
    anatomy, modality = draw_pairs(100, None, 5, seed=0)
    assert (anatomy != modality).all() and set(modality.tolist()) == set(range(5))
    assert set(np.bincount(anatomy).tolist()) == {20}
    with pytest.raises(DataError, match="of one vendor"):
        draw_pairs(4, np.zeros(6, int), 6, seed=0)


def test_generated_images_are_the_source_model_s_decoding_of_the_pair(arrays, source, config):
    from sdnet_tf.inference import load_run

    out, _ = factor_augment(arrays, source, config, count=6, seed=5)
    anatomy, modality = draw_pairs(6, np.concatenate([arrays.labelled_vendors, arrays.unlabelled_vendors]), 24, 5)
    model, _ = load_run(source)
    pool = np.concatenate([arrays.labelled_images, arrays.unlabelled_images])
    generated = np.concatenate([out.labelled_images[12:], out.unlabelled_images[12:]])
    order = np.concatenate([np.flatnonzero(anatomy < 12), np.flatnonzero(anatomy >= 12)])
    for k in (0, 5):
        i, j = anatomy[order[k]], modality[order[k]]
        s_i, _, _, _ = model.decompose(pool[i:i + 1], training=False, sample=False)
        _, z_j, mean_j, _ = model.decompose(pool[j:j + 1], training=False, sample=False)
        assert np.array_equal(np.asarray(z_j), np.asarray(mean_j))  # sample=False: z is the mean
        expected = np.asarray(model.reconstruct(s_i, z_j))[0]
        np.testing.assert_allclose(generated[k], expected, atol=1e-5)
    assert set(np.unique(np.asarray(s_i)).tolist()) <= {0.0, 1.0}  # the binarised anatomy


def test_deterministic_for_a_seed_and_cached_until_the_source_weights_change(arrays, source, config, tmp_path,
                                                                            caplog):
    run = tmp_path / "source"
    shutil.copytree(source, run)
    cache = tmp_path / CACHE_NAME
    first, d1 = factor_augment(arrays, run, config, count=10, seed=2, cache=cache)
    again, d2 = factor_augment(arrays, run, config, count=10, seed=2, cache=cache)
    plain, _ = factor_augment(arrays, run, config, count=10, seed=2)
    assert not d1["from_cache"] and d2["from_cache"] and d1["weights_sha256"] == d2["weights_sha256"]
    for name in ("labelled_images", "unlabelled_images", "labelled_masks", "labelled_vendors"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name), err_msg=name)
        np.testing.assert_array_equal(getattr(first, name), getattr(plain, name), err_msg=name)
    other, _ = factor_augment(arrays, run, config, count=10, seed=4)
    assert not np.array_equal(other.unlabelled_images, first.unlabelled_images) or \
        not np.array_equal(other.labelled_images, first.labelled_images)
    write_source_run(run, config, seed=7)  # new weights in the same run directory
    with caplog.at_level(logging.INFO, logger="sdnet_tf.train"):
        renewed, d3 = factor_augment(arrays, run, config, count=10, seed=2, cache=cache)
    assert not d3["from_cache"] and d3["weights_sha256"] != d1["weights_sha256"]
    assert "generating the images again" in caplog.text
    assert not np.array_equal(renewed.labelled_images[12:], first.labelled_images[12:])
    np.testing.assert_array_equal(renewed.labelled_masks, first.labelled_masks)  # the same pairs


def _edited_copy(source, folder, **changes):
    shutil.copytree(source, folder)
    values = yaml.safe_load((folder / "config.yaml").read_text())
    for key, value in changes.items():
        section, name = key.split("__")
        values[section][name] = value
    (folder / "config.yaml").write_text(yaml.safe_dump(values))
    return folder


def test_unfit_and_non_sdnet_runs_are_refused_naming_the_run(arrays, source, config, tmp_path):
    cases = [(_edited_copy(source, tmp_path / "big", model__input_size=64), "model.input_size 64"),
             (_edited_copy(source, tmp_path / "coarse", data__spacing=3.0), r"3 mm pixels \(data.spacing\)"),
             (_edited_copy(source, tmp_path / "classes", model__num_classes=1), "model.num_classes 1"),
             (_edited_copy(source, tmp_path / "precursor", model__kind="sdnet2018"), "MICCAI 2018 precursor"),
             (tmp_path / "missing", "no such run directory")]
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "config.yaml").write_text(yaml.safe_dump({"model": {"input_size": 32, "filters": 8, "depth": 2}}))
    cases.append((unet, "U-Net baseline run"))
    gan = tmp_path / "gan"
    gan.mkdir()
    (gan / "config.yaml").write_text(yaml.safe_dump({"model": {"kind": "unet_gan", "input_size": 32}}))
    cases.append((gan, r"a U-Net or GAN baseline run \(model.kind unet_gan\).*needs a 2019 SDNet run"))
    for run, message in cases:
        with pytest.raises(DataError, match=message) as error:
            factor_augment(arrays, run, config)
        assert str(run.resolve()) in str(error.value) and "\n" not in str(error.value)
    from sdnet_tf.apps.factor_augmentation import check_source_run

    with pytest.raises(DataError, match="the run being trained"):
        check_source_run(source, config, run_dir=source)
    with pytest.raises(ConfigError, match="data.factor_augmentation_count -1"):
        load_config(None, ["data.factor_augmentation_count=-1"])


@pytest.fixture(scope="module")
def mnms_cohort_12(tmp_path_factory):
    """12 phantom patients in the M&Ms layout, 3 per vendor."""
    from sdnet_tf.data.phantom import write_mnms_cohort

    return write_mnms_cohort(tmp_path_factory.mktemp("mnms12"), patients=12, seed=0, progress=False)


@pytest.mark.slow
def test_training_on_the_four_vendor_phantom_adds_the_images_and_a_resumed_run_reads_them(
        mnms_cohort_12, tmp_path):
    from sdnet_tf.apps.train import train_run

    overrides = TINY + ["train.epochs=1", "train.iterations_per_epoch=2", "train.image_summaries=0",
                        f"data.path={mnms_cohort_12}", "data.spacing=6.0", "data.resolution_range=[4.278, 7.187]",
                        f"data.cache_dir={tmp_path / 'cache'}"]
    source = write_source_run(tmp_path / "pretrained", load_config("sdnet-mnms-phantom-quick", overrides))
    config = load_config("sdnet-mnms-phantom-quick", overrides + [f"data.factor_augmentation={source}"])
    run = tmp_path / "run"
    summary = train_run(config, run, progress=False)
    record = json.loads((run / "factor_augmentation.json").read_text())
    data = json.loads((run / "data.json").read_text())
    assert summary["iteration"] == 2 and record["source_run"] == str(source.resolve())
    assert record["count"] == data["labelled"] + data["unlabelled"] == record["labelled"] + record["unlabelled"]
    assert record["labelled"] > 0 and record["unlabelled"] > 0 and not record["from_cache"]
    # A and B labelled, C unlabelled, D held out: never paired with itself, D never seen
    assert set(record["vendor_pairs"]) <= {f"{a} -> {m}" for a in "ABC" for m in "ABC" if a != m}
    assert f"{record['labelled']} labelled and {record['unlabelled']} unlabelled images added" in \
        (run / "train.log").read_text()
    # resumed (here with nothing left to train): the images come from the run's cache
    assert train_run(config, run, progress=False)["iteration"] == 2
    assert json.loads((run / "factor_augmentation.json").read_text())["from_cache"]
    assert "images read from" in (run / "train.log").read_text()
