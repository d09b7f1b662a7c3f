"""A built-in phantom cohort of synthetic short-axis cine MRI in the ACDC layout.

Each patient is a stack of short-axis slices from base to apex over a cardiac cycle: an LV
blood pool inside a myocardial ring, an RV crescent against the septum, and surrounding
tissue (body, chest wall, lungs). Cavities shrink toward the apex, the RV fades out before
it, and the heart contracts from end-diastole (ED) to end-systole (ES). Pathology groups
change the shapes (dilated LV, thick wall, enlarged RV, a thinned infarcted segment) and
scanner styles change the contrast between tissues, the intensity curve, the bias field, the
noise and the in-plane spacing, so the modality factor has real variation to capture.

Everything is a pure function of (seed, patient number); a cohort of 20 patients is written
in a few seconds.

``write_multimodal_cohort`` renders the same anatomy (each patient's ED frame) in two
modalities, in the MM-WHS layout and label values (``sdnet_tf.data.mmwhs``): an MR-like image
(the bright-blood cine rendering above: fat bright, myocardium darker than the surrounding
tissue, Rician noise, a bias field and a gamma curve) and a CT-like one in Hounsfield units
(contrast-enhanced blood bright, myocardium mid and brighter than muscle, epicardial fat and
subcutaneous fat dark, air and lungs near -1000, a bright vertebra, correlated Gaussian noise,
no bias field, finer pixels on a cardiac field of view). The two differ in the order of their
tissue intensities, not only in scale. A descending aorta, the pulmonary artery and the left
atrium (MM-WHS labels 820, 850, 420; blood in both modalities) are drawn beside the ventricles:
the reader maps them to background, as it maps every structure but MYO, LV and RV.

``write_mnms_cohort`` writes the cine phantom in the M&Ms layout (``sdnet_tf.data.mnms``): 4-D
``<code>_sa.nii.gz`` and ``<code>_sa_gt.nii.gz`` (M&Ms labels 1 LV, 2 MYO, 3 RV at ED and ES only),
vendors A-D in turn, each rendered in its own scanner style (the three above and a fourth,
``VENDOR_D_STYLE``), and the challenge's CSV with ED and ES as 0-based time indices.
"""

import logging
from pathlib import Path

import numpy as np
from scipy import ndimage

from sdnet_tf.atomic import write_text
from sdnet_tf.data.nifti import save_volume

log = logging.getLogger("sdnet_tf.data")

GROUPS = ("NOR", "DCM", "HCM", "RV", "MINF")
# per group: LV radius scale, wall thickness scale, radial contraction at ES, RV radius scale
GROUP_SHAPES = {
    "NOR": (1.00, 1.00, 0.30, 1.00),
    "DCM": (1.40, 0.85, 0.10, 1.00),
    "HCM": (0.85, 1.80, 0.40, 0.95),
    "RV": (0.95, 1.00, 0.28, 1.60),
    "MINF": (1.15, 1.00, 0.14, 1.00),
}
# scanner styles: intensities of blood, myocardium, tissue, lung, fat; gamma; noise; spacing range
STYLES = (
    {"blood": 0.90, "myo": 0.30, "tissue": 0.45, "lung": 0.05, "fat": 0.80, "gamma": 1.0, "noise": 0.03,
     "spacing": (1.3, 1.6)},
    {"blood": 0.75, "myo": 0.20, "tissue": 0.55, "lung": 0.10, "fat": 0.95, "gamma": 0.7, "noise": 0.05,
     "spacing": (1.5, 1.9)},
    {"blood": 0.95, "myo": 0.45, "tissue": 0.35, "lung": 0.02, "fat": 0.60, "gamma": 1.4, "noise": 0.02,
     "spacing": (0.9, 1.3)},
)
# a fourth style, for the M&Ms-layout cohort's vendor D only (the ACDC-layout cohort draws from
# STYLES, so adding it changes none of its patients): low blood-to-myocardium contrast, bright
# fat, strong noise
VENDOR_D_STYLE = {"blood": 0.65, "myo": 0.25, "tissue": 0.50, "lung": 0.08, "fat": 0.90, "gamma": 0.85, "noise": 0.06,
                  "spacing": (1.2, 1.6)}
