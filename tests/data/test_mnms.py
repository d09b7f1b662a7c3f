"""The M&Ms-layout reader: M&Ms labels to ACDC's and back, ED and ES as 0-based time indices of
the CSV, unlabelled frames other than ED and ES, splits per vendor, vendor roles, one error naming
the file for each bad input, the same slices however a file is stored, and the four-vendor phantom."""

import csv

import nibabel as nib
import numpy as np
import pytest

from sdnet_infer.labels import BACKGROUND, LV, MYO, RV
from sdnet_infer.preprocess import preprocess_frame
from sdnet_tf.data.arrays import DataError
from sdnet_tf.data.mnms import (INVERSE_LABEL_MAP, LABEL_MAP, Patient, find_patients, mnms_arrays, preprocess_mnms,
                                read_patient, to_mnms_labels, vendor_roles, vendor_splits)
from support.geometry_cases import flipped_affine, save

MNMS_LV, MNMS_MYO, MNMS_RV = 1, 2, 3  # M&Ms' own label values
CSV_NAME = "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv"
SPACING, THICKNESS = 2.0, 8.0  # mm
SHAPE = (16, 16, 3)  # H x W x slices


def cine(frames, ed, es):
    """(image (H, W, S, T) int16 whose frames all differ, gt (H, W, S, T) in M&Ms labels at ED and ES only)."""
    h, w, s = SHAPE
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.zeros((h, w, s, frames), np.int16)
    gt = np.zeros((h, w, s, frames), np.uint8)
    for t in range(frames):
        radius = 3.0 + 0.3 * t  # the LV changes size over the cycle, so every frame is its own
        r = np.hypot(yy - 8.0, xx - 9.0)
        labels = np.zeros((h, w), np.uint8)
        labels[(np.hypot(yy - 8.0, xx - 3.0) < 3.0) & (r >= radius + 2)] = MNMS_RV
        labels[r < radius + 2] = MNMS_MYO
        labels[r < radius] = MNMS_LV
        for k in range(s):
            image[..., k, t] = np.choose(labels, [100, 900, 300, 800]) + 10 * k + 7 * t + (yy * xx) % 5
            if t in (ed, es):
                gt[..., k, t] = labels
    return image, gt


STORAGE = {  # (array on the stored grid, affine) of the same physical 4-D volume
    "plain": lambda a, aff: (a, aff),
    "flipped": lambda a, aff: (a[::-1, ::-1], flipped_affine(aff, a.shape)),
    "slice_first": lambda a, aff: (a.transpose(2, 0, 1, 3), aff[:, [2, 0, 1, 3]]),
}


def write_patient(root, code, folder="Training/Labeled", frames=6, ed=1, es=3, storage="plain", gt="4d"):
    """One patient's ``<code>_sa.nii.gz`` (4-D) and, unless ``gt`` is None, its labels: "4d" (the
    challenge's), "3d" (the ED frame alone) or the 4-D labels as they are; returns (image, gt)."""
    image, labels = cine(frames, ed, es)
    target = root / folder / code
    target.mkdir(parents=True, exist_ok=True)
    affine = np.diag([-SPACING, -SPACING, THICKNESS, 1.0])
    for suffix, data in (("sa", image), ("sa_gt", {"4d": labels, "3d": labels[..., ed]}.get(gt))):
        if data is None:
            continue
        stored, stored_affine = STORAGE[storage](data, affine)
        zooms = tuple(np.linalg.norm(stored_affine[:3, :3], axis=0)) + (1.0,) * (data.ndim - 3)
        save(stored, stored_affine, zooms, target / f"{code}_{suffix}.nii.gz", sform_code=1,
             dtype=np.uint8 if suffix == "sa_gt" else np.int16)
    return image, labels


def write_csv(root, rows):
    """The challenge's CSV (a first unnamed index column, as the open dataset's) from (code, vendor, ED, ES)."""
    with open(root / CSV_NAME, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["", "External code", "VendorName", "Vendor", "Centre", "ED", "ES", "Pathology"])
        for i, (code, vendor, ed, es) in enumerate(rows):
            writer.writerow([i, code, f"maker {vendor}", vendor, 1, ed, es, "NOR"])


