"""Data: NIfTI I/O, the ACDC preprocessing, splits, the phantom cohort, bad input, real data."""

import shutil

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from sdnet_tf.data.acdc import (ACDC_SPLITS, cohort_arrays, find_patients, labelled_subset, make_splits,
                                patient_strata, preprocess_cohort, read_info)
from sdnet_tf.data.nifti import load_labels, load_volume, save_labels, save_volume
from sdnet_tf.data.phantom import patient_volumes, write_cohort
from sdnet_tf.metrics.validity import SEVEN_CHECKS, check_slice
from sdnet_tf.data.preprocess import crop_or_pad, from_one_hot, normalise, one_hot, preprocess_frame
from support.helpers import ROOT

REAL = ROOT.parent / "shared" / "data" / "acdc-training"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="shared ACDC data not present")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("phantom"), patients=6, seed=3)


# ---------------------------------------------------------------------------------- phantom
def test_phantom_is_deterministic_and_seed_dependent():
    a, la, pa, ed, es = patient_volumes(5, 2)
    b, lb, _, _, _ = patient_volumes(5, 2)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la[ed], lb[ed])
    c, _, _, _, _ = patient_volumes(6, 2)
    assert a.shape != c.shape or not np.array_equal(a, c)
    assert ed == 1 and es > ed


def test_phantom_anatomy_is_plausible_and_behaves():
    for number in range(1, 11):
        _, labels, params, ed, es = patient_volumes(0, number)
        for frame in (ed, es):
            for k in range(labels[frame].shape[-1]):
                failed = check_slice(labels[frame][..., k], (params["spacing"],) * 2, SEVEN_CHECKS)
                assert not any(failed.values()), (number, frame, k, failed)
        lv_ed, lv_es = (labels[ed] == 3).sum(), (labels[es] == 3).sum()
        assert lv_es < lv_ed, "the LV contracts from ED to ES"
        base, apex = labels[ed][..., 0], labels[ed][..., -1]
        assert (apex == 3).sum() < (base == 3).sum(), "the cavity shrinks toward the apex"
        assert (base == 1).sum() > 0 and (apex == 1).sum() == 0, "the RV fades before the apex"


def test_phantom_groups_change_shapes():
    lv = {}
    for number in range(1, 6):
        _, labels, params, ed, _ = patient_volumes(0, number)
        lv[params["group"]] = (labels[ed] == 3).sum() * params["spacing"] ** 2
    assert lv["DCM"] > lv["NOR"] and lv["HCM"] < lv["NOR"]


def test_phantom_cohort_layout(cohort):
    patients = find_patients(cohort)
    assert [p.number for p in patients] == list(range(1, 7))
    p = patients[0]
    assert p.cine is not None and p.frame(p.ed).is_file() and p.labels(p.es).is_file()
    info = read_info(p.folder / "Info.cfg")
    assert info["Group"] in ("NOR", "DCM", "HCM", "RV", "MINF")
    img = nib.load(str(p.frame(p.ed)))
    assert img.header["qform_code"] == 0 and img.header["sform_code"] == 2
    assert img.header.get_zooms()[2] == 10.0


# --------------------------------------------------------------------------- preprocessing
def test_preprocess_frame_spacing_range_and_size(rng):
    image = rng.normal(100, 20, size=(150, 180, 5)).astype(np.float32)
    labels = np.zeros((150, 180, 5), np.uint8)
    labels[60:90, 70:100] = 3
    slices, masks, geometry = preprocess_frame(image, (2.74, 1.37), labels, size=224)
    assert slices.shape == (5, 224, 224) and masks.shape == (5, 224, 224)
    assert slices.min() == pytest.approx(-1) and slices.max() == pytest.approx(1)
    assert geometry.resampled == (300, 180)  # 150 px at 2.74 mm -> 300 px at 1.37 mm
    # the LV square keeps its physical size: 30 x 30 px at (2.74, 1.37) -> 60 x 30 px
    assert masks[0].sum() == pytest.approx(60 * 30 * 3, rel=0.05)
    assert set(np.unique(masks)) <= {0, 3}


def test_crop_and_pad_are_centred():
    a = np.arange(10 * 7).reshape(10, 7)
    cropped, (top, left) = crop_or_pad(a, 4)
    assert (top, left) == (3, 2) and cropped.shape == (4, 4) and cropped[0, 0] == a[3, 2]
    padded, (top, left) = crop_or_pad(np.ones((2, 3)), 6, mode="constant")
    assert (top, left) == (-2, -1) and padded.shape == (6, 6) and padded.sum() == 6