MNMS_STYLES = STYLES + (VENDOR_D_STYLE,)  # vendor A, B, C, D: style 0, 1, 2, 3


def _patient_rng(seed, number):
    return np.random.default_rng([seed, number])


def patient_parameters(seed, number):
    """The random choices that define one phantom patient."""
    rng = _patient_rng(seed, number)
    group = GROUPS[(number - 1) % len(GROUPS)]
    style = int(rng.integers(len(STYLES)))
    s = STYLES[style]
    spacing = float(rng.uniform(*s["spacing"]))
    fov = rng.uniform(300.0, 360.0)  # mm
    shape = (int(round(fov / spacing)), int(round(fov * rng.uniform(0.8, 1.0) / spacing)))
    return {
        "group": group, "style": style, "spacing": spacing, "shape": shape,
        "slices": int(rng.integers(7, 11)), "slice_thickness": 10.0, "frames": int(rng.integers(10, 14)),
        "lv_radius": float(rng.uniform(22.0, 27.0)), "wall": float(rng.uniform(8.0, 10.0)),
        "rv_radius": float(rng.uniform(30.0, 36.0)), "rv_angle": float(rng.uniform(2.6, 3.4)),
        "centre": (float(rng.uniform(-15, 15)), float(rng.uniform(-15, 15))),
        "infarct_angle": float(rng.uniform(0, 2 * np.pi)),
        "bias": rng.normal(0.0, 0.15, size=4).tolist(), "height": float(rng.uniform(150, 190)),
        "weight": float(rng.uniform(55, 100)),
    }


def contraction(frame, frames, es_frame):
    """0 at ED (frame 1), 1 at ES, a smooth cycle in between."""
    t = (frame - 1) / frames
    t_es = (es_frame - 1) / frames
    if t <= t_es:
        return float(np.sin(0.5 * np.pi * t / t_es) ** 2)
    return float(np.cos(0.5 * np.pi * (t - t_es) / (1 - t_es)) ** 2)


def slice_labels(params, position, phase):
    """Labels (H, W) of one slice: 0 background, 1 RV, 2 MYO, 3 LV.

    ``position`` runs from 0 (base) to 1 (apex), ``phase`` from 0 (ED) to 1 (ES).
    """
    lv_scale, wall_scale, squeeze, rv_scale = GROUP_SHAPES[params["group"]]
    h, w = params["shape"]
    sp = params["spacing"]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy = h / 2 + params["centre"][0] / sp
    cx = w / 2 + params["centre"][1] / sp
    taper = 1.0 - 0.65 * position ** 1.6
    r_lv = params["lv_radius"] * lv_scale * taper * (1.0 - squeeze * phase) / sp
    wall = params["wall"] * wall_scale * (1.0 + 0.45 * phase) / sp
    r = np.hypot(yy - cy, xx - cx)
    angle = np.arctan2(yy - cy, xx - cx)
    if params["group"] == "MINF":
        # an infarcted segment: the wall there is thinner
        d = np.angle(np.exp(1j * (angle - params["infarct_angle"])))
        wall = wall * (1.0 - 0.45 * np.exp(-(d / 0.5) ** 2))
    wall = np.maximum(wall, 2.5)  # at least two pixels of myocardium everywhere
    labels = np.zeros((h, w), np.uint8)
    rv_radius = params["rv_radius"] * rv_scale * max(0.0, 1.0 - position / 0.8) ** 0.7 \
        * (1.0 - 0.5 * squeeze * phase) / sp
    if rv_radius > 3.0:
        outer = r_lv + wall
        mean_outer = float(np.mean(outer))
        theta = params["rv_angle"]
        d = 0.8 * mean_outer + 0.15 * rv_radius  # overlapping the LV: a crescent wraps the septum
        ry, rx = cy + d * np.sin(theta), cx + d * np.cos(theta)
        rv = (np.hypot(yy - ry, xx - rx) < rv_radius) & (r >= outer)  # flush against the septum, no gap
        rv, count = ndimage.label(rv)
        if count:
            sizes = ndimage.sum(np.ones_like(rv), rv, index=range(1, count + 1))
            labels[rv == 1 + int(np.argmax(sizes))] = 1
    labels[r < r_lv + wall] = 2
    labels[r < r_lv] = 3
    return labels


