"""Two-modality cohorts in the MM-WHS layout: MR and CT volumes with whole-heart labels.

MM-WHS (Zhuang et al., the multi-modality whole heart segmentation challenge; used by the
2019 SDNet paper, Sections 5.3-5.4, for training on MR and CT at once) ships a folder per
modality::

    ROOT/mr_train/mr_train_1001_image.nii.gz   ROOT/mr_train/mr_train_1001_label.nii.gz
    ROOT/ct_train/ct_train_1001_image.nii.gz   ROOT/ct_train/ct_train_1001_label.nii.gz

(``.nii`` files too). Label values: 205 myocardium, 500 LV blood pool, 600 RV blood pool; the
others (420 and 421 left atrium, 550 right atrium, 820 ascending aorta, 850 pulmonary artery) become
background, as SDNet's masks hold [MYO, LV, RV] only (``LABEL_MAP``, to ACDC's values).

Every volume goes through the project's one NIfTI reader (voxel size and orientation from
the header, checked; an uninterpretable file is a ``DataError`` naming it) and the original
preprocessing (in-plane resampling to ``data.spacing``, crop or pad, 5-95th percentile
intensity normalisation per volume). Volumes are cut into **axial** slices (``slicing="axial"``
of ``sdnet_infer.geometry``: the axis nearest head-foot, whatever the voxel sizes). CT is
acquired axially and its voxels are nearly isotropic; MM-WHS' MR volumes are stored in several
orientations, some with a thicker through-plane axis that the default rule would slice along.
Cutting both axially gives the two modalities one view of the heart, so one anatomy factor
can describe both. Of each volume the slices that hold MYO, LV or RV are kept (the others show
no structure SDNet segments).

Each slice keeps its modality: ``MODALITIES`` index 0 (MR) or 1 (CT), carried in
``SDNetArrays``' ``*_modalities`` arrays. Splits are by case number, the same for both
modalities (70/15/15, three seeded random splits, ``acdc.make_splits``), so a phantom patient
rendered in both modalities is never on both sides.

Data code: numpy, nibabel and scipy only.
"""

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sdnet_infer.labels import LV, MYO, RV
from sdnet_tf.data.acdc import MAX_UNLABELLED, cohort_arrays, make_splits
from sdnet_tf.data.arrays import DataError, SDNetArrays, read_npz, save_npz, unpack_npz
from sdnet_tf.data.nifti import load_labels, read_volume
from sdnet_tf.data.preprocess import SIZE, TARGET_SPACING, preprocess_frame

log = logging.getLogger("sdnet_tf.data")

MODALITIES = ("mr", "ct")  # a slice's modality label is its index here
CACHE_VERSION = 1
SLICING = "axial"
# MM-WHS label values -> ACDC's (the project's label table): MYO, LV, RV kept, the rest background
# 421: a left-atrium value some of MM-WHS' MR label files carry beside 420 (public readers map
# it with 420)
LABEL_MAP = {205: MYO, 500: LV, 600: RV, 420: 0, 421: 0, 550: 0, 820: 0, 850: 0}
LAYOUT = ("mr_train/mr_train_<N>_image.nii.gz with mr_train/mr_train_<N>_label.nii.gz, and "
          "ct_train/ct_train_<N>_image.nii.gz with ct_train/ct_train_<N>_label.nii.gz (.nii or .nii.gz)")
_IMAGE = re.compile(r"(mr|ct)_train_(\d+)_image\.nii(\.gz)?")
_LABEL = re.compile(r"(mr|ct)_train_(\d+)_label\.nii(\.gz)?")


@dataclass(frozen=True)
class Case:
    """One MM-WHS volume and its label file."""

    modality: str
    number: int
    image: Path
    labels: Path

    @property
    def name(self):
        return f"{self.modality}_train_{self.number}"


