"""Prediction geometry and the batch job: resampling equals scikit-image, labels go back exactly,
a bad file is reported while the others are written, inputs are never touched."""

import hashlib

import nibabel as nib
import numpy as np
import pytest

from sdnet_infer.predict import find_inputs, predict_files
from sdnet_tf.data.nifti import save_volume
from sdnet_tf.data.phantom import patient_volumes
from sdnet_tf.data.preprocess import SIZE, from_one_hot, one_hot, preprocess_frame, resample, resize_slice, \
    restore_labels


def test_resampling_equals_scikit_image(rng):
    transform = pytest.importorskip("skimage.transform")
    for _ in range(5):
        h, w = rng.integers(150, 260, 2)
        spacing = rng.uniform(0.7, 2.0, 2)
        scale = tuple(spacing / 1.37)
        volume = (rng.random((h, w, 2)) * 1000).astype(np.float32)
        labels = rng.integers(0, 4, (h, w, 2)).astype(np.float32)
        for order, data in ((1, volume), (0, labels)):
            ours = resample(data, spacing, order=order)
            theirs = np.stack([transform.rescale(data[..., k], scale, order=order, preserve_range=True,
                                                 mode="constant", anti_aliasing=False) for k in range(2)], -1)
            assert ours.shape == theirs.shape and np.array_equal(ours, theirs.astype(np.float32))
        small = rng.integers(0, 4, (90, 70)).astype(np.uint8)
        theirs = transform.resize(small, (h, w), order=0, preserve_range=True, anti_aliasing=False, mode="edge")
        assert np.array_equal(resize_slice(small, (h, w), order=0, mode="edge"), theirs.astype(np.uint8))


def _perfect_prediction(labels, spacing, size=SIZE):
    """The preprocessed labels, passed through one-hot probabilities as a model's output would be."""
    image = labels.astype(np.float32) + np.random.default_rng(0).random(labels.shape).astype(np.float32)
    _, slices, geometry = preprocess_frame(image, spacing, labels=labels, size=size)
    return restore_labels(from_one_hot(one_hot(slices)), geometry)


@pytest.mark.parametrize("shape", [(180, 200, 3), (260, 300, 3)], ids=["pad", "crop"])
def test_uncropping_returns_the_labels_exactly_at_the_target_spacing(shape):
    labels = np.zeros(shape, np.uint8)
    labels[40:150, 60:170] = 1
    labels[80:120, 90:140] = 2
    labels[90:110, 100:125] = 3
    labels[0, :] = 3  # a structure on the border, cut away by the crop
    restored = _perfect_prediction(labels, (1.37, 1.37))
    if shape[0] <= SIZE:
        assert np.array_equal(restored, labels)
    else:  # what the crop window saw comes back exactly; the rest is background
        top, left = (shape[0] - SIZE + 1) // 2, (shape[1] - SIZE + 1) // 2
        window = (slice(top, top + SIZE), slice(left, left + SIZE))
        assert np.array_equal(restored[window], labels[window])
        assert restored[0].max() == 0


def test_phantom_labels_round_trip_through_resampling():
    """Coarser than 1.37 mm (upsampled, then back): exact. Finer (downsampled): Dice >= 0.97."""
    _, labels, params, ed, _ = patient_volumes(seed=2, number=3)
    labels = labels[ed]
    for spacing in (1.6, 2.1):
        assert np.array_equal(_perfect_prediction(labels, (spacing, spacing)), labels), spacing
    restored = _perfect_prediction(labels, (1.0, 1.0))
    for value in (1, 2, 3):
        a, b = restored == value, labels == value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.97


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_batch_reports_a_bad_file_and_writes_the_others(tmp_path):
    folder = tmp_path / "images"
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        save_volume(rng.random((40, 44, 3)) * 500, affine, (5.0, 5.0, 10.0), folder / f"{name}.nii.gz")
    save_volume(rng.random((40, 44, 3)), affine, (5.0, 5.0, 10.0), folder / "a_gt.nii.gz")  # skipped: labels
    (folder / "broken.nii.gz").write_bytes(b"not a nifti file")
    save_volume(np.full((40, 44, 3), 7.0), affine, (5.0, 5.0, 10.0), folder / "sub" / "flat.nii.gz")
    before = {p: _digest(p) for p in folder.rglob("*.nii.gz")}

    def probabilities(slices):  # a stand-in model: LV where the image is bright
        bright = (slices[..., 0] > 0.5).astype(np.float32)
        return np.stack([np.zeros_like(bright), bright, np.zeros_like(bright)], -1)

    calls = []
    records = predict_files(folder, folder, probabilities, size=32, target=5.0,
                            report=lambda i, n, r: calls.append((i, n)))
    assert [c[1] for c in calls] == [4] * 4
    by_name = {r["input"].split("/")[-1]: r for r in records}
    assert set(by_name) == {"a.nii.gz", "b.nii.gz", "broken.nii.gz", "flat.nii.gz"}
    assert "broken.nii.gz: cannot read" in by_name["broken.nii.gz"]["error"]
    assert "constant intensities" in by_name["flat.nii.gz"]["error"]
    for name in ("a", "b"):
        out = nib.load(str(folder / f"{name}_pred.nii.gz"))
        assert by_name[f"{name}.nii.gz"]["error"] is None and out.shape == (40, 44, 3)
        assert out.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(out.dataobj))) <= {0, 3}
    assert {p: _digest(p) for p in before} == before  # inputs untouched
    assert (folder / "predictions.json").is_file()
    # a second run over the same folder does not take the predictions for inputs
    assert [p.name for p, _ in find_inputs(folder)] == ["a.nii.gz", "b.nii.gz", "broken.nii.gz", "flat.nii.gz"]