def frame_slices(image, gt, t):
    """What the reader should give for time index t: the original preprocessing of that frame."""
    acdc = np.zeros(gt.shape[:3], np.uint8)
    for stored, value in LABEL_MAP.items():
        acdc[gt[..., t] == stored] = value
    images, labels, _ = preprocess_frame(image[..., t].astype(np.float32), (SPACING, SPACING, THICKNESS), acdc,
                                         size=16, target=SPACING)
    return images, labels


def test_labels_are_remapped_to_acdc_on_reading_and_back(tmp_path):
    assert LABEL_MAP == {MNMS_LV: LV, MNMS_MYO: MYO, MNMS_RV: RV}
    assert INVERSE_LABEL_MAP == {LV: MNMS_LV, MYO: MNMS_MYO, RV: MNMS_RV}
    image, gt = write_patient(tmp_path, "AA1B2C", ed=1, es=3)
    write_csv(tmp_path, [("AA1B2C", "A", 1, 3)])
    [patient] = find_patients(tmp_path)
    out = read_patient(patient, size=16, spacing=SPACING)
    ed_labels = out["labels"][:SHAPE[2]]  # (S, H, W): ED's slices first, then ES'
    assert np.array_equal(np.moveaxis(ed_labels, 0, -1) == LV, gt[..., 1] == MNMS_LV)
    assert np.array_equal(np.moveaxis(ed_labels, 0, -1) == RV, gt[..., 1] == MNMS_RV)
    assert set(np.unique(out["labels"]).tolist()) == {BACKGROUND, RV, MYO, LV}
    assert np.array_equal(to_mnms_labels(np.moveaxis(ed_labels, 0, -1)), gt[..., 1])  # and back
    assert to_mnms_labels(np.array([BACKGROUND, RV, MYO, LV])).tolist() == [0, MNMS_RV, MNMS_MYO, MNMS_LV]
    with pytest.raises(DataError, match=r"labels \[4\] are not ACDC labels"):
        to_mnms_labels(np.array([0, 4]))


def test_ed_and_es_are_the_csv_s_0_based_time_indices_and_unlabelled_frames_are_the_others(tmp_path):
    image, gt = write_patient(tmp_path, "P1", frames=9, ed=2, es=5)
    write_patient(tmp_path, "U1", folder="Training/Unlabeled", frames=5, gt=None)
    write_csv(tmp_path, [("P1", "A", 2, 5), ("U1", "C", 0, 0)])
    labelled, unlabelled = find_patients(tmp_path)
    assert (labelled.code, labelled.ed, labelled.es, labelled.labelled) == ("P1", 2, 5, True)
    assert (unlabelled.code, unlabelled.labelled, unlabelled.folder) == ("U1", False, "Training/Unlabeled")
    out = read_patient(labelled, size=16, spacing=SPACING)
    for position, t in enumerate((2, 5)):  # ED's slices, then ES'
        images, labels = frame_slices(image, gt, t)
        part = slice(position * SHAPE[2], (position + 1) * SHAPE[2])
        np.testing.assert_allclose(out["images"][part, ..., 0], images, atol=1e-6)
        assert np.array_equal(out["labels"][part], labels)
    # 4 of the 7 other time points, evenly spaced; never ED (2) or ES (5)
    assert out["times"].tolist() == [0, 3, 6, 8]
    for position, t in enumerate(out["times"]):
        np.testing.assert_allclose(out["cine"][position * 3:(position + 1) * 3, ..., 0], frame_slices(image, gt, t)[0],
                                   atol=1e-6)
    other = read_patient(unlabelled, size=16, spacing=SPACING)
    assert set(other) == {"cine", "times"} and other["times"].tolist() == [0, 1, 3, 4]  # no ED/ES to leave out

    write_csv(tmp_path, [("P1", "A", 3, 5), ("U1", "C", 0, 0)])  # ED one later, as a 1-based reading would give
    with pytest.raises(DataError, match=r"P1_sa_gt.nii.gz: no labels at ED, time index 3 \(0-based"):
        read_patient(find_patients(tmp_path)[0], size=16, spacing=SPACING)


