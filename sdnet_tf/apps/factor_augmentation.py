"""Factor-based augmentation (FA), after Liu et al., "Disentangled representations for
domain-generalized cardiac segmentation" (M&Ms challenge, STACOM 2020): a pre-trained SDNet
splits every training image into its anatomy factor s and its modality factor z, random
anatomies are paired with the modalities of images of *other vendors*, and the pre-trained
decoder renders the pairs as new training images.

- **Factors.** Both encoders run in inference mode (BatchNorm moving statistics): s is the
  binarised anatomy the segmentor reads at test time, z is the modality encoder's mean, not a
  sample, so a pair always renders the same image.
- **Pairs.** Every training image (labelled, then unlabelled: one pool) lends its anatomy in
  turn, in a random order (a fresh order for each further pass when more images are asked
  for than the pool holds); its partner, the modality, is drawn uniformly from the pool's
  images of another vendor. Arrays that record no vendors pair any two different images, and
  the description says so; arrays whose training images have one vendor are refused.
- **Labels.** A generated image whose anatomy came from a labelled image is labelled, with
  that image's mask (the anatomy is the same, so its mask is too); the others join the
  unlabelled images. Each generated image takes the vendor (and modality, for two-modality
  arrays) of its modality image: its appearance is that vendor's. Validation arrays and the
  discriminator's real masks are unchanged (the new masks are copies of masks already there).
- **Cached, not on the fly.** The images are generated once, when training starts, and written
  atomically to ``factor_augmentation.npz`` in the run directory with a fingerprint of the
  source run's weights file, the training arrays, the count and the seed. A resumed run
  reads them back instead of loading the source model again, so it trains on exactly the
  images it started with and holds one network less in memory; a cache whose fingerprint
  differs is regenerated, with a log line. Liu et al.'s code decodes a new pair for each
  batch instead (anatomy from the labelled batch, z from an unlabelled batch); a fixed set
  keeps the run's batches a pure function of (seed, iteration), as the rest of the sampler is.

Application code: it loads a run (``inference.load_run``) and writes files.
"""

import dataclasses
import hashlib
import logging
from pathlib import Path

import numpy as np

from sdnet_tf.data.arrays import DataError, UnreadableFile, read_npz, save_npz

log = logging.getLogger("sdnet_tf.train")

CACHE_NAME = "factor_augmentation.npz"
DESCRIPTION_NAME = "factor_augmentation.json"
VERSION = 1  # bumped when the pairing or the generation changes, so an older cache is regenerated
_PAIR_STREAM = 8  # the pairs' own random stream, apart from the sampler's (schedule._STREAMS)