def render(labels, params, rng):
    """Intensities of one slice in the patient's scanner style (float, 0 to about 1)."""
    s = MNMS_STYLES[params["style"]]
    h, w = labels.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ny, nx = (yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2)
    image = np.zeros((h, w), np.float32)
    body = (ny / 0.85) ** 2 + (nx / 0.95) ** 2 < 1
    image[body] = s["fat"]
    inner = (ny / 0.78) ** 2 + (nx / 0.88) ** 2 < 1
    image[inner] = s["tissue"]
    for side in (-1, 1):
        lung = ((ny + 0.05) / 0.55) ** 2 + ((nx - side * 0.55) / 0.27) ** 2 < 1
        image[lung & inner] = s["lung"]
    heart_zone = ndimage.binary_dilation(labels > 0, iterations=6)
    image[heart_zone] = s["tissue"]
    image[labels == 2] = s["myo"]
    image[(labels == 1) | (labels == 3)] = s["blood"]
    image = ndimage.gaussian_filter(image, 0.8)
    b = params["bias"]
    bias = np.exp(b[0] * ny + b[1] * nx + b[2] * ny * nx + b[3] * (ny ** 2 - nx ** 2))
    image = np.clip(image * bias, 0, None) ** s["gamma"]
    noise = s["noise"]
    image = np.hypot(image + rng.normal(0, noise, image.shape), rng.normal(0, noise, image.shape))
    return image.astype(np.float32)


def patient_volumes(seed, number):
    """(cine (H, W, S, T) int16, labels per frame {index: (H, W, S)}, params, ED, ES)."""
    return _volumes(patient_parameters(seed, number), _patient_rng(seed + 7919, number))


def _volumes(params, rng):
    """``patient_volumes`` for given parameters and noise generator."""
    frames = params["frames"]
    ed, es = 1, max(2, int(round(0.35 * frames)) + 1)
    s = params["slices"]
    h, w = params["shape"]
    cine = np.zeros((h, w, s, frames), np.int16)
    labels = {}
    for t in range(1, frames + 1):
        phase = contraction(t, frames, es)
        frame_labels = np.zeros((h, w, s), np.uint8)
        for k in range(s):
            lab = slice_labels(params, k / max(1, s - 1), phase)
            frame_labels[..., k] = lab
            cine[..., k, t - 1] = np.clip(render(lab, params, rng) * 1000.0, 0, 32767).astype(np.int16)
        if t in (ed, es):
            labels[t] = frame_labels
    return cine, labels, params, ed, es


def write_patient(out, seed, number):
    """Write one patient folder in the ACDC layout; returns its path."""
    cine, labels, params, ed, es = patient_volumes(seed, number)
    name = f"patient{number:03d}"
    folder = Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    sp = params["spacing"]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # as ACDC: the affine does not carry the voxel size
    zooms = (sp, sp, params["slice_thickness"])
    for index in (ed, es):
        save_volume(cine[..., index - 1], affine, zooms, folder / f"{name}_frame{index:02d}.nii.gz", np.int16)
        save_volume(labels[index], affine, zooms, folder / f"{name}_frame{index:02d}_gt.nii.gz", np.uint8)
    save_volume(cine, affine, zooms + (1.0,), folder / f"{name}_4d.nii.gz", np.int16)
    info = (f"ED: {ed}\nES: {es}\nGroup: {params['group']}\nHeight: {params['height']:.1f}\n"
            f"NbFrame: {params['frames']}\nWeight: {params['weight']:.1f}\nStyle: {params['style']}\n")
    write_text(folder / "Info.cfg", info)
    return folder