def find_cases(root):
    """The cases of an MM-WHS-layout folder, MR first, each sorted by number.

    Raises:
        DataError: ``root`` is not a folder; it holds no ``mr_train/`` and ``ct_train/``
            folders with image files (one message naming the expected layout); an image
            without its label file or a label file without its image (naming the file).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder (expected an MM-WHS-layout folder: {LAYOUT})")
    cases = []
    missing = []
    for modality in MODALITIES:
        folder = root / f"{modality}_train"
        images = {}
        labels = {}
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                for pattern, found in ((_IMAGE, images), (_LABEL, labels)):
                    match = pattern.fullmatch(path.name)
                    if match and match.group(1) == modality:
                        found[int(match.group(2))] = path
        if not images:
            missing.append(f"{modality}_train/")
            continue
        for number in sorted(set(images) | set(labels)):
            if number not in labels:
                raise DataError(f"{images[number]}: no label file {modality}_train_{number}_label.nii.gz beside it")
            if number not in images:
                raise DataError(f"{labels[number]}: no image file {modality}_train_{number}_image.nii.gz beside it")
            cases.append(Case(modality, number, images[number], labels[number]))
    if missing:
        raise DataError(f"{root}: no MM-WHS images in {' or '.join(missing)}; expected {LAYOUT}")
    return cases


def read_case(case, size=SIZE, spacing=TARGET_SPACING):
    """One case preprocessed: (images (S, size, size) float32 in [-1, 1], labels (S, size, size)
    uint8 in ACDC's values) of its axial slices that hold MYO, LV or RV.

    Raises:
        DataError: naming the file: unreadable, a geometry that cannot be interpreted, a label
            volume off the image's grid or with values outside ``LABEL_MAP``, or no slice with
            MYO, LV or RV.
    """
    volume = read_volume(case.image, slicing=SLICING)
    labels, _, _ = load_labels(case.labels, volume.data.shape, like=volume.geometry, label_map=LABEL_MAP,
                               slicing=SLICING)
    images, masks, _ = preprocess_frame(volume.data, volume.zooms, labels, size=size, target=spacing,
                                        source=str(case.image))
    keep = masks.reshape(len(masks), -1).any(axis=1)
    if not keep.any():
        raise DataError(f"{case.labels}: no axial slice holds myocardium, LV or RV (labels 205, 500, 600)")
    return images[keep], masks[keep]


def _fingerprint(cases, size, spacing):
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": CACHE_VERSION, "size": size, "spacing": spacing, "slicing": SLICING,
                              "labels": sorted(LABEL_MAP.items())}).encode())
    for case in cases:
        for path in (case.image, case.labels):
            stat = path.stat()
            digest.update(f"{case.modality}/{path.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return digest.hexdigest()[:16]


def preprocess_mmwhs(root, cache_dir=None, size=SIZE, progress=True, spacing=TARGET_SPACING):
    """Preprocess every case once: ``({modality: {number: {"images", "labels"}}}, cases)``.

    Images are (S, size, size, 1) float32, labels (S, size, size) uint8 (ACDC values). The result
    is cached in ``cache_dir`` as ``mmwhs-<key>.npz``, keyed by the files' names, sizes and times
    and the preprocessing settings (a different prefix and key from ACDC-layout cohorts, so
    neither is read as the other).
    """
    cases = find_cases(root)
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"mmwhs-{_fingerprint(cases, size, spacing)}.npz"
        if cache_path.is_file():
            return unpack_npz(read_npz(cache_path, "delete it to preprocess the cohort again"), str, int), cases
    packed = {}
    for case in tqdm(cases, desc="preprocessing", unit="volume", disable=not progress):
        images, labels = read_case(case, size, spacing)
        packed[f"{case.modality}/{case.number}/images"] = images[..., None]
        packed[f"{case.modality}/{case.number}/labels"] = labels
    if cache_path is not None:
        save_npz(cache_path, packed)
    return unpack_npz(packed, str, int), cases



def mmwhs_splits(cases, seed=0):
    """Three 70/15/15 splits of the case numbers, shared by both modalities."""
    return make_splits(sorted({case.number for case in cases}), seed=seed)


def _modality_split(splits, numbers):
    """``splits`` restricted to the case numbers one modality has."""
    present = set(numbers)
    return [{role: [n for n in s[role] if n in present] for role in s} for s in splits]


def multimodal_arrays(cohort, splits, split=0, labelled_fraction=1.0, seed=1, max_unlabelled=MAX_UNLABELLED):
    """``SDNetArrays`` of both modalities for one split, with every slice's modality, and a description.

    Per modality, as for ACDC (``acdc.split_plan``): whole training cases chosen for labels at
    ``labelled_fraction``, the slices of the others (all training cases at 100%) unlabelled, at
    most ``max_unlabelled / 2`` of them per modality; real masks for the discriminator from
    every training case. The modalities' arrays are concatenated, MR first.

    Raises:
        DataError: a modality has no training or no validation case in this split.
    """
    parts, description = [], {"modalities": list(MODALITIES), "per_modality": {}}
    for index, modality in enumerate(MODALITIES):
        own = _modality_split(splits, cohort.get(modality, {}))
        for role in ("training", "validation"):
            if not own[split][role]:
                raise DataError(f"split {split}: no {modality.upper()} case among the {role} cases "
                                f"{splits[split][role]}; each modality needs {role} cases")
        arrays, own_description = cohort_arrays(cohort[modality], own, split, labelled_fraction, seed,
                                                max_unlabelled // len(MODALITIES))
        parts.append((index, arrays))
        description["per_modality"][modality] = {"labelled_cases": own_description["labelled_patients"],
                                                 **arrays.counts()}

    def join(name):
        return np.concatenate([getattr(a, name) for _, a in parts])

    def labels(name):
        return np.concatenate([np.full(len(getattr(a, name)), i, np.int64) for i, a in parts])

    arrays = SDNetArrays(
        labelled_images=join("labelled_images"), labelled_masks=join("labelled_masks"),
        unlabelled_images=join("unlabelled_images"), real_masks=join("real_masks"),
        validation_images=join("validation_images"), validation_masks=join("validation_masks"),
        source=f"split {split}", modalities=MODALITIES, labelled_modalities=labels("labelled_images"),
        unlabelled_modalities=labels("unlabelled_images"), validation_modalities=labels("validation_images"))
    description.update({"split": split, "labelled_fraction": labelled_fraction, "splits": splits,
                        "slicing": SLICING, **arrays.counts()})
    return arrays, description


def load_mmwhs(root, split=0, labelled_fraction=1.0, seed=1, cache_dir=None, size=SIZE, progress=True,
               spacing=TARGET_SPACING):
    """Preprocess (or load from cache) an MM-WHS-layout folder and assemble one split's arrays."""
    start = time.perf_counter()
    cohort, cases = preprocess_mmwhs(root, cache_dir, size, progress, spacing=spacing)
    arrays, description = multimodal_arrays(cohort, mmwhs_splits(cases), split, labelled_fraction, seed)
    description["seconds"] = round(time.perf_counter() - start, 2)
    return arrays, description