def check_source_run(source, config, run_dir=None):
    """Check, from its files alone (no weights are loaded), that ``source`` is a 2019 SDNet run
    whose factors fit ``config``: the same input size and channels, number of classes and
    ``data.spacing`` (mm per pixel).

    Args:
        source: the pre-trained run directory (``data.factor_augmentation``).
        config: the training ``Config``.
        run_dir: the run being trained, which may not be ``source`` itself.

    Returns:
        ``(path, source_config)``: the run directory, absolute, and its ``Config``.

    Raises:
        DataError: naming the run: no such run, not an SDNet run (a MICCAI 2018 precursor run, a
            U-Net run or a shape prior), no ``model.keras`` yet, or factors that do not fit.
    """
    from sdnet_tf.config import ConfigError, load_config
    from sdnet_tf.inference import run_kind

    where = "data.factor_augmentation"
    path = Path(source).expanduser().resolve()
    if run_dir is not None and path == Path(run_dir).expanduser().resolve():
        raise DataError(f"{where} {path}: the run being trained; name another, pre-trained SDNet run")
    try:
        kind = run_kind(path)
    except DataError as error:
        raise DataError(f"{where}: {error}") from error
    refused = {"sdnet2018": "a MICCAI 2018 precursor run (model.kind sdnet2018), whose z comes from the image "
                            "alone and whose anatomy is one myocardium mask",
               "unet": "a U-Net baseline run, which has no anatomy or modality factor",
               "unet_gan": "a U-Net or GAN baseline run (model.kind unet_gan), which has no anatomy or modality "
                           "factor",
               "tl": "a T-L network run, which has no anatomy or modality factor",
               "nvae": "a shape-prior run (nvae)", "acnn": "a shape-prior run (acnn)"}
    if kind != "sdnet":
        what = refused.get(kind, f"a {kind} run")
        raise DataError(f"{where} {path}: {what}; factor-based augmentation needs a 2019 SDNet run (sdnet-tf "
                        "train, model.kind sdnet)")
    try:
        source_config = load_config(str(path / "config.yaml"))
    except ConfigError as error:
        raise DataError(f"{where} {path}: its config.yaml cannot be read ({error})") from error
    if not (path / "model.keras").is_file():
        raise DataError(f"{where} {path}: no model.keras yet (it is written at the run's first validation epoch)")
    s, m = source_config, config.model
    checks = (("model.input_size", s.model.input_size, m.input_size),
              ("model.input_channels", s.model.input_channels, m.input_channels),
              ("model.num_classes", s.model.num_classes, m.num_classes))
    for key, theirs, ours in checks:
        if theirs != ours:
            raise DataError(f"{where} {path}: trained with {key} {theirs}, this config has {ours}; the generated "
                            "images and masks must fit the model")
    if not np.isclose(s.data.spacing, config.data.spacing, rtol=0, atol=1e-6):
        raise DataError(f"{where} {path}: trained on {s.data.spacing:g} mm pixels (data.spacing), this config "
                        f"reads {config.data.spacing:g} mm; its anatomy would be drawn at the wrong scale")
    return path, source_config


