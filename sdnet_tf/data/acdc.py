"""ACDC-layout cohorts: patients, Info.cfg, ED/ES frames, optional _4d cine, splits, arrays.

Works on the real ACDC training folder and on the built-in phantom cohort, which is written in
the same layout.
"""

import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sdnet_tf.data.arrays import DataError, SDNetArrays, read_npz, save_npz, unpack_npz
from sdnet_tf.data.nifti import load_labels, load_volume, read_volume
from sdnet_tf.data.preprocess import SIZE, TARGET_SPACING, one_hot, preprocess_frame

log = logging.getLogger("sdnet_tf.data")

CACHE_VERSION = 2  # 2: volumes read by the geometry reader (voxel size rule, training orientation)
MAX_UNLABELLED = 1200  # the original caps unlabelled images near the number of labelled ACDC images

# The original's three fixed ACDC splits of the 100 training patients (70 / 15 / 15).
ACDC_SPLITS = [
    {"validation": list(range(1, 16)), "test": list(range(16, 31)), "training": list(range(31, 101))},
    {"validation": [85, 13, 9, 74, 73, 68, 59, 79, 47, 80, 14, 95, 25, 92, 87],
     "test": [54, 55, 99, 63, 91, 24, 51, 3, 64, 43, 61, 66, 96, 27, 76],
     "training": [46, 57, 49, 34, 17, 8, 19, 28, 97, 1, 90, 22, 88, 45, 12, 4, 5, 75, 53, 94, 62, 86, 35, 58, 82,
                  37, 84, 93, 6, 33, 15, 81, 23, 48, 71, 70, 11, 77, 36, 60, 31, 65, 32, 78, 98, 52, 100, 42, 38,
                  2, 20, 69, 26, 18, 40, 50, 16, 7, 41, 10, 83, 21, 39, 72, 56, 67, 44, 30, 89, 29]},
    {"validation": list(range(47, 62)), "test": list(range(64, 79)),
     "training": list(range(30, 47)) + [100] + list(range(1, 15)) + [62, 63] + list(range(15, 30))
     + list(range(79, 100))},
]


@dataclass
class Patient:
    """One ACDC patient folder."""

    number: int
    folder: Path
    ed: int
    es: int
    group: str = ""
    info: dict = field(default_factory=dict)

    @property
    def name(self):
        return self.folder.name

    def frame(self, index):
        return self.folder / f"{self.name}_frame{index:02d}.nii.gz"

    def labels(self, index):
        return self.folder / f"{self.name}_frame{index:02d}_gt.nii.gz"

    @property
    def cine(self):
        path = self.folder / f"{self.name}_4d.nii.gz"
        return path if path.is_file() else None


def read_info(path):
    """Parse ``Info.cfg`` (``key: value`` lines) into a dict; ED and ES become ints."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing Info.cfg")
    info = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if ":" not in line:
            raise DataError(f"{path}:{number}: expected 'key: value', got {line!r}")
        key, value = line.split(":", 1)
        info[key.strip()] = value.strip()
    for key in ("ED", "ES"):
        if key not in info:
            raise DataError(f"{path}: no {key} frame given")
        try:
            info[key] = int(float(info[key]))
        except ValueError as error:
            raise DataError(f"{path}: {key} is {info[key]!r}, expected a frame number") from error
    return info


def _has_patients(folder):
    return folder.is_dir() and any(re.fullmatch(r"patient\d+", p.name) and p.is_dir() for p in folder.iterdir())


def training_folder(root):
    """The folder holding the ``patientNNN`` folders: ``root`` itself, or, for a folder above it,
    ``root/training`` or ``root/database/training`` (the ACDC download's layout), with a message
    naming the folder found."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder")
    if _has_patients(root):
        return root
    for below in (root / "training", root / "database" / "training"):
        if _has_patients(below):
            log.info("%s holds no patientNNN folders; using %s", root, below)
            return below
    return root


def find_patients(root, strict=True):
    """The ``patientNNN`` folders of ``root``, checked for Info.cfg and their ED/ES files.

    ``root`` may also be the folder above ``training/`` (see ``training_folder``). With
    ``strict`` a broken patient raises ``DataError``; otherwise it is skipped with a warning
    naming the problem.
    """
    root = training_folder(root)
    patients = []
    for folder in sorted(root.iterdir()):
        match = re.fullmatch(r"patient(\d+)", folder.name)
        if not match or not folder.is_dir():
            continue
        try:
            info = read_info(folder / "Info.cfg")
            patient = Patient(int(match.group(1)), folder, info["ED"], info["ES"], info.get("Group", ""), info)
            for index in (patient.ed, patient.es):
                for path in (patient.frame(index), patient.labels(index)):
                    if not path.is_file():
                        raise DataError(f"{path}: frame {index} named in Info.cfg is not there")
        except DataError as error:
            if strict:
                raise
            log.warning("skipping %s: %s", folder.name, error)
            continue
        patients.append(patient)
    if not patients:
        raise DataError(f"{root}: no patientNNN folders found (expected the ACDC training layout){_layout_hint(root)}")
    return patients


