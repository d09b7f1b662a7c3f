"""Multi-vendor cohorts in the M&Ms layout: 4-D cine with ED/ES labels, the challenge's CSV,
splits stratified by vendor, and the vendors' roles.

M&Ms (Campello et al., the Multi-Centre, Multi-Vendor & Multi-Disease Cardiac Image
Segmentation challenge, STACOM 2020; the cohort of Liu et al., "Disentangled Representations
for Domain-generalized Cardiac Segmentation", STACOM 2020, xxxliu95/RA_FA_Cardiac) ships::

    ROOT/211230_M&Ms_Dataset_information_diagnosis_opendataset.csv
    ROOT/Training/Labeled/<code>/<code>_sa.nii.gz      ROOT/Training/Labeled/<code>/<code>_sa_gt.nii.gz
    ROOT/Training/Unlabeled/<code>/<code>_sa.nii.gz    (no labels)
    ROOT/Validation/<code>/...                         ROOT/Testing/<code>/...

(``.nii`` files too; any depth below ``Training/``, ``Validation/`` and ``Testing/``). Both
files are 4-D, H x W x slices x time; the labels are 4-D as well, on the image's grid, with
only the ED and ES time points labelled (every public reader takes ``gt[..., ED]`` and
``gt[..., ES]``). A 3-D label file is refused: the challenge ships none (the per-phase 3-D
files are M&Ms-2's layout, not read here). The CSV has a row per patient with the columns
``External code``, ``Vendor`` (A-D), ``ED`` and ``ES`` (0-based time indices), and
``VendorName`` and ``Centre``, read when present; ``data.mnms_csv`` names it, by default the
one CSV in ROOT with those columns.

Label values are M&Ms' (1 LV, 2 MYO, 3 RV), remapped on reading to the project's, ACDC's (1
RV, 2 MYO, 3 LV: ``LABEL_MAP``, ``sdnet_infer.io.parse_label_map("mnms")``), and back by
``to_mnms_labels`` for anything written in M&Ms' convention.

Every volume goes through the project's one NIfTI reader (voxel size and orientation from the
header, checked, brought into the training orientation; an uninterpretable file is a
``DataError`` naming it) and the original preprocessing per 3-D frame (in-plane resampling to
``data.spacing``, crop or pad, 5-95th percentile normalisation). Of each labelled patient the ED
and ES frames are the labelled images; at most ``UNLABELLED_FRAMES`` (4) other time points,
evenly spaced over the cycle and never ED or ES, give its unlabelled images (a patient in
``Training/Unlabeled``, without labels, gives unlabelled images only, chosen among all its
time points). Blank frames are skipped.

Splits (``vendor_splits``): three seeded 70/15/15 splits of each vendor's labelled patients
separately, so every vendor with at least 3 labelled patients has validation and test patients
in every split (fewer: all in training). The challenge's own Training / Validation / Testing
folders are read alike: its training folder holds no vendor D, and the leave-one-vendor-out
experiment needs every vendor's patients. Each vendor then plays one role
(``vendor_roles``): labelled (``data.train_vendors``; its training patients labelled at
``labelled_fraction``, whole patients per vendor), unlabelled (``data.unlabelled_vendors``; its
training patients give unlabelled frames only), held out for testing (``data.test_vendors``;
all its patients are test patients, none is seen in training), or unused.

Each slice keeps its vendor: an index into ``SDNetArrays.vendors`` in the ``*_vendors``
arrays.

Data code: numpy, nibabel and scipy only.
"""

import csv
import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sdnet_infer.io import labels_in_convention
from sdnet_tf.data.acdc import MAX_UNLABELLED
from sdnet_tf.data.arrays import DataError, SDNetArrays, read_npz, save_npz, unpack_npz
from sdnet_tf.data.nifti import load_labels, parse_label_map, read_volume
from sdnet_tf.data.preprocess import SIZE, TARGET_SPACING, one_hot, preprocess_frame

log = logging.getLogger("sdnet_tf.data")