def _digest(path):
    """sha256 (hex) of a file's bytes."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def fingerprint(weights_digest, arrays, count, seed):
    """sha256 (hex) of what the generated images depend on: the source weights' digest, the
    training images, masks, vendors and modalities, ``count``, ``seed`` and ``VERSION``."""
    sha = hashlib.sha256(f"fa-v{VERSION}/{weights_digest}/{count}/{seed}/{arrays.vendors}/{arrays.modalities}".encode())
    for name in ("labelled_images", "labelled_masks", "unlabelled_images", "labelled_vendors",
                 "unlabelled_vendors", "labelled_modalities", "unlabelled_modalities"):
        value = getattr(arrays, name)
        if value is None:
            sha.update(f"{name}:none".encode())
            continue
        value = np.ascontiguousarray(value)
        sha.update(f"{name}:{value.dtype}:{value.shape}".encode())
        sha.update(memoryview(value).cast("B"))
    return sha.hexdigest()


def _pool_labels(arrays, kind):
    """Each pool image's vendor (``kind`` "vendors") or modality ("modalities") index, labelled
    images first; None when the arrays record none."""
    names = getattr(arrays, kind)
    labelled, unlabelled = getattr(arrays, f"labelled_{kind}"), getattr(arrays, f"unlabelled_{kind}")
    if not names or labelled is None or unlabelled is None:
        return None
    return np.concatenate([labelled, unlabelled]).astype(np.int64)


def draw_pairs(count, vendors, pool_size, seed):
    """``count`` (anatomy, modality) index pairs into a pool of ``pool_size`` images.

    Anatomy indices run through random permutations of the pool (each image once per pass);
    each modality index is drawn uniformly from the images of another vendor (``vendors``:
    (pool_size,) int), or, with ``vendors`` None, from every other image.

    Returns:
        ``(anatomy, modality)``, two (count,) int64 arrays; a pure function of the arguments.

    Raises:
        DataError: fewer than two images, or fewer than two vendors among them.
    """
    if pool_size < 2:
        raise DataError(f"factor-based augmentation needs at least two training images, not {pool_size}")
    rng = np.random.default_rng([int(seed), _PAIR_STREAM])
    passes = -(-count // pool_size)
    anatomy = np.concatenate([rng.permutation(pool_size) for _ in range(passes)])[:count].astype(np.int64)
    if vendors is None:
        modality = rng.integers(0, pool_size - 1, size=count)
        return anatomy, modality + (modality >= anatomy)  # every index but the anatomy's own
    vendors = np.asarray(vendors)
    present = np.unique(vendors)
    if len(present) < 2:
        raise DataError("factor-based augmentation pairs anatomies with modalities of other vendors, and the "
                        f"training images are of one vendor (index {int(present[0])})")
    modality = np.empty(count, np.int64)
    for vendor in present:
        which = np.flatnonzero(vendors[anatomy] == vendor)
        others = np.flatnonzero(vendors != vendor)
        modality[which] = others[rng.integers(0, len(others), size=len(which))]
    return anatomy, modality


def _take(arrays, index):
    """Pool images ``index`` (labelled first, then unlabelled), without joining the two arrays."""
    n = len(arrays.labelled_images)
    index = np.asarray(index)
    out = np.empty((len(index),) + arrays.labelled_images.shape[1:], np.float32)
    labelled = index < n
    out[labelled] = arrays.labelled_images[index[labelled]]
    out[~labelled] = arrays.unlabelled_images[index[~labelled] - n]
    return out


def generate(model, arrays, anatomy_index, modality_index, batch_size=16):
    """The images ``model`` decodes from the anatomy of pool images ``anatomy_index`` and the
    modality (z mean) of pool images ``modality_index``, both in inference mode.

    Args:
        model: a trained ``SDNet``.
        arrays: the ``SDNetArrays`` whose labelled then unlabelled images form the pool.
        anatomy_index, modality_index: (K,) int indices into the pool.
        batch_size: images per network call.

    Returns:
        (K, H, W, C) float32: ``model.reconstruct(anatomy(x_i), mean(x_j))`` for each pair.
    """
    wanted = np.unique(modality_index)
    means = {}
    for start in range(0, len(wanted), batch_size):
        chunk = wanted[start:start + batch_size]
        images = _take(arrays, chunk)
        anatomy = model.anatomy_encoder(images, training=False)
        _, mean, _ = model.modality_encoder([anatomy, images], training=False, sample=False)
        means.update(zip(chunk.tolist(), np.asarray(mean, np.float32)))
    out = np.empty((len(anatomy_index),) + arrays.labelled_images.shape[1:], np.float32)
    for start in range(0, len(anatomy_index), batch_size):
        stop = start + batch_size
        anatomy = model.anatomy_encoder(_take(arrays, anatomy_index[start:stop]), training=False)
        z = np.stack([means[j] for j in modality_index[start:stop].tolist()])
        out[start:stop] = np.asarray(model.reconstruct(anatomy, z), np.float32)
    return out


def _read_cache(path, expected, size):
    """The cache's arrays when it holds ``size`` images of fingerprint ``expected``; else None, with a log line."""
    if not path.is_file():
        return None
    try:
        saved = read_npz(path)
    except UnreadableFile as error:
        log.warning("factor augmentation: %s; generating the images again", error)
        return None
    found = str(saved["fingerprint"]) if "fingerprint" in saved else "none"
    if found != expected or len(saved.get("images", ())) != size:
        log.info("factor augmentation: %s was made from other source weights, training arrays, count or seed "
                 "(fingerprint %s..., now %s...); generating the images again", path, found[:12], expected[:12])
        return None
    return saved