def _layout_hint(root):
    """A pointer to the command of another layout the folder holds, or ""."""
    if next(root.rglob("*_sa.nii*"), None) is not None:
        return "; it holds M&Ms-layout files (<code>_sa.nii.gz): sdnet-tf train mnms --data " + str(root)
    if (root / "mr_train").is_dir() or (root / "ct_train").is_dir():
        return "; it holds an MM-WHS layout (mr_train/, ct_train/): sdnet-tf train mmwhs --data " + str(root)
    return ""


def make_splits(numbers, seed=0, fractions=(0.7, 0.15, 0.15), strata=None):
    """Three 70/15/15 patient splits; the original's fixed lists for the 100 ACDC patients.

    Other cohorts are split at random per split, stratified when ``strata`` maps each patient
    number to a category: validation and test patients are dealt from the categories in turn,
    so each held-out set covers as many categories as its size allows.
    """
    numbers = sorted(numbers)
    if numbers == list(range(1, 101)):
        return [dict(s) for s in ACDC_SPLITS]
    splits = []
    n = len(numbers)
    n_val = max(1, round(fractions[1] * n))
    n_test = max(1, round(fractions[2] * n))
    if n - n_val - n_test < 1:
        raise DataError(f"{n} patients are too few for training / validation / test splits")
    for k in range(3):
        rng = np.random.default_rng([seed, k])
        order = [int(v) for v in rng.permutation(numbers)]
        if strata:
            groups = {}
            for number in order:
                groups.setdefault(strata.get(number, ""), []).append(number)
            queues = [groups[key] for key in rng.permutation(sorted(groups))]
            order = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]
        splits.append({"validation": sorted(order[:n_val]),
                       "test": sorted(order[n_val:n_val + n_test]),
                       "training": sorted(order[n_val + n_test:])})
    return splits


def patient_strata(patients):
    """The category to stratify splits by: the scanner style where Info.cfg names one (the
    phantom cohort), else the pathology group."""
    return {p.number: str(p.info.get("Style", p.group)) for p in patients}


def patient_splits(patients):
    """``make_splits`` for found patients, stratified by ``patient_strata``."""
    return make_splits([p.number for p in patients], strata=patient_strata(patients))


def labelled_subset(training, fraction, seed=1):
    """Whole subjects chosen for labels: ``max(1, int(fraction * n))`` of the training split."""
    if not 0 < fraction <= 1:
        raise DataError(f"labelled fraction {fraction} must be in (0, 1]")
    count = max(1, int(fraction * len(training)))
    chosen = np.random.default_rng(seed).choice(sorted(training), size=count, replace=False)
    return sorted(int(v) for v in chosen)


def _frame_slices(patient, index, with_labels=True, size=SIZE, spacing=TARGET_SPACING):
    image_path = patient.frame(index)
    volume = read_volume(image_path)  # in the training orientation, voxel size in mm
    image, zooms = volume.data, volume.zooms
    labels = None
    if with_labels:
        labels, _, _ = load_labels(patient.labels(index), image.shape, like=volume.geometry)
    images, masks, _ = preprocess_frame(image, zooms, labels, size=size, target=spacing, source=str(image_path))
    return images, masks


def _cine_slices(patient, size=SIZE, spacing=TARGET_SPACING):
    path = patient.cine
    cine, zooms, _ = load_volume(path, ndim=(4,), kind="cine")
    out = []
    for t in range(cine.shape[-1]):
        if t + 1 in (patient.ed, patient.es):
            continue
        frame = cine[..., t]
        if not frame.any():
            continue  # blank frames are skipped, as the original does
        images, _, _ = preprocess_frame(frame, zooms[:3], size=size, target=spacing, source=f"{path} frame {t + 1}")
        out.append(images)
    return out


def _fingerprint(patients, size, spacing):
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": CACHE_VERSION, "size": size, "spacing": spacing}).encode())
    for p in patients:
        for path in sorted(p.folder.glob("*")):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return digest.hexdigest()[:16]


