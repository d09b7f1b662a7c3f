"""The MM-WHS-layout reader: MM-WHS label values to SDNet's [MYO, LV, RV], axial slices whatever
the storage of the volume, one clear error for a bad layout or file, and the two-modality
phantom and arrays built from it."""

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from sdnet_infer.geometry import read_geometry
from sdnet_infer.preprocess import crop_or_pad
from sdnet_tf.config import load_config
from sdnet_tf.data.arrays import DataError
from sdnet_tf.data.mmwhs import (MODALITIES, find_cases, mmwhs_splits, multimodal_arrays, preprocess_mmwhs,
                                 read_case)
from support.geometry_cases import flipped_affine, save

LV, MYO, RV = 3, 2, 1  # ACDC's values, which the reader gives


def whole_heart(shape=(24, 10, 12)):
    """(labels (H, W, S) in MM-WHS values, image) on an (L, P, S) grid of 1 x 2 x 1 mm voxels:
    LV inside a myocardial ring and an RV beside it in slices 3-8, the left atrium (420) and
    the aorta (820) alone in slices 0-2 and 9-11, which hold nothing SDNet segments."""
    h, w, s = shape
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - 12.0, (xx - 5.0) * 2.0)
    labels = np.zeros(shape, np.int16)
    for k in range(s):
        if 3 <= k <= 8:
            labels[r < 6, k] = 205
            labels[r < 3.5, k] = 500
            labels[(np.hypot(yy - 12.0, (xx - 1.5) * 2.0) < 4) & (r >= 6), k] = 600
            labels[(yy < 3) & (xx > 6), k] = 550
        else:
            labels[r < 4, k] = (420 if k < 2 else 421) if k < 3 else 820  # 421: MR files' other left-atrium value
    rng = np.random.default_rng(0)
    image = np.where(labels == 205, 300, np.where(labels > 0, 900, 100)) + rng.integers(0, 40, shape)
    image[..., :] += np.arange(s) * 3  # every slice differs
    return labels, image.astype(np.int16)


STORAGE = {  # (array on the stored grid, affine) of the same physical volume
    "plain": lambda a, aff: (a, aff),
    "flipped": lambda a, aff: (a[::-1, ::-1], flipped_affine(aff, a.shape)),
    "slice_first": lambda a, aff: (a.transpose(2, 0, 1), aff[:, [2, 0, 1, 3]]),
}


def write_case(root, modality, number, labels, image, storage="plain", sform=True):
    affine = np.diag([-1.0, -2.0, 1.0, 1.0])
    folder = root / f"{modality}_train"
    folder.mkdir(parents=True, exist_ok=True)
    for kind, data in (("image", image), ("label", labels)):
        stored, stored_affine = STORAGE[storage](data, affine)
        zooms = tuple(np.linalg.norm(stored_affine[:3, :3], axis=0))
        path = folder / f"{modality}_train_{number}_{kind}.nii.gz"
        if sform:
            save(stored, stored_affine, zooms, path, sform_code=1)
        else:  # no orientation at all: the axial axis cannot be known
            img = nib.Nifti1Image(np.asarray(stored, np.int16), None)
            img.header.set_zooms(zooms)
            img.header.set_sform(None, code=0)
            img.header.set_qform(None, code=0)
            nib.save(img, str(path))
    return folder


def test_label_values_become_myo_lv_rv_and_slices_without_them_are_dropped(tmp_path):
    labels, image = whole_heart()
    write_case(tmp_path, "ct", 1001, labels, image)
    write_case(tmp_path, "mr", 1001, labels, image)
    case = next(c for c in find_cases(tmp_path) if c.modality == "ct")
    images, masks = read_case(case, size=24, spacing=1.0)
    assert images.shape == (6, 24, 24) and masks.shape == (6, 24, 24)  # slices 3-8 only
    expected = np.zeros(labels.shape, np.uint8)
    for value, acdc in ((205, MYO), (500, LV), (600, RV)):  # 420, 421, 550, 820 stay background
        expected[labels == value] = acdc
    resampled = np.repeat(expected, 2, axis=1)  # 2 mm columns to 1 mm (nearest neighbour)
    assert np.array_equal(masks, np.moveaxis(crop_or_pad(resampled, 24, mode="constant")[0], -1, 0)[3:9])
    assert set(np.unique(masks)) == {0, RV, MYO, LV}
    assert images.min() == -1.0 and images.max() == 1.0


def test_axial_slices_are_the_same_however_the_volume_is_stored(tmp_path):
    labels, image = whole_heart()
    for number, storage in enumerate(STORAGE, start=1001):
        write_case(tmp_path, "mr", number, labels, image, storage)
        write_case(tmp_path, "ct", number, labels, image, storage)
    cases = [c for c in find_cases(tmp_path) if c.modality == "mr"]
    plain = cases[0].image
    # the 2 mm axis is the thickest: the default rule would slice along it, the axial rule does not
    assert read_geometry(plain).slice_axis == 1 and read_geometry(plain, slicing="axial").slice_axis == 2
    assert read_geometry(cases[2].image, slicing="axial").slice_axis == 0
    first_images, first_masks = read_case(cases[0], size=24, spacing=1.0)
    for case in cases[1:]:
        images, masks = read_case(case, size=24, spacing=1.0)
        assert np.array_equal(masks, first_masks), case.name
        np.testing.assert_allclose(images, first_images, atol=1e-6, err_msg=case.name)