def test_normalise_clips_to_percentiles():
    v = np.arange(101, dtype=np.float32)
    out = normalise(v)
    assert out.min() == -1 and out.max() == 1
    assert out[0] == out[5] == -1 and out[100] == out[95] == 1


def test_one_hot_order_and_inverse():
    labels = np.array([[0, 1, 2, 3]], np.uint8)
    masks = one_hot(labels)
    np.testing.assert_array_equal(masks[0, :, 0], [0, 0, 1, 0])  # MYO = ACDC 2
    np.testing.assert_array_equal(masks[0, :, 1], [0, 0, 0, 1])  # LV = ACDC 3
    np.testing.assert_array_equal(masks[0, :, 2], [0, 1, 0, 0])  # RV = ACDC 1
    np.testing.assert_array_equal(from_one_hot(masks), labels)


# ------------------------------------------------------------------------------- splits
def test_original_acdc_splits():
    for split in ACDC_SPLITS:
        assert len(split["training"]) == 70 and len(split["validation"]) == 15 and len(split["test"]) == 15
        assert sorted(split["training"] + split["validation"] + split["test"]) == list(range(1, 101))
    assert make_splits(range(1, 101)) == ACDC_SPLITS


def test_generic_splits_and_labelled_fraction():
    splits = make_splits(range(1, 21), seed=0)
    for s in splits:
        assert (len(s["training"]), len(s["validation"]), len(s["test"])) == (14, 3, 3)
    assert labelled_subset(list(range(31, 101)), 0.015) == labelled_subset(list(range(31, 101)), 0.015)
    assert len(labelled_subset(list(range(31, 101)), 0.015)) == 1  # 1.5% is one subject
    assert len(labelled_subset(list(range(31, 101)), 0.25)) == 17


def test_stratified_splits_cover_every_category():
    # 20 patients in 3 unevenly sized categories: each 3-patient held-out set has one of each
    strata = {n: "abc"[0 if n <= 9 else 1 if n <= 15 else 2] for n in range(1, 21)}
    for seed in range(5):
        for s in make_splits(range(1, 21), seed=seed, strata=strata):
            assert sorted(s["training"] + s["validation"] + s["test"]) == list(range(1, 21))
            for held_out in (s["validation"], s["test"]):
                assert sorted(strata[n] for n in held_out) == ["a", "b", "c"]


def test_phantom_splits_are_stratified_by_scanner_style(cohort):
    patients = find_patients(cohort)
    strata = patient_strata(patients)
    assert set(strata.values()) <= {"0", "1", "2"}
    validation = make_splits([p.number for p in patients], strata=strata)[0]["validation"]
    assert len({strata[n] for n in validation}) == len(validation)


def test_cohort_arrays_use_cine_and_cache(cohort, tmp_path):
    data, patients = preprocess_cohort(cohort, tmp_path / "cache", size=64, progress=False, spacing=5.0)
    cached = list((tmp_path / "cache").glob("*.npz"))
    assert len(cached) == 1
    again, _ = preprocess_cohort(cohort, tmp_path / "cache", size=64, progress=False, spacing=5.0)
    np.testing.assert_array_equal(again[1]["images"], data[1]["images"])
    splits = make_splits([p.number for p in patients])
    arrays, desc = cohort_arrays(data, splits, 0, 0.5, seed=1)
    assert "cine" in desc["unlabelled_source"]
    assert arrays.labelled_images.shape[1:] == (64, 64, 1)
    assert arrays.real_masks.shape[0] >= arrays.labelled_masks.shape[0]
    assert len(desc["labelled_patients"]) == 2
    arrays.check(64, 3)