CACHE_VERSION = 1
UNLABELLED_FRAMES = 4  # time points other than ED and ES read per patient for the unlabelled pool
LABEL_MAP = parse_label_map("mnms")  # {M&Ms label: ACDC label}
INVERSE_LABEL_MAP = {acdc: stored for stored, acdc in LABEL_MAP.items()}  # {ACDC label: M&Ms label}
CHALLENGE_FOLDERS = ("Training", "Validation", "Testing")
UNLABELLED_FOLDERS = ("unlabeled", "unlabelled")  # a patient below one of these needs no labels
REQUIRED_COLUMNS = ("External code", "Vendor", "ED", "ES")
LAYOUT = ("<Training|Validation|Testing>/.../<code>/<code>_sa.nii.gz with <code>_sa_gt.nii.gz beside it "
          "(none needed below Training/Unlabeled), and the challenge's CSV")
_IMAGE = re.compile(r"(.+)_sa\.nii(\.gz)?")


def to_mnms_labels(labels):
    """ACDC label values (0 background, 1 RV, 2 MYO, 3 LV) -> M&Ms' (1 LV, 2 MYO, 3 RV), any shape
    (``sdnet_infer.io.labels_in_convention(labels, "mnms")``).

    Raises:
        DataError: a value that is not an ACDC label.
    """
    return labels_in_convention(labels, "mnms")


# ------------------------------------------------------------------------------ the CSV
@dataclass(frozen=True)
class CsvRow:
    """One patient's row of the challenge's CSV; ``ed`` and ``es`` are 0-based time indices."""

    code: str
    vendor: str
    ed: int
    es: int
    vendor_name: str = ""
    centre: str = ""


def _csv_rows(path):
    """The rows of a CSV whose cells are separated by commas, semicolons (a spreadsheet saved
    in a locale with decimal commas) or tabs, as its header line shows (``csv.Sniffer``)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        text = handle.read()
    first = text.split("\n", 1)[0]
    try:
        dialect = csv.Sniffer().sniff(first, delimiters=",;\t")
    except csv.Error:  # one column, or no separator the sniffer can tell: commas
        dialect = csv.excel
    return list(csv.reader(text.splitlines(), dialect))


def _is_mnms_csv(path):
    try:
        header = next(iter(_csv_rows(path)), [])
    except (OSError, UnicodeDecodeError):
        return False
    return all(column in [h.strip() for h in header] for column in REQUIRED_COLUMNS)


def find_csv(root, configured=""):
    """The challenge's CSV: ``configured`` (a path, or a name in ``root``) when given, else the
    one ``.csv`` in ``root`` with the columns ``REQUIRED_COLUMNS``.

    Raises:
        DataError: the configured file is not there; no such CSV in ``root``, or several.
    """
    root = Path(root)
    if configured:
        path = Path(configured).expanduser()
        if not path.is_absolute() and not path.is_file() and (root / path).is_file():
            path = root / path
        if not path.is_file():
            raise DataError(f"{path}: no such CSV (data.mnms_csv)")
        return path
    found = [p for p in sorted(root.glob("*.csv")) if _is_mnms_csv(p)]
    if not found:
        raise DataError(f"{root}: no M&Ms CSV in the folder (a .csv with the columns {', '.join(REQUIRED_COLUMNS)}, "
                        "as 211230_M&Ms_Dataset_information_diagnosis_opendataset.csv); name it with data.mnms_csv")
    if len(found) > 1:
        raise DataError(f"{root}: several M&Ms CSVs ({', '.join(p.name for p in found)}); name one with data.mnms_csv")
    return found[0]


def read_csv(path):
    """``{External code: CsvRow}`` of the challenge's CSV (a first unnamed index column is ignored;
    cells separated by commas, semicolons or tabs).

    Raises:
        DataError: naming the file (and line): a missing column, an empty code or vendor, an ED
            or ES that is not a non-negative whole number, a code given twice.
    """
    path = Path(path)
    try:
        rows = _csv_rows(path)
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the CSV ({error})") from error
    if not rows:
        raise DataError(f"{path}: empty CSV")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: no column {', '.join(repr(c) for c in missing)}; expected {', '.join(REQUIRED_COLUMNS)}")
    column = {name: header.index(name) for name in header}
    out = {}
    for number, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        values = {name: (row[i].strip() if i < len(row) else "") for name, i in column.items()}
        code, vendor = values["External code"], values["Vendor"]
        if not code or not vendor:
            raise DataError(f"{path}:{number}: an empty External code or Vendor")
        phases = {}
        for key in ("ED", "ES"):
            try:
                value = float(values[key])
            except ValueError:
                value = math.nan
            if not (value >= 0 and value == int(value)):
                raise DataError(f"{path}:{number}: {key} of {code} is {values[key]!r}, expected a 0-based time index")
            phases[key] = int(value)
        if code in out:
            raise DataError(f"{path}:{number}: {code} has a second row")
        out[code] = CsvRow(code, vendor, phases["ED"], phases["ES"], values.get("VendorName", ""),
                           values.get("Centre", ""))
    return out


# ------------------------------------------------------------------------------ patients
@dataclass(frozen=True)
class Patient:
    """One M&Ms patient: its 4-D image and labels (None below Training/Unlabeled) and its CSV row."""

    code: str
    image: Path
    gt: Path
    vendor: str
    ed: int
    es: int
    csv: Path
    folder: str = ""  # the challenge folder below the root, e.g. "Training/Labeled"
    centre: str = ""

    @property
    def labelled(self):
        return self.gt is not None


def _gt_path(image, code):
    suffix = ".nii.gz" if image.name.endswith(".nii.gz") else ".nii"
    return image.with_name(f"{code}_sa_gt{suffix}")


def _images(root):
    """``[(code, image path)]`` of every ``<code>_sa.nii[.gz]`` below ``root``'s challenge folders, sorted.

    Raises:
        DataError: ``root`` is not a folder, or holds no such image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder (expected the M&Ms layout: {LAYOUT})")
    images = []
    for top in CHALLENGE_FOLDERS:
        if (root / top).is_dir():
            images += [p for p in sorted((root / top).rglob("*_sa.nii*")) if _IMAGE.fullmatch(p.name)]
    if not images:
        raise DataError(f"{root}: no M&Ms images; expected {LAYOUT}")
    return [(_IMAGE.fullmatch(image.name).group(1), image) for image in images]


