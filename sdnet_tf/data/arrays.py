"""The arrays one SDNet training run consumes."""

from dataclasses import dataclass

import zipfile

import numpy as np
from sdnet_infer.io import DataError  # one error type for training, prediction and the runtime


class UnreadableFile(DataError):
    """A file that exists but cannot be read (truncated or corrupted)."""


def read_npz(path, advice=""):
    """Every array of an ``.npz`` file, as ``{name: numpy array}``.

    Raises:
        UnreadableFile: the file is missing, truncated or damaged (numpy raises ``zipfile.BadZipFile``,
            ``OSError``, ``ValueError`` or ``EOFError`` for these), naming the file, with ``advice``.
    """
    try:
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as error:
        raise UnreadableFile(f"{path}: not a readable .npz file ({error}){'; ' + advice if advice else ''}") from error

def save_npz(path, arrays):
    """Write ``{name: array}`` as an ``.npz`` file atomically (a preprocessed cohort's cache,
    which parallel runs may write at once: ``atomic_path(shared=True)``)."""
    from sdnet_tf.atomic import atomic_path

    with atomic_path(path, shared=True) as tmp:
        np.savez(tmp, **arrays)


def unpack_npz(data, *keys):
    """A cache's flat ``"a/b/kind"`` names as nested dicts ``{keys[0](a): {keys[1](b): {kind:
    array}}}``, each leading part converted by its ``keys`` function (``int`` for patient
    numbers, ``str`` for modalities and codes)."""
    out = {}
    for name in data.keys():
        *parts, kind = name.split("/")
        node = out
        for convert, part in zip(keys, parts):
            node = node.setdefault(convert(part), {})
        node[kind] = np.asarray(data[name])
    return out


__all__ = ["DataError", "SDNetArrays"]


@dataclass
class SDNetArrays:
    """Training and validation arrays, channels last, float32.

    Attributes:
        labelled_images: (N, H, W, 1) in [-1, 1].
        labelled_masks: (N, H, W, L) one-hot foreground channels (background excluded).
        unlabelled_images: (M, H, W, 1).
        real_masks: (K, H, W, L) masks shown to the discriminator as real (the whole
            training split, not only the labelled subset).
        validation_images: (V, H, W, 1).
        validation_masks: (V, H, W, L).
        modalities: the modality names of a multimodal cohort (e.g. ("mr", "ct")); empty for one modality.
        labelled_modalities, unlabelled_modalities, validation_modalities: (N,), (M,), (V,) int,
            each image's index into ``modalities``; None for one modality.
        vendors: the scanner vendors of a multi-vendor cohort (M&Ms: e.g. ("A", "B", "C", "D"));
            empty when the cohort does not record them.
        labelled_vendors, unlabelled_vendors, validation_vendors: (N,), (M,), (V,) int, each
            image's index into ``vendors``; None without vendors.
    """

    labelled_images: np.ndarray
    labelled_masks: np.ndarray
    unlabelled_images: np.ndarray
    real_masks: np.ndarray
    validation_images: np.ndarray
    validation_masks: np.ndarray
    source: str = "arrays"
    modalities: tuple = ()
    labelled_modalities: np.ndarray = None
    unlabelled_modalities: np.ndarray = None
    validation_modalities: np.ndarray = None
    vendors: tuple = ()
    labelled_vendors: np.ndarray = None
    unlabelled_vendors: np.ndarray = None
    validation_vendors: np.ndarray = None

    def check(self, input_size=None, num_classes=None):
        """Raise ``DataError`` when the arrays do not fit together or the model."""
        for name in ("labelled_images", "labelled_masks", "unlabelled_images", "real_masks",
                     "validation_images", "validation_masks"):
            value = getattr(self, name)
            if value.ndim != 4:
                raise DataError(f"{self.source}: {name} has shape {value.shape}, expected (N, H, W, C)")
            if len(value) == 0:
                raise DataError(f"{self.source}: {name} is empty")
            if input_size is not None and value.shape[1:3] != (input_size, input_size):
                raise DataError(f"{self.source}: {name} is {value.shape[1]}x{value.shape[2]}, "
                                f"the model expects {input_size}x{input_size}")
            if not np.isfinite(value).all():
                raise DataError(f"{self.source}: {name} contains NaN or infinite values")
        for images, masks in (("labelled_images", "labelled_masks"), ("validation_images", "validation_masks")):
            if len(getattr(self, images)) != len(getattr(self, masks)):
                raise DataError(f"{self.source}: {images} and {masks} differ in length")
        for kind, names in (("modality", self.modalities), ("vendor", self.vendors)):
            for images in ("labelled_images", "unlabelled_images", "validation_images"):
                field_name = images.replace("images", "modalities" if kind == "modality" else "vendors")
                labels = getattr(self, field_name)
                if labels is None:
                    continue
                known = set(range(len(names)))
                if len(labels) != len(getattr(self, images)) or not set(np.unique(labels).tolist()) <= known:
                    raise DataError(f"{self.source}: {field_name} must give one {kind} index in "
                                    f"0..{len(names) - 1} per image")
        if num_classes is not None:
            for name in ("labelled_masks", "real_masks", "validation_masks"):
                if getattr(self, name).shape[-1] != num_classes:
                    raise DataError(f"{self.source}: {name} has {getattr(self, name).shape[-1]} channels, "
                                    f"the model expects {num_classes}")
        return self

    def counts(self):
        return {"labelled": len(self.labelled_images), "unlabelled": len(self.unlabelled_images),
                "real_masks": len(self.real_masks), "validation": len(self.validation_images)}