def preprocess_cohort(root, cache_dir=None, size=SIZE, progress=True, strict=True, spacing=TARGET_SPACING):
    """Preprocess every patient once: {number: {"images", "masks", "cine"}} arrays.

    The result is cached in ``cache_dir`` (an ``.npz`` keyed by the files' names, sizes and
    times and by the preprocessing settings), so a second call only loads it.
    """
    patients = find_patients(root, strict=strict)
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"acdc-{_fingerprint(patients, size, spacing)}.npz"
        if cache_path.is_file():
            return unpack_npz(read_npz(cache_path, "delete it to preprocess the cohort again"), int), patients
    packed = {}
    bar = tqdm(patients, desc="preprocessing", unit="patient", disable=not progress)
    for p in bar:
        images, labels = [], []
        for index in (p.ed, p.es):
            im, lab = _frame_slices(p, index, size=size, spacing=spacing)
            images.append(im)
            labels.append(lab)
        packed[f"{p.number}/images"] = np.concatenate(images)[..., None]
        packed[f"{p.number}/labels"] = np.concatenate(labels)
        if p.cine is not None:
            cine = _cine_slices(p, size, spacing)
            if cine:
                packed[f"{p.number}/cine"] = np.concatenate(cine)[..., None]
    if cache_path is not None:
        save_npz(cache_path, packed)
    return unpack_npz(packed, int), patients



def split_plan(cohort, splits, split=0, labelled_fraction=1.0, seed=1, max_unlabelled=MAX_UNLABELLED):
    """Which slices one split and labelled fraction use, without building any array.

    Labelled images: every ED/ES slice of the labelled subjects. Unlabelled images: the cine
    frames other than ED and ES of the training patients when ``_4d`` files exist; otherwise
    the ED/ES slices of the training patients whose labels are withheld (all training patients
    at 100% labels). At most ``max_unlabelled`` are kept, spread evenly over the volumes. Real
    masks for the discriminator come from the whole training split.

    Returns a dict with the patients of each role, the unlabelled slices as
    ``[(patient, kind, indices)]``, a description of their source and the image counts.
    """
    s = splits[split]
    training = list(s["training"])
    labelled = labelled_subset(training, labelled_fraction, seed)
    if any("cine" in cohort[n] for n in training):
        kind, sources = "cine", [n for n in training if "cine" in cohort[n]]
        source = "cine frames other than ED/ES (_4d files)"
    else:
        withheld = [n for n in training if n not in labelled]
        kind, sources = "images", withheld or training
        source = ("ED/ES slices of training patients without labels" if withheld
                  else "ED/ES slices of all training patients")
    sizes = [len(cohort[n][kind]) for n in sources]
    unlabelled = [(n, kind, np.arange(size)) for n, size in zip(sources, sizes)]
    if sum(sizes) > max_unlabelled:
        per_volume = math.ceil(max_unlabelled / len(sources))
        rng = np.random.default_rng(seed)
        unlabelled = [(n, kind, np.sort(rng.choice(size, size=min(per_volume, size), replace=False)))
                      for n, size in zip(sources, sizes)]

    def slices(patients):
        return sum(len(cohort[n]["images"]) for n in patients)

    counts = {"labelled": slices(labelled), "unlabelled": sum(len(i) for _, _, i in unlabelled),
              "real_masks": slices(training), "validation": slices(s["validation"]), "test": slices(s["test"])}
    return {"split": split, "labelled_fraction": labelled_fraction, "labelled_patients": labelled,
            "training": training, "validation_patients": list(s["validation"]), "unlabelled": unlabelled,
            "unlabelled_source": source, "counts": counts}


def cohort_arrays(cohort, splits, split=0, labelled_fraction=1.0, seed=1, max_unlabelled=MAX_UNLABELLED):
    """``SDNetArrays`` for one split and labelled fraction (see ``split_plan``), and a description."""
    plan = split_plan(cohort, splits, split, labelled_fraction, seed, max_unlabelled)

    def stack(patients, kind):
        return np.concatenate([cohort[n][kind] for n in patients])

    arrays = SDNetArrays(
        labelled_images=stack(plan["labelled_patients"], "images"),
        labelled_masks=one_hot(stack(plan["labelled_patients"], "labels")),
        unlabelled_images=np.concatenate([cohort[n][kind][index] for n, kind, index in plan["unlabelled"]]),
        real_masks=one_hot(stack(plan["training"], "labels")),
        validation_images=stack(plan["validation_patients"], "images"),
        validation_masks=one_hot(stack(plan["validation_patients"], "labels")),
        source=f"split {split}")
    description = {"split": split, "labelled_fraction": labelled_fraction,
                   "labelled_patients": plan["labelled_patients"], "unlabelled_source": plan["unlabelled_source"],
                   "splits": splits, **arrays.counts()}
    return arrays, description


def load_acdc(root, split=0, labelled_fraction=1.0, seed=1, cache_dir=None, size=SIZE, progress=True,
              spacing=TARGET_SPACING):
    """Preprocess (or load from cache) an ACDC-layout folder and assemble one split's arrays."""
    start = time.perf_counter()
    cohort, patients = preprocess_cohort(root, cache_dir, size, progress, spacing=spacing)
    splits = patient_splits(patients)
    arrays, description = cohort_arrays(cohort, splits, split, labelled_fraction, seed)
    description["seconds"] = round(time.perf_counter() - start, 2)
    return arrays, description