def _patient(root, code, image, rows, csv_path):
    """The ``Patient`` of one image, its CSV row and labels checked (see ``find_patients``)."""
    if code not in rows:
        raise DataError(f"{image}: no row for {code} in {csv_path}")
    row = rows[code]
    folder = image.parent.parent.relative_to(root).as_posix()
    gt = _gt_path(image, code)
    if not gt.is_file():
        if not any(part.lower() in UNLABELLED_FOLDERS for part in image.relative_to(root).parts):
            raise DataError(f"{gt}: no such file; the labels of {image.name} (only patients below "
                            "Training/Unlabeled go without)")
        gt = None
    elif row.ed == row.es:
        raise DataError(f"{csv_path}: {code} has ED = ES = {row.ed}, but {gt} holds its labels; "
                        "ED and ES must be two time points")
    return Patient(code, image, gt, row.vendor, row.ed, row.es, csv_path, folder, row.centre)


def find_patients(root, csv_path=""):
    """The patients of an M&Ms-layout folder, sorted by code, with their CSV rows.

    Raises:
        DataError: ``root`` is not a folder; no ``*_sa.nii.gz`` below its Training, Validation
            or Testing folders (one message naming the layout); naming the file: an image
            without a CSV row, an image outside ``Training/Unlabeled`` without its
            ``_sa_gt`` file, a labelled patient whose ED equals its ES, a code found twice;
            and the CSV's own errors (``find_csv``, ``read_csv``).
    """
    root = Path(root)
    images = _images(root)
    csv_path = find_csv(root, csv_path)
    rows = read_csv(csv_path)
    patients, seen = [], {}
    for code, image in images:
        if code in seen:
            raise DataError(f"{image}: patient {code} is also at {seen[code]}")
        seen[code] = image
        patients.append(_patient(root, code, image, rows, csv_path))
    return sorted(patients, key=lambda p: p.code)