def test_a_bad_layout_or_file_is_one_error_naming_it(tmp_path):
    labels, image = whole_heart()
    with pytest.raises(DataError, match=r"no MM-WHS images in mr_train/ or ct_train/; expected "
                                        r"mr_train/mr_train_<N>_image.nii.gz with mr_train/mr_train_<N>_label"):
        find_cases(tmp_path)
    write_case(tmp_path, "mr", 1001, labels, image)
    with pytest.raises(DataError, match=r"no MM-WHS images in ct_train/"):
        find_cases(tmp_path)
    write_case(tmp_path, "ct", 1001, labels, image)
    (tmp_path / "ct_train" / "ct_train_1001_label.nii.gz").rename(tmp_path / "ct_train" / "ct_train_1002_label.nii.gz")
    with pytest.raises(DataError, match=r"ct_train_1001_image.nii.gz: no label file ct_train_1001_label.nii.gz"):
        find_cases(tmp_path)
    with pytest.raises(DataError, match="no such data folder"):
        find_cases(tmp_path / "missing")

    bad = tmp_path / "bad"
    write_case(bad, "mr", 1001, np.where(labels == 600, 300, labels), image)
    write_case(bad, "ct", 1001, labels, image, sform=False)
    mr, ct = find_cases(bad)
    with pytest.raises(DataError, match=r"mr_train_1001_label.nii.gz: labels 300 outside"):
        read_case(mr, size=24, spacing=1.0)
    with pytest.raises(DataError, match=r"ct_train_1001_image.nii.gz: cannot tell the axial slice axis"):
        read_case(ct, size=24, spacing=1.0)

    result = CliRunner().invoke(main, ["train", "mmwhs", "--data", str(tmp_path / "missing"), "--quiet",
                                       "--set", f"data.cache_dir={tmp_path / 'cache'}"])
    assert result.exit_code == 1 and "no such data folder" in result.output and "Traceback" not in result.output


def test_the_phantom_renders_one_anatomy_in_two_modalities(multimodal_cohort_8):
    from scipy import ndimage

    from sdnet_tf.data.nifti import read_volume

    cases = find_cases(multimodal_cohort_8)
    assert [c.name for c in cases[:2]] == ["mr_train_1001", "mr_train_1002"] and len(cases) == 16
    mr, ct = (next(c for c in cases if c.modality == m and c.number == 1001) for m in MODALITIES)
    relation = {}
    for case in (mr, ct):
        image, labels = read_volume(case.image), read_volume(case.labels)
        heart = np.isin(labels.data, (205, 500, 600))
        around = ndimage.binary_dilation(heart, iterations=4) & ~ndimage.binary_dilation(heart, iterations=2)
        around &= labels.data == 0
        myo, blood = image.data[labels.data == 205].mean(), image.data[labels.data == 500].mean()
        relation[case.modality] = (myo - image.data[around].mean()) / (blood - myo)
        area = (labels.data == 500).sum(axis=(0, 1)) * np.prod(labels.zooms[:2])  # LV area per slice, mm^2
        relation[case.modality + "_lv_mm2"] = area
        assert blood > myo
    # MR: myocardium darker than the tissue around the heart; CT: brighter than the fat around it
    assert relation["mr"] < -0.1 and relation["ct"] > 0.1, relation
    np.testing.assert_allclose(relation["ct_lv_mm2"], relation["mr_lv_mm2"], rtol=0.08)
    assert read_volume(ct.image).data.min() < -500 <= 0 <= read_volume(mr.image).data.min()  # HU against MR units


def test_arrays_of_both_modalities_carry_each_slice_s_modality(multimodal_cohort_8, tmp_path):
    cohort, cases = preprocess_mmwhs(multimodal_cohort_8, tmp_path / "cache", size=32, progress=False, spacing=5.0)
    assert [p.name for p in (tmp_path / "cache").iterdir()][0].startswith("mmwhs-")
    splits = mmwhs_splits(cases)
    arrays, description = multimodal_arrays(cohort, splits, 0, labelled_fraction=0.5, seed=1)
    arrays.check(32, 3)
    for name in ("labelled", "unlabelled", "validation"):
        modality = getattr(arrays, f"{name}_modalities")
        assert len(modality) == len(getattr(arrays, f"{name}_images")) and set(modality.tolist()) == {0, 1}, name
        per = description["per_modality"]
        assert [int(np.sum(modality == i)) for i in range(2)] == [per[m][name] for m in MODALITIES]
    mr, ct = (description["per_modality"][m] for m in MODALITIES)
    assert len(mr["labelled_cases"]) == len(ct["labelled_cases"]) == len(splits[0]["training"]) // 2
    validation = [n for n in splits[0]["validation"]]
    assert description["validation"] == sum(len(cohort[m][n]["images"]) for m in MODALITIES for n in validation)


def test_the_two_modality_phantom_is_cached_apart_from_the_single_modality_cohort(tmp_path):
    from sdnet_tf.data.sources import multimodal_phantom_folder, phantom_folder

    config = load_config("sdnet-multimodal-phantom", [f"data.cache_dir={tmp_path}"])
    single = load_config("phantom-quick", [f"data.cache_dir={tmp_path}"])
    for name in ("phantom-mmwhs-v1-20-seed0", "phantom-v2-20-seed0"):  # made complete: nothing is generated
        (tmp_path / name).mkdir()
        (tmp_path / name / "complete").write_text("ok\n")
    assert multimodal_phantom_folder(config).name == "phantom-mmwhs-v1-20-seed0"
    assert phantom_folder(single).name == "phantom-v2-20-seed0"