def write_cohort(out, patients=20, seed=0, progress=False):
    """Write ``patients`` phantom patients (patient001 ...) under ``out``."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for number in tqdm(range(1, patients + 1), desc="phantom", unit="patient", disable=not progress):
        write_patient(out, seed, number)
    return out


# ------------------------------------------------------------------ two modalities, MM-WHS layout
# MM-WHS label values (Zhuang, MedIA 2016); the reader keeps the first three
MMWHS_MYO, MMWHS_LV, MMWHS_RV, MMWHS_LA, MMWHS_AORTA, MMWHS_PA = 205, 500, 600, 420, 820, 850
# CT-like intensities in Hounsfield units; blood (contrast) is drawn per patient from CT_BLOOD
CT_HU = {"air": -1000.0, "lung": -820.0, "fat": -90.0, "tissue": 45.0, "myo": 125.0, "bone": 650.0}
CT_BLOOD = (280.0, 420.0)
CT_NOISE = 18.0  # HU, before the slight correlation of CT noise texture
CT_SPACING = (0.65, 0.85)  # mm, in-plane; MR keeps its scanner style's spacing
CT_FOV = (190.0, 220.0)  # mm: a cardiac reconstruction window around the image centre, as cardiac CT is


# Blood-filled structures beside the ventricles, mapped to background by the MM-WHS reader: (label,
# angle from the RV's direction (rad), radius (mm), gap to the heart (mm), most apical position)
VESSELS = ((MMWHS_AORTA, -np.pi + 0.6, 10.0, 6.0, 0.7),  # descending aorta, opposite the RV
           (MMWHS_PA, 0.9, 11.0, 2.0, 0.45),  # pulmonary artery, beside the RV at the base
           (MMWHS_LA, -np.pi - 0.7, 15.0, 2.0, 0.3))  # left atrium, behind the LV at the base


def vessel_masks(labels, params, position):
    """{MM-WHS label: (H, W) bool} of the blood-filled structures of ``VESSELS`` in one slice
    (those present at this ``position``, 0 base to 1 apex); never over the ventricles or each other."""
    h, w = labels.shape
    sp = params["spacing"]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy = h / 2 + params["centre"][0] / sp
    cx = w / 2 + params["centre"][1] / sp
    outer = np.sqrt((labels > 0).sum() / np.pi)  # the heart's radius, in pixels
    taken = labels > 0
    masks = {}
    for value, angle, radius, gap, last in VESSELS:
        if position > last:
            continue
        theta = params["rv_angle"] + angle
        d = outer + (radius + gap) / sp
        mask = (np.hypot(yy - (cy + d * np.sin(theta)), xx - (cx + d * np.cos(theta))) < radius / sp) & ~taken
        masks[value] = mask
        taken = taken | mask
    return masks


def render_ct(labels, vessels, params, rng):
    """CT-like intensities (Hounsfield units, float) of one slice with ``labels`` (ACDC values)
    and the ``vessels`` mask (blood outside the ventricles), in a patient's contrast phase
    (``params["ct_blood"]``)."""
    h, w = labels.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ny, nx = (yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2)
    image = np.full((h, w), CT_HU["air"], np.float32)
    body = (ny / 0.85) ** 2 + (nx / 0.95) ** 2 < 1
    image[body] = CT_HU["fat"]
    inner = (ny / 0.78) ** 2 + (nx / 0.88) ** 2 < 1
    image[inner] = CT_HU["tissue"]
    for side in (-1, 1):
        lung = ((ny + 0.05) / 0.55) ** 2 + ((nx - side * 0.55) / 0.27) ** 2 < 1
        image[lung & inner] = CT_HU["lung"]
    image[((ny - 0.62) / 0.09) ** 2 + (nx / 0.08) ** 2 < 1] = CT_HU["bone"]  # a vertebral body
    image[ndimage.binary_dilation(labels > 0, iterations=6)] = CT_HU["fat"]  # epicardial fat
    image[ndimage.binary_dilation(labels > 0, iterations=2)] = CT_HU["tissue"]  # pericardium
    image[labels == 2] = CT_HU["myo"]
    image[(labels == 1) | (labels == 3) | vessels] = params["ct_blood"]
    image = ndimage.gaussian_filter(image, 0.6)
    noise = ndimage.gaussian_filter(rng.normal(0.0, 1.0, image.shape), 0.8)
    return (image + CT_NOISE * noise / noise.std()).astype(np.float32)


def _mmwhs_labels(labels, vessels):
    out = np.zeros(labels.shape, np.int16)
    for acdc, value in ((1, MMWHS_RV), (2, MMWHS_MYO), (3, MMWHS_LV)):
        out[labels == acdc] = value
    for value, mask in vessels.items():
        out[mask] = value
    return out


def multimodal_volumes(seed, number):
    """One patient's ED anatomy in both modalities: {"mr": (image int16 (H, W, S), MM-WHS labels
    int16, in-plane spacing mm), "ct": (image in HU int16, labels, spacing)} and the parameters.

    The CT grid has finer pixels (``CT_SPACING``) and is the central ``CT_FOV`` window of the
    same body (cardiac CT is reconstructed on a small field of view around the heart; the heart
    then fills enough of the volume that the 95th intensity percentile of the normalisation
    falls in the blood pool), so the two hold the same heart at different voxel sizes and
    fields of view."""
    params = patient_parameters(seed, number)
    rng = np.random.default_rng([seed, number, 2])
    ct_spacing = float(rng.uniform(*CT_SPACING))
    scale = params["spacing"] / ct_spacing
    ct_params = dict(params, spacing=ct_spacing, shape=tuple(int(round(n * scale)) for n in params["shape"]),
                     ct_blood=float(rng.uniform(*CT_BLOOD)))
    window = int(round(rng.uniform(*CT_FOV) / ct_spacing))
    top, left = ((n - window) // 2 for n in ct_params["shape"])
    crop = (slice(max(top, 0), top + window), slice(max(left, 0), left + window))
    out = {}
    for modality, p in (("mr", params), ("ct", ct_params)):
        h, w = p["shape"]
        image = np.zeros((h, w, p["slices"]), np.int16)
        labels = np.zeros((h, w, p["slices"]), np.int16)
        noise = np.random.default_rng([seed, number, 3 if modality == "mr" else 4])
        for k in range(p["slices"]):
            position = k / max(1, p["slices"] - 1)
            lab = slice_labels(p, position, 0.0)
            vessels = vessel_masks(lab, p, position)
            blood = np.any(list(vessels.values()), axis=0) if vessels else np.zeros(lab.shape, bool)
            if modality == "mr":
                picture = render(np.where(blood, 3, lab).astype(np.uint8), p, noise) * 1000.0
            else:
                picture = render_ct(lab, blood, p, noise)
            image[..., k] = np.clip(np.rint(picture), -1024, 32767).astype(np.int16)
            labels[..., k] = _mmwhs_labels(lab, vessels)
        if modality == "ct":
            image, labels = image[crop], labels[crop]
        out[modality] = (image, labels, p["spacing"])
    return out, params


def write_multimodal_patient(out, seed, number, first_case=1001):
    """Write patient ``number`` as ``mr_train/mr_train_<case>_image.nii.gz`` / ``_label.nii.gz``
    and the same for ``ct_train`` (case ``first_case + number - 1``); returns the case number.

    MR files carry ACDC's header conventions (voxel size in pixdim only), CT files a sform with
    the voxel size in it, as scanners write them."""
    volumes, params = multimodal_volumes(seed, number)
    case = first_case + number - 1
    for modality, (image, labels, spacing) in volumes.items():
        folder = Path(out) / f"{modality}_train"
        folder.mkdir(parents=True, exist_ok=True)
        zooms = (spacing, spacing, params["slice_thickness"])
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) if modality == "mr" else np.diag([-spacing, -spacing,
                                                                                   params["slice_thickness"], 1.0])
        stem = folder / f"{modality}_train_{case}"
        save_volume(image, affine, zooms, f"{stem}_image.nii.gz", np.int16)
        save_volume(labels, affine, zooms, f"{stem}_label.nii.gz", np.int16)
    return case


def write_multimodal_cohort(out, patients=20, seed=0, progress=False):
    """Write ``patients`` two-modality phantom patients (cases 1001 ...) under ``out`` in the
    MM-WHS layout (``mr_train/``, ``ct_train/``)."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for number in tqdm(range(1, patients + 1), desc="phantom (MR and CT)", unit="patient", disable=not progress):
        write_multimodal_patient(out, seed, number)
    return out