def locate_patients(root, codes, csv_path=""):
    """Some patients of an M&Ms-layout folder, each checked on its own (a trained run's test
    patients, for scoring): a problem with one of them is that patient's error, and the rest
    of the cohort is not checked at all.

    Args:
        root: the M&Ms-layout folder.
        codes: the wanted External codes.
        csv_path: ``data.mnms_csv`` ("" : the one M&Ms CSV in ``root``).

    Returns:
        ``({code: Patient}, {code: one line naming the file})``: every code is in exactly one:
        the error of a code with no image below the challenge folders, two images, no CSV
        row, no ``_sa_gt`` file (outside ``Training/Unlabeled``) or ED equal to ES.

    Raises:
        DataError: what makes every patient unreadable: ``root`` missing or without M&Ms
            images, no CSV (or several), a CSV that cannot be read.
    """
    root = Path(root)
    images = _images(root)
    csv_path = find_csv(root, csv_path)
    rows = read_csv(csv_path)
    wanted = set(codes)
    found = {}
    for code, image in images:
        if code in wanted:
            found.setdefault(code, []).append(image)
    patients, errors = {}, {}
    for code in sorted(wanted):
        if code not in found:
            errors[code] = (f"{root}: no {code}_sa.nii.gz (or .nii) below {', '.join(CHALLENGE_FOLDERS)}; "
                            f"patient {code} is not there")
        elif len(found[code]) > 1:
            errors[code] = f"{found[code][1]}: patient {code} is also at {found[code][0]}"
        else:
            try:
                patients[code] = _patient(root, code, found[code][0], rows, csv_path)
            except DataError as error:
                errors[code] = str(error)
    return patients, errors


def _unlabelled_times(count, exclude, frames=UNLABELLED_FRAMES):
    """At most ``frames`` of ``range(count)`` outside ``exclude``, evenly spaced."""
    candidates = [t for t in range(count) if t not in exclude]
    if len(candidates) <= frames:
        return candidates
    return [candidates[i] for i in np.unique(np.round(np.linspace(0, len(candidates) - 1, frames)).astype(int))]


def read_patient(patient, size=SIZE, spacing=TARGET_SPACING, unlabelled_frames=UNLABELLED_FRAMES):
    """One patient preprocessed.

    Returns:
        ``{"images": (2S, size, size, 1) float32 in [-1, 1] (ED slices, then ES), "labels":
        (2S, size, size) uint8 in ACDC's values, "cine": (F S, size, size, 1), "times": the
        F time indices of "cine"}``; a patient without labels has "cine" and "times" only.

    Raises:
        DataError: naming the file: unreadable, not 4-D, a geometry that cannot be
            interpreted, labels off the image's grid or outside {0, 1, 2, 3}, an ED or ES
            index outside the file's time points, no labels at ED or ES.
    """
    volume = read_volume(patient.image, ndim=(4,), kind="cine image (H x W x slices x time)")
    data, zooms = volume.data, volume.zooms  # (H, W, S, T) in the training orientation, mm
    count = data.shape[-1]
    out = {}
    if patient.labelled:
        for name, index in (("ED", patient.ed), ("ES", patient.es)):
            if not 0 <= index < count:
                raise DataError(f"{patient.image}: {name} is time index {index} (0-based, from {patient.csv}), "
                                f"outside the file's {count} time points 0-{count - 1}")
        labels, _, _ = load_labels(patient.gt, data.shape, like=volume.geometry, label_map=LABEL_MAP, ndim=(4,))
        images, masks = [], []
        for name, index in (("ED", patient.ed), ("ES", patient.es)):
            if not labels[..., index].any():
                raise DataError(f"{patient.gt}: no labels at {name}, time index {index} (0-based, from "
                                f"{patient.csv}); M&Ms labels ED and ES only")
            im, lab, _ = preprocess_frame(data[..., index], zooms[:3], labels[..., index], size=size, target=spacing,
                                          source=f"{patient.image} time {index}")
            images.append(im)
            masks.append(lab)
        out["images"] = np.concatenate(images)[..., None]
        out["labels"] = np.concatenate(masks)
    exclude = (patient.ed, patient.es) if patient.labelled else ()
    cine, times = [], []
    for t in _unlabelled_times(count, exclude, unlabelled_frames):
        frame = data[..., t]
        if not frame.any():
            continue  # blank frames are skipped, as for ACDC's cine
        im, _, _ = preprocess_frame(frame, zooms[:3], size=size, target=spacing, source=f"{patient.image} time {t}")
        cine.append(im)
        times.append(t)
    out["cine"] = (np.concatenate(cine)[..., None] if cine else np.zeros((0, size, size, 1), np.float32))
    out["times"] = np.asarray(times, np.int64)
    return out