def factor_augment(arrays, source, config, count=0, seed=1, cache=None, batch_size=16):
    """The training arrays enlarged with factor-based augmentation (Liu et al., M&Ms 2020).

    Args:
        arrays: the run's ``SDNetArrays`` (images (N, H, W, C) in the preprocessing's range).
        source: a pre-trained SDNet run directory (``check_source_run``).
        config: the training ``Config`` (the source must fit it).
        count: images to generate; 0: as many as there are training images (labelled + unlabelled).
        seed: the pairs' seed (``train.seed``).
        cache: the ``.npz`` file the images are kept in (read when its fingerprint matches,
            else written atomically); None: generated and not kept.
        batch_size: images per network call.

    Returns:
        ``(arrays, description)``: new ``SDNetArrays``, the generated images appended to the
        labelled images (with their anatomy image's mask) or to the unlabelled ones, and a dict:
        ``source_run``, ``weights_sha256``, ``count``, ``labelled``, ``unlabelled`` (how many
        were added to each), ``seed``, ``pairing``, ``z``, ``vendor_pairs`` ("anatomy vendor ->
        modality vendor": count), ``cache`` and ``from_cache``.

    Raises:
        DataError: as ``check_source_run``; fewer than two training images, or one vendor.
    """
    path, _ = check_source_run(source, config)
    n_labelled, n_pool = len(arrays.labelled_images), len(arrays.labelled_images) + len(arrays.unlabelled_images)
    count = int(count) or n_pool
    vendors = _pool_labels(arrays, "vendors")
    weights_digest = _digest(path / "model.keras")
    expected = fingerprint(weights_digest, arrays, count, seed)
    saved = _read_cache(Path(cache), expected, count) if cache is not None else None
    if saved is not None:
        anatomy_index, modality_index = saved["anatomy_index"], saved["modality_index"]
        images = saved["images"].astype(np.float32)
        log.info("factor augmentation: %d images read from %s", count, cache)
    else:
        from sdnet_tf.inference import load_run

        anatomy_index, modality_index = draw_pairs(count, vendors, n_pool, seed)
        model, _ = load_run(path)
        log.info("factor augmentation: generating %d images with %s", count, path)
        images = generate(model, arrays, anatomy_index, modality_index, batch_size)
        del model
    labelled = anatomy_index < n_labelled
    masks = arrays.labelled_masks[anatomy_index[labelled]]
    if saved is None and cache is not None:
        save_npz(cache, {"images": images, "anatomy_index": anatomy_index, "modality_index": modality_index,
                         "labelled": labelled, "masks": masks.astype(np.uint8),
                         "vendors": vendors[modality_index] if vendors is not None else np.zeros(0, np.int64),
                         "fingerprint": np.asarray(expected), "source_run": np.asarray(str(path))})
    replace = {"source": f"{arrays.source} + factor augmentation",
               "labelled_images": np.concatenate([arrays.labelled_images, images[labelled]]),
               "labelled_masks": np.concatenate([arrays.labelled_masks, masks]),
               "unlabelled_images": np.concatenate([arrays.unlabelled_images, images[~labelled]])}
    for kind in ("vendors", "modalities"):  # the modality image's: the generated image looks like it
        pool = _pool_labels(arrays, kind)
        if pool is not None:
            new = pool[modality_index]
            replace[f"labelled_{kind}"] = np.concatenate([getattr(arrays, f"labelled_{kind}"), new[labelled]])
            replace[f"unlabelled_{kind}"] = np.concatenate([getattr(arrays, f"unlabelled_{kind}"), new[~labelled]])
    names = arrays.vendors
    vendor_pairs = {}
    if vendors is not None:
        for a, m in zip(vendors[anatomy_index].tolist(), vendors[modality_index].tolist()):
            key = f"{names[a]} -> {names[m]}"
            vendor_pairs[key] = vendor_pairs.get(key, 0) + 1
    description = {
        "source_run": str(path), "weights_sha256": weights_digest, "count": count,
        "labelled": int(labelled.sum()), "unlabelled": int((~labelled).sum()), "seed": int(seed),
        "pairing": ("anatomy and modality from images of different vendors" if vendors is not None
                    else "anatomy and modality from any two different images (the arrays record no vendors)"),
        "z": "the modality encoder's mean (inference mode); anatomy binarised as at test time",
        "generated_vendor": "the modality image's" if vendors is not None else None,
        "vendor_pairs": dict(sorted(vendor_pairs.items())),
        "cache": str(cache) if cache is not None else None, "from_cache": saved is not None}
    return dataclasses.replace(arrays, **replace), description