# ------------------------------------------------------------------ several vendors, M&Ms layout
MNMS_VENDORS = ("A", "B", "C", "D")
MNMS_CSV = "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv"  # the open dataset's name
MNMS_COLUMNS = ("", "External code", "VendorName", "Vendor", "Centre", "ED", "ES", "Pathology")
MNMS_FOLDERS = {"A": "Training/Labeled", "B": "Training/Labeled", "C": "Validation", "D": "Testing"}
# ACDC label -> M&Ms label (M&Ms: 1 LV, 2 MYO, 3 RV)
_TO_MNMS = np.array([0, 3, 2, 1], np.uint8)


def mnms_patient_parameters(seed, number):
    """``patient_parameters`` with the scanner style of vendor ``MNMS_VENDORS[(number - 1) % 4]``
    (style index = vendor index in ``MNMS_STYLES``) and an in-plane spacing from that style's
    range, the field of view kept."""
    params = patient_parameters(seed, number)
    vendor = (number - 1) % len(MNMS_VENDORS)
    spacing = float(np.random.default_rng([seed, number, 5]).uniform(*MNMS_STYLES[vendor]["spacing"]))
    shape = tuple(int(round(n * params["spacing"] / spacing)) for n in params["shape"])
    return dict(params, style=vendor, spacing=spacing, shape=shape, vendor=MNMS_VENDORS[vendor])