def _fingerprint(patients, size, spacing, unlabelled_frames):
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": CACHE_VERSION, "size": size, "spacing": spacing,
                              "frames": unlabelled_frames, "labels": sorted(LABEL_MAP.items())}).encode())
    files = {p.csv for p in patients}
    for p in patients:
        digest.update(f"{p.code}:{p.vendor}:{p.ed}:{p.es}".encode())
        files |= {p.image} | ({p.gt} if p.gt else set())
    for path in sorted(files):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return digest.hexdigest()[:16]


def preprocess_mnms(root, cache_dir=None, size=SIZE, progress=True, spacing=TARGET_SPACING, csv_path="",
                    unlabelled_frames=UNLABELLED_FRAMES):
    """Preprocess every patient once: ``({code: read_patient(...)}, patients)``.

    Cached in ``cache_dir`` as ``mnms-<key>.npz``, keyed by the files' names, sizes and times,
    the CSV rows used and the preprocessing settings.
    """
    patients = find_patients(root, csv_path)
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"mnms-{_fingerprint(patients, size, spacing, unlabelled_frames)}.npz"
        if cache_path.is_file():
            return unpack_npz(read_npz(cache_path, "delete it to preprocess the cohort again"), str), patients
    packed = {}
    for patient in tqdm(patients, desc="preprocessing", unit="patient", disable=not progress):
        for kind, value in read_patient(patient, size, spacing, unlabelled_frames).items():
            packed[f"{patient.code}/{kind}"] = value
    if cache_path is not None:
        save_npz(cache_path, packed)
    return unpack_npz(packed, str), patients



# ------------------------------------------------------------------------------ splits and roles
def _vendor_seed(vendor):
    return list(vendor.encode())


def vendor_splits(patients, seed=0, fractions=(0.7, 0.15, 0.15)):
    """Three splits ``[{"training", "validation", "test": [codes]}]``, each vendor's labelled
    patients split on their own.

    Per split k and vendor: its labelled patients in a permutation seeded by (seed, k, vendor),
    ``max(1, round(0.15 n))`` to validation, as many to test, the rest to training; a vendor
    with fewer than 3 labelled patients has them all in training. Patients without labels are
    in training in every split. Deterministic: the same patients give the same splits.
    """
    by_vendor = {}
    for p in patients:
        by_vendor.setdefault(p.vendor, []).append(p)
    splits = []
    for k in range(3):
        split = {"training": [], "validation": [], "test": []}
        for vendor, members in sorted(by_vendor.items()):
            codes = sorted(p.code for p in members if p.labelled)
            split["training"] += [p.code for p in members if not p.labelled]
            n = len(codes)
            n_val = max(1, round(fractions[1] * n)) if n >= 3 else 0
            n_test = max(1, round(fractions[2] * n)) if n >= 3 else 0
            order = [codes[i] for i in np.random.default_rng([seed, k, *_vendor_seed(vendor)]).permutation(n)]
            split["validation"] += order[:n_val]
            split["test"] += order[n_val:n_val + n_test]
            split["training"] += order[n_val + n_test:]
        splits.append({role: sorted(codes) for role, codes in split.items()})
    return splits