def test_each_bad_input_is_one_error_naming_the_file(tmp_path):
    with pytest.raises(DataError, match="no M&Ms images; expected"):
        find_patients(tmp_path)
    write_patient(tmp_path, "P1")
    with pytest.raises(DataError, match=r"no M&Ms CSV in the folder .*data.mnms_csv"):
        find_patients(tmp_path)
    write_csv(tmp_path, [("P2", "A", 1, 3)])
    with pytest.raises(DataError, match=r"P1_sa.nii.gz: no row for P1 in .*opendataset.csv"):
        find_patients(tmp_path)
    write_csv(tmp_path, [("P1", "A", "x", 3)])
    with pytest.raises(DataError, match=r"opendataset.csv:2: ED of P1 is 'x', expected a 0-based time index"):
        find_patients(tmp_path)
    write_csv(tmp_path, [("P1", "A", 6, 3)])  # 6 time points: 0-5
    with pytest.raises(DataError, match=r"P1_sa.nii.gz: ED is time index 6 \(0-based, from .*\), outside the "
                                        r"file's 6 time points 0-5"):
        read_patient(find_patients(tmp_path)[0])
    (tmp_path / "Training/Labeled/P1/P1_sa_gt.nii.gz").unlink()
    write_csv(tmp_path, [("P1", "A", 1, 3)])
    with pytest.raises(DataError, match=r"P1/P1_sa_gt.nii.gz: no such file; the labels of P1_sa.nii.gz"):
        find_patients(tmp_path)

    write_patient(tmp_path, "P1", gt="3d")
    with pytest.raises(DataError, match=r"P1_sa_gt.nii.gz: the label volume is 3-D with shape .*expected 4-D"):
        read_patient(find_patients(tmp_path)[0])
    image, _ = cine(6, 1, 3)
    save(image[..., 0], np.diag([-SPACING, -SPACING, THICKNESS, 1.0]), (SPACING, SPACING, THICKNESS),
         tmp_path / "Training/Labeled/P1/P1_sa.nii.gz", sform_code=1)
    with pytest.raises(DataError, match=r"P1_sa.nii.gz: the cine image .* is 3-D with shape .*expected 4-D"):
        read_patient(find_patients(tmp_path)[0])
    write_patient(tmp_path, "P1")
    write_csv(tmp_path, [("P1", "A", 2, 2)])
    with pytest.raises(DataError, match=r"opendataset.csv: P1 has ED = ES = 2, but .*P1_sa_gt.nii.gz holds"):
        find_patients(tmp_path)


@pytest.mark.parametrize("storage", ["flipped", "slice_first"])
def test_a_cine_stored_in_another_orientation_gives_the_same_slices(tmp_path, storage):
    write_patient(tmp_path / "plain", "P1", frames=5, ed=1, es=3)
    write_patient(tmp_path / storage, "P1", frames=5, ed=1, es=3, storage=storage)
    reference = None
    for root in (tmp_path / "plain", tmp_path / storage):
        write_csv(root, [("P1", "B", 1, 3)])
        out = read_patient(find_patients(root)[0], size=16, spacing=SPACING)
        if reference is None:
            reference = out
            continue
        stored = np.asarray(nib.load(str(root / "Training/Labeled/P1/P1_sa.nii.gz")).dataobj)
        plain = np.asarray(nib.load(str(tmp_path / "plain/Training/Labeled/P1/P1_sa.nii.gz")).dataobj)
        assert stored.shape == {"flipped": (16, 16, 3, 5), "slice_first": (3, 16, 16, 5)}[storage]
        assert stored.shape != plain.shape or not np.array_equal(stored, plain)  # really stored otherwise
        assert np.array_equal(out["labels"], reference["labels"])
        for kind in ("images", "cine"):
            np.testing.assert_allclose(out[kind], reference[kind], atol=1e-6)