def mnms_patient_volumes(seed, number):
    """One M&Ms-layout phantom patient: (cine (H, W, S, T) int16, gt (H, W, S, T) uint8 in M&Ms
    labels at ED and ES only, params, ED, ES as 0-based time indices).

    The cycle is rotated so that ED falls at time index ``number % 3`` (0, 1 or 2), as a
    cine's recording need not start at ED; the CSV gives both indices."""
    params = mnms_patient_parameters(seed, number)
    cine, labels, params, ed, es = _volumes(params, _patient_rng(seed + 7919, number))
    frames = cine.shape[-1]
    shift = number % 3
    order = [(t - shift) % frames for t in range(frames)]  # time index t shows phantom frame order[t] + 1
    cine = cine[..., order]
    gt = np.zeros(cine.shape, np.uint8)
    ed_index, es_index = (ed - 1 + shift) % frames, (es - 1 + shift) % frames
    gt[..., ed_index] = _TO_MNMS[labels[ed]]
    gt[..., es_index] = _TO_MNMS[labels[es]]
    return cine, gt, params, ed_index, es_index


def mnms_code(number):
    """The phantom's 'External code' of patient ``number``."""
    return f"PH{number:04d}"


def write_mnms_patient(out, seed, number):
    """Write patient ``number`` as ``<folder>/<code>/<code>_sa.nii.gz`` and ``<code>_sa_gt.nii.gz``
    (4-D, a sform with the voxel size in it, as scanners write), the folder by vendor
    (``MNMS_FOLDERS``); returns its CSV row (a dict over ``MNMS_COLUMNS``)."""
    cine, gt, params, ed, es = mnms_patient_volumes(seed, number)
    code = mnms_code(number)
    folder = Path(out) / MNMS_FOLDERS[params["vendor"]] / code
    folder.mkdir(parents=True, exist_ok=True)
    sp, thickness = params["spacing"], params["slice_thickness"]
    affine = np.diag([-sp, -sp, thickness, 1.0])
    zooms = (sp, sp, thickness, 1.0)
    save_volume(cine, affine, zooms, folder / f"{code}_sa.nii.gz", np.int16)
    save_volume(gt, affine, zooms, folder / f"{code}_sa_gt.nii.gz", np.uint8)
    vendor = params["vendor"]
    return {"": number - 1, "External code": code, "VendorName": f"phantom style {params['style']}",
            "Vendor": vendor, "Centre": MNMS_VENDORS.index(vendor) + 1, "ED": ed, "ES": es,
            "Pathology": params["group"]}


def write_mnms_cohort(out, patients=20, seed=0, progress=False):
    """Write ``patients`` phantom patients in the M&Ms layout under ``out``, vendors A, B, C, D in
    turn (four scanner styles, ``MNMS_STYLES``), with the challenge's CSV (``MNMS_CSV``; ED and ES
    0-based)."""
    import csv
    import io

    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [write_mnms_patient(out, seed, number)
            for number in tqdm(range(1, patients + 1), desc="phantom (M&Ms)", unit="patient", disable=not progress)]
    text = io.StringIO()
    writer = csv.DictWriter(text, MNMS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / MNMS_CSV, text.getvalue())
    return out