def vendor_roles(patients, train_vendors=(), unlabelled_vendors=(), test_vendors=()):
    """``{vendor: "labelled" | "unlabelled" | "test" | "unused"}`` for the cohort's vendors.

    ``train_vendors`` empty: every vendor with labelled patients not named in the other two.

    Raises:
        DataError: a vendor not in the cohort, a vendor named in two roles, no labelled vendor,
            a labelled or test vendor without labelled patients.
    """
    present = sorted({p.vendor for p in patients})
    with_labels = {p.vendor for p in patients if p.labelled}
    named = {"data.train_vendors": list(train_vendors), "data.unlabelled_vendors": list(unlabelled_vendors),
             "data.test_vendors": list(test_vendors)}
    for key, vendors in named.items():
        for vendor in vendors:
            if vendor not in present:
                raise DataError(f"{key}: vendor {vendor!r} is not in the cohort (its vendors: {', '.join(present)})")
    keys = list(named)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            both = sorted(set(named[a]) & set(named[b]))
            if both:
                raise DataError(f"vendor {both[0]!r} is in both {a} and {b}")
    labelled = list(train_vendors) or [v for v in present if v in with_labels and v not in unlabelled_vendors
                                       and v not in test_vendors]
    if not labelled:
        raise DataError("no vendor is left to give labelled training patients (data.train_vendors)")
    for vendor in list(labelled) + list(test_vendors):
        if vendor not in with_labels:
            raise DataError(f"vendor {vendor!r} has no labelled patients; it can only be in data.unlabelled_vendors")
    roles = {v: "unused" for v in present}
    roles.update({v: "labelled" for v in labelled})
    roles.update({v: "unlabelled" for v in unlabelled_vendors})
    roles.update({v: "test" for v in test_vendors})
    return roles


def _labelled_subset(codes_by_vendor, fraction, seed):
    """Whole patients chosen for labels per vendor: ``max(1, int(fraction * n))`` of each."""
    if not 0 < fraction <= 1:
        raise DataError(f"labelled fraction {fraction} must be in (0, 1]")
    chosen = []
    for vendor, codes in sorted(codes_by_vendor.items()):
        count = max(1, int(fraction * len(codes)))
        rng = np.random.default_rng([seed, *_vendor_seed(vendor)])
        chosen += [str(c) for c in rng.choice(sorted(codes), size=count, replace=False)]
    return sorted(chosen)


def mnms_plan(cohort, patients, splits, split=0, labelled_fraction=1.0, seed=1, max_unlabelled=MAX_UNLABELLED,
              train_vendors=(), unlabelled_vendors=(), test_vendors=()):
    """Which patients and slices one split uses, by vendor role (``vendor_roles``).

    Labelled images: the ED/ES slices of ``labelled_fraction`` of each labelled vendor's
    training patients. Unlabelled images: the "cine" frames (never ED or ES) of the training
    patients of the labelled and unlabelled vendors, at most ``max_unlabelled``, spread evenly
    over the volumes. Real masks for the discriminator: the ED/ES masks of every training
    patient of the labelled vendors. Validation: the labelled vendors' validation patients.
    Test: the labelled and unlabelled vendors' test patients ("test_patients") and every
    labelled patient of a held-out vendor ("held_out_patients").

    Raises:
        DataError: as ``vendor_roles``; no validation patient (every labelled vendor has fewer
            than 3 labelled patients) or no unlabelled frame.
    """
    roles = vendor_roles(patients, train_vendors, unlabelled_vendors, test_vendors)
    vendor_of = {p.code: p.vendor for p in patients}
    s = splits[split]

    def having(codes, *wanted):
        return [c for c in codes if roles[vendor_of[c]] in wanted]

    training = having(s["training"], "labelled")
    training = [c for c in training if "labels" in cohort[c]]
    by_vendor = {}
    for code in training:
        by_vendor.setdefault(vendor_of[code], []).append(code)
    labelled = _labelled_subset(by_vendor, labelled_fraction, seed)
    validation = having(s["validation"], "labelled")
    if not validation:
        raise DataError(f"split {split}: no validation patient; each labelled vendor needs at least 3 labelled "
                        "patients")
    sources = [c for c in having(s["training"], "labelled", "unlabelled") if len(cohort[c]["cine"])]
    if not sources:
        raise DataError(f"split {split}: no unlabelled frame among the training patients")
    sizes = [len(cohort[c]["cine"]) for c in sources]
    unlabelled = [(c, np.arange(n)) for c, n in zip(sources, sizes)]
    if sum(sizes) > max_unlabelled:
        per_volume = math.ceil(max_unlabelled / len(sources))
        rng = np.random.default_rng(seed)
        unlabelled = [(c, np.sort(rng.choice(n, size=min(per_volume, n), replace=False))) for c, n in zip(sources, sizes)]
    test = having(s["test"], "labelled", "unlabelled")
    held_out = sorted(p.code for p in patients if roles[p.vendor] == "test" and p.labelled)

    def slices(codes):
        return sum(len(cohort[c]["images"]) for c in codes)

    counts = {"labelled": slices(labelled), "unlabelled": sum(len(i) for _, i in unlabelled),
              "real_masks": slices(training), "validation": slices(validation), "test": slices(test),
              "held_out": slices(held_out)}
    return {"split": split, "labelled_fraction": labelled_fraction, "vendor_roles": roles,
            "labelled_patients": labelled, "training": training, "validation_patients": validation,
            "test_patients": test, "held_out_patients": held_out, "unlabelled": unlabelled,
            "unlabelled_source": f"up to {UNLABELLED_FRAMES} time points other than ED and ES per training patient "
                                 "of the labelled and unlabelled vendors",
            "counts": counts}