# ----------------------------------------------------------------------------- bad input
def _copy_patient(cohort, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(cohort / "patient001", root / "patient001")
    return root, root / "patient001"


def _preprocess_cli(root):
    return CliRunner().invoke(main, ["preprocess", "--data", str(root), "--set", "model.input_size=64",
                                     "--set", f"data.cache_dir={root.parent / 'cache'}"])


def _assert_clean_failure(result, *words):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output, result.output


def test_bad_missing_folder(tmp_path):
    _assert_clean_failure(_preprocess_cli(tmp_path / "nowhere"), "nowhere", "no such data folder")


def test_bad_missing_info(cohort, tmp_path):
    root, patient = _copy_patient(cohort, tmp_path)
    (patient / "Info.cfg").unlink()
    _assert_clean_failure(_preprocess_cli(root), "Info.cfg", "missing")


def test_bad_missing_frame(cohort, tmp_path):
    root, patient = _copy_patient(cohort, tmp_path)
    info = (patient / "Info.cfg").read_text().replace("ED: 1", "ED: 9")
    (patient / "Info.cfg").write_text(info)
    _assert_clean_failure(_preprocess_cli(root), "frame09", "not there")


def test_bad_truncated_file(cohort, tmp_path):
    root, patient = _copy_patient(cohort, tmp_path)
    path = patient / "patient001_frame01.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    _assert_clean_failure(_preprocess_cli(root), "patient001_frame01.nii.gz", "truncated")


def test_bad_shape_mismatch(cohort, tmp_path):
    root, patient = _copy_patient(cohort, tmp_path)
    path = patient / "patient001_frame01_gt.nii.gz"
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-2], img.affine, img.header), str(path))
    _assert_clean_failure(_preprocess_cli(root), "patient001_frame01_gt.nii.gz", "does not match")


def test_bad_label_values(cohort, tmp_path):
    root, patient = _copy_patient(cohort, tmp_path)
    path = patient / "patient001_frame01_gt.nii.gz"
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(path))
    _assert_clean_failure(_preprocess_cli(root), "patient001_frame01_gt.nii.gz", "outside {0, 1, 2, 3}")


@pytest.mark.parametrize("shape", [(20, 20), (20, 20, 3, 2, 2)])
def test_bad_dimensionality(cohort, tmp_path, shape):
    root, patient = _copy_patient(cohort, tmp_path)
    path = patient / "patient001_frame01.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), str(path))
    _assert_clean_failure(_preprocess_cli(root), "patient001_frame01.nii.gz", f"{len(shape)}-D")


@pytest.mark.parametrize("fill,message", [(np.nan, "NaN"), (5.0, "constant intensities")])
def test_bad_intensities(cohort, tmp_path, fill, message):
    root, patient = _copy_patient(cohort, tmp_path)
    path = patient / "patient001_frame01.nii.gz"
    img = nib.load(str(path))
    data = np.full(img.shape, fill, np.float32)
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(path))  # the header keeps it on the labels' grid
    _assert_clean_failure(_preprocess_cli(root), "patient001_frame01.nii.gz", message)


def test_train_without_data_folder_is_a_clean_error():
    result = CliRunner().invoke(main, ["train", "acdc", "--quiet"])
    _assert_clean_failure(result, "--data")


# ------------------------------------------------------------------------------- NIfTI I/O
def test_save_labels_keeps_affine_and_header(tmp_path):
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    src = save_volume(np.random.default_rng(0).random((6, 5, 3)) * 100, affine, (1.5, 1.5, 10.0),
                      tmp_path / "img.nii.gz", np.int16)
    ref = nib.load(str(src))
    out = save_labels(np.ones((6, 5, 3)), ref, tmp_path / "out" / "pred.nii.gz")
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(img.affine, ref.affine)
    assert img.header.get_zooms() == ref.header.get_zooms()
    assert img.header["sform_code"] == 2 and img.header["qform_code"] == 0
    assert not list((tmp_path / "out").glob("*.tmp*"))
    data, zooms, _ = load_volume(src)
    assert zooms == (1.5, 1.5, 10.0) and data.dtype == np.float32


# ------------------------------------------------------------------------------- real ACDC
@needs_real
def test_real_acdc_patients_load_with_header_spacing():
    patients = find_patients(REAL)
    assert len(patients) == 100
    for p in patients[:3] + patients[-2:]:
        image, zooms, img = load_volume(p.frame(p.ed))
        labels, _, _ = load_labels(p.labels(p.ed), image.shape)
        assert image.ndim == 3 and 0.6 < zooms[0] < 2.0 and zooms[2] >= 5.0
        assert set(np.unique(labels)) <= {0, 1, 2, 3} and (labels > 0).any()
        assert not np.allclose(np.abs(np.diag(img.affine)[:2]), zooms[:2]) or zooms[0] == 1.0