def fake_patients(counts, unlabelled=()):
    """Patients (no files) with ``counts[vendor]`` labelled ones each, and unlabelled ``(code, vendor)``."""
    out = [Patient(f"{vendor}{i:02d}", None, f"{vendor}{i:02d}_gt", vendor, 0, 1, None)
           for vendor, n in counts.items() for i in range(n)]
    return out + [Patient(code, None, None, vendor, 0, 0, None) for code, vendor in unlabelled]


def test_splits_are_per_vendor_and_deterministic():
    patients = fake_patients({"A": 10, "B": 7, "C": 2, "D": 5}, unlabelled=[("U1", "C")])
    splits = vendor_splits(patients)
    assert splits == vendor_splits(patients) and splits != vendor_splits(patients, seed=1)
    assert splits[0] != splits[1] != splits[2]
    vendor = {p.code: p.vendor for p in patients}
    for s in splits:
        assert sorted(s["training"] + s["validation"] + s["test"]) == sorted(vendor)
        assert not set(s["training"]) & set(s["validation"]) and not set(s["test"]) & set(s["validation"] +
                                                                                          s["training"])
        for role, expected in (("validation", {"A": 2, "B": 1, "D": 1}), ("test", {"A": 2, "B": 1, "D": 1})):
            found = {v: sum(vendor[c] == v for c in s[role]) for v in "ABCD"}
            assert found == {**{"C": 0}, **expected}, (role, found)  # C: 2 labelled patients, all in training
        assert "U1" in s["training"] and {"C00", "C01"} <= set(s["training"])


def test_vendor_roles_follow_the_config_and_refuse_what_cannot_be():
    patients = fake_patients({"A": 3, "B": 3, "D": 3}, unlabelled=[("U1", "C")])
    assert vendor_roles(patients) == {"A": "labelled", "B": "labelled", "C": "unused", "D": "labelled"}
    assert vendor_roles(patients, ["A"], ["C"], ["D"]) == {"A": "labelled", "B": "unused", "C": "unlabelled",
                                                          "D": "test"}
    with pytest.raises(DataError, match=r"data.test_vendors: vendor 'E' is not in the cohort \(its vendors: A, B, C, D"):
        vendor_roles(patients, test_vendors=["E"])
    with pytest.raises(DataError, match="vendor 'A' is in both data.train_vendors and data.test_vendors"):
        vendor_roles(patients, ["A", "B"], test_vendors=["A"])
    with pytest.raises(DataError, match="vendor 'C' has no labelled patients"):
        vendor_roles(patients, ["C"])


def test_arrays_carry_each_slice_s_vendor_and_hold_the_test_vendor_out():
    patients = fake_patients({"A": 4, "B": 4, "C": 3, "D": 3})
    size = 8
    cohort = {}
    for number, p in enumerate(patients):
        labels = np.zeros((4, size, size), np.uint8)
        labels[:, 2:5, 2:5] = LV
        cohort[p.code] = {"images": np.full((4, size, size, 1), number / 100, np.float32), "labels": labels,
                          "cine": np.full((6, size, size, 1), number / 100, np.float32), "times": np.arange(2)}
    splits = vendor_splits(patients)
    arrays, description = mnms_arrays(cohort, patients, splits, 0, train_vendors=["A", "B"],
                                      unlabelled_vendors=["C"], test_vendors=["D"])
    arrays.check(size, 3)
    assert arrays.vendors == ("A", "B", "C", "D")
    assert set(arrays.labelled_vendors.tolist()) == {0, 1} == set(arrays.validation_vendors.tolist())
    assert set(arrays.unlabelled_vendors.tolist()) == {0, 1, 2}  # A, B and the unlabelled vendor C
    code_of = {round(number / 100, 4): p.code for number, p in enumerate(patients)}
    seen = {code_of[round(float(v), 4)] for name in ("labelled_images", "unlabelled_images", "validation_images")
            for v in np.unique(getattr(arrays, name))}
    assert not any(code.startswith("D") for code in seen)  # the held-out vendor is never seen in training
    assert description["held_out_patients"] == ["D00", "D01", "D02"] and description["held_out"] == 12
    assert description["per_vendor"]["C"] == {"role": "unlabelled", "labelled": 0, "validation": 0,
                                              "unlabelled": 6 * len([c for c in splits[0]["training"]
                                                                     if c.startswith("C")])}