def mnms_arrays(cohort, patients, splits, split=0, labelled_fraction=1.0, seed=1, max_unlabelled=MAX_UNLABELLED,
                train_vendors=(), unlabelled_vendors=(), test_vendors=()):
    """``SDNetArrays`` for one split (see ``mnms_plan``), every slice with its vendor, and a description."""
    plan = mnms_plan(cohort, patients, splits, split, labelled_fraction, seed, max_unlabelled, train_vendors,
                     unlabelled_vendors, test_vendors)
    vendors = tuple(sorted(plan["vendor_roles"]))
    vendor_of = {p.code: vendors.index(p.vendor) for p in patients}

    def stack(codes, kind):
        return np.concatenate([cohort[c][kind] for c in codes])

    def vendor_index(parts):
        return np.concatenate([np.full(n, vendor_of[c], np.int64) for c, n in parts])

    unlabelled_parts = [(c, len(index)) for c, index in plan["unlabelled"]]
    arrays = SDNetArrays(
        labelled_images=stack(plan["labelled_patients"], "images"),
        labelled_masks=one_hot(stack(plan["labelled_patients"], "labels")),
        unlabelled_images=np.concatenate([cohort[c]["cine"][index] for c, index in plan["unlabelled"]]),
        real_masks=one_hot(stack(plan["training"], "labels")),
        validation_images=stack(plan["validation_patients"], "images"),
        validation_masks=one_hot(stack(plan["validation_patients"], "labels")),
        source=f"split {split}", vendors=vendors,
        labelled_vendors=vendor_index([(c, len(cohort[c]["images"])) for c in plan["labelled_patients"]]),
        unlabelled_vendors=vendor_index(unlabelled_parts),
        validation_vendors=vendor_index([(c, len(cohort[c]["images"])) for c in plan["validation_patients"]]))
    per_vendor = {v: {"role": plan["vendor_roles"][v], **{name: int(np.sum(getattr(arrays, f"{name}_vendors") == i))
                                                         for name in ("labelled", "unlabelled", "validation")}}
                  for i, v in enumerate(vendors)}
    description = {key: plan[key] for key in ("split", "labelled_fraction", "vendor_roles", "labelled_patients",
                                              "validation_patients", "test_patients", "held_out_patients",
                                              "unlabelled_source")}
    description.update({"vendors": list(vendors), "per_vendor": per_vendor, "splits": splits,
                        "test": plan["counts"]["test"], "held_out": plan["counts"]["held_out"], **arrays.counts()})
    return arrays, description


def load_mnms(root, split=0, labelled_fraction=1.0, seed=1, cache_dir=None, size=SIZE, progress=True,
              spacing=TARGET_SPACING, csv_path="", train_vendors=(), unlabelled_vendors=(), test_vendors=()):
    """Preprocess (or load from cache) an M&Ms-layout folder and assemble one split's arrays."""
    start = time.perf_counter()
    cohort, patients = preprocess_mnms(root, cache_dir, size, progress, spacing, csv_path)
    arrays, description = mnms_arrays(cohort, patients, vendor_splits(patients), split, labelled_fraction, seed,
                                      MAX_UNLABELLED, train_vendors, unlabelled_vendors, test_vendors)
    description["csv"] = str(patients[0].csv)
    description["seconds"] = round(time.perf_counter() - start, 2)
    return arrays, description