@needs_real
def test_real_acdc_preprocessing_shapes_and_ranges():
    patients = find_patients(REAL)[:2]
    for p in patients:
        image, zooms, _ = load_volume(p.frame(p.es))
        labels, _, _ = load_labels(p.labels(p.es), image.shape)
        slices, masks, geometry = preprocess_frame(image, zooms, labels)
        assert slices.shape == (image.shape[2], 224, 224)
        # scaled to [-1, 1] before the crop, which may cut away the extremes
        assert -1 <= slices.min() < -0.9 and 0.9 < slices.max() <= 1
        assert set(np.unique(masks)) <= {0, 1, 2, 3}
        assert geometry.resampled[0] == round(image.shape[0] * zooms[0] / 1.37)
        # nearest resampling keeps each structure's area in mm^2 within a few percent
        for value in (1, 2, 3):
            before = (labels == value).sum() * zooms[0] * zooms[1]
            after = (masks == value).sum() * 1.37 ** 2
            if before > 500:
                assert after == pytest.approx(before, rel=0.08)


def test_a_damaged_preprocessing_cache_is_one_error_naming_it(tmp_path):
    from sdnet_tf.data.acdc import preprocess_cohort
    from sdnet_tf.data.arrays import DataError
    from sdnet_tf.data.phantom import write_cohort

    cohort = write_cohort(tmp_path / "cohort", patients=2, seed=0)
    preprocess_cohort(cohort, tmp_path / "cache", size=32, progress=False, spacing=5.0)
    (cached,) = (tmp_path / "cache").glob("acdc-*.npz")
    cached.write_bytes(cached.read_bytes()[:10])
    with pytest.raises(DataError, match="not a readable .npz file.*delete it to preprocess the cohort again"):
        preprocess_cohort(cohort, tmp_path / "cache", size=32, progress=False, spacing=5.0)


def test_a_cached_cohort_appears_only_when_complete_and_is_written_once(tmp_path):
    from types import SimpleNamespace

    from sdnet_tf.data.sources import _cached_cohort

    config = SimpleNamespace(data=SimpleNamespace(cache_dir=str(tmp_path), phantom_seed=0))
    calls = []

    def writer(folder, patients, seed, progress=False):
        calls.append(folder)
        assert folder != tmp_path / "cohort"  # written aside, renamed into place when complete
        assert not (tmp_path / "cohort" / "complete").exists()
        folder.mkdir(parents=True)
        (folder / "patient001").write_text("x")

    (tmp_path / "cohort").mkdir()  # what a writer stopped half-way left: no "complete" marker
    (tmp_path / "cohort" / "half").write_text("x")
    folder = _cached_cohort(config, "cohort", writer, "test cohort")
    assert folder == tmp_path / "cohort" and len(calls) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["complete", "patient001"]
    assert _cached_cohort(config, "cohort", writer, "test cohort") == folder and len(calls) == 1
    assert not list(tmp_path.glob(".cohort.*"))


def test_data_seed_keeps_the_subjects_while_train_seed_changes(phantom_cohort_8, tmp_path):
    # data.seed -1 (default): the labelled subjects and kept slices follow train.seed, as before;
    # set, they follow it alone, so a network can be trained again with another train.seed on
    # the same subjects (SDNet's arrays and a prior's or U-Net's masks alike)
    from sdnet_tf.config import Config, PriorConfig
    from sdnet_tf.data.sources import data_seed, load_arrays, mask_sets

    def sdnet(train_seed, seed):
        config = Config()
        config.data.dataset, config.data.path, config.data.split = "acdc", str(phantom_cohort_8), 0
        config.data.labelled_fraction, config.data.cache_dir, config.model.input_size = 0.5, str(tmp_path), 64
        config.train.seed, config.data.seed = train_seed, seed
        return load_arrays(config, progress=False)[1]["labelled_patients"]

    def masks(train_seed, seed):
        config = PriorConfig()
        config.data.path, config.data.labelled_fraction, config.data.cache_dir = str(phantom_cohort_8), 0.5, str(tmp_path)
        config.model.input_size, config.data.spacing = 32, 5.0
        config.train.seed, config.data.seed = train_seed, seed
        assert data_seed(config) == (seed if seed >= 0 else train_seed)
        return mask_sets(config, progress=False)[2]["training_patients"]

    for draw in (sdnet, masks):
        first = draw(1, -1)
        assert draw(7, 1) == first  # another train.seed, the subjects of train.seed 1
        assert any(draw(seed, -1) != first for seed in (2, 3, 4, 5))  # without data.seed, they move