def test_the_four_vendor_phantom_reads_back_with_its_vendors_and_labels(tmp_path):
    from sdnet_tf.config import load_config
    from sdnet_tf.data.phantom import mnms_patient_volumes, write_mnms_cohort
    from sdnet_tf.data.sources import mnms_phantom_folder

    write_mnms_cohort(tmp_path / "cohort", patients=4, seed=0)
    patients = find_patients(tmp_path / "cohort")
    assert [(p.vendor, p.folder) for p in patients] == [("A", "Training/Labeled"), ("B", "Training/Labeled"),
                                                        ("C", "Validation"), ("D", "Testing")]
    d = patients[3]
    _, gt, params, ed, es = mnms_patient_volumes(0, 4)
    assert (d.ed, d.es) == (ed, es) and ed == 1 and params["style"] == 3  # ED rotated off time index 0
    cohort, _ = preprocess_mnms(tmp_path / "cohort", tmp_path / "cache", size=64, progress=False, spacing=3.0)
    assert [p.name[:5] for p in (tmp_path / "cache").iterdir()] == ["mnms-"]
    assert all(len(cohort[p.code]["cine"]) == 4 * len(cohort[p.code]["images"]) // 2 for p in patients)
    for p in patients:  # every vendor's ED and ES hold the three structures, in ACDC's values
        assert set(np.unique(cohort[p.code]["labels"]).tolist()) == {BACKGROUND, RV, MYO, LV}, p.vendor
    # the LV (M&Ms 1) at ED becomes ACDC's LV: its area in mm^2 is kept through the resampling
    lv_mm2 = (gt[..., ed] == MNMS_LV).sum() * params["spacing"] ** 2
    ed_slices = cohort[d.code]["labels"][:params["slices"]]
    assert abs((ed_slices == LV).sum() * 9.0 - lv_mm2) < 0.05 * lv_mm2

    config = load_config("sdnet-mnms-phantom-quick", [f"data.cache_dir={tmp_path}"])
    (tmp_path / "phantom-mnms-v1-20-seed0").mkdir()
    (tmp_path / "phantom-mnms-v1-20-seed0" / "complete").write_text("ok\n")  # complete: nothing is generated
    assert mnms_phantom_folder(config).name == "phantom-mnms-v1-20-seed0"


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_a_csv_saved_with_semicolons_or_tabs_reads_as_the_comma_one(tmp_path, delimiter):
    from sdnet_tf.data.mnms import find_csv, read_csv

    write_csv(tmp_path, [("AA1B2C", "A", 1, 3), ("BB2C3D", "B", 0, 9)])
    expected = read_csv(tmp_path / CSV_NAME)
    text = (tmp_path / CSV_NAME).read_text()
    other = tmp_path / "other"
    other.mkdir()
    (other / CSV_NAME).write_text(text.replace(",", delimiter))
    assert find_csv(other) == other / CSV_NAME
    assert read_csv(other / CSV_NAME) == expected and expected["BB2C3D"].es == 9


def test_vendor_roles_on_another_dataset_are_refused_not_ignored():
    from sdnet_tf.config import load_config
    from sdnet_tf.data.sources import load_arrays

    config = load_config("sdnet-mnms-phantom-quick", ["data.dataset=acdc"])
    with pytest.raises(DataError, match=r"data.train_vendors, data.unlabelled_vendors, data.test_vendors set, but "
                                        r"data.dataset is 'acdc'"):
        load_arrays(config, progress=False)


def test_an_m_and_ms_folder_given_to_the_acdc_reader_points_to_train_mnms(tmp_path):
    from sdnet_tf.data.acdc import find_patients

    write_patient(tmp_path, "AA1B2C")
    with pytest.raises(DataError, match=r"no patientNNN folders found .*M&Ms-layout files .*sdnet-tf train mnms"):
        find_patients(tmp_path)
