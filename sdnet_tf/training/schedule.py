"""The SDNet training schedule, independent of any gradient mechanics.

Which steps run in which order, on which batch, with which optimiser and which networks'
variables; the pool of fake masks; early stopping; and the deterministic batch sampler.
Only numpy here: the engines (``tf_engine``, and later a JAX one) turn a ``Step`` into an
update.
"""

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np

from sdnet_tf.data.augment import rescale_batch, rotate_batch


@dataclass(frozen=True)
class Step:
    """One update of an SDNet iteration.

    Attributes:
        name: the step's name in logs.
        objective: the function of ``objectives`` that computes its loss.
        optimizer: which of the four optimisers applies it (the original has one Adam per
            Keras trainer model: supervised, unsupervised, z-regressor, discriminator).
        trains: the networks whose trainable variables it updates, and only those.
        batch: which batch it consumes ("labelled", "unlabelled", "discriminator").
    """

    name: str
    objective: str
    optimizer: str
    trains: tuple
    batch: str


GENERATORS = ("anatomy_encoder", "modality_encoder", "decoder", "segmentor")
OPTIMIZERS = ("supervised", "unsupervised", "z_regressor", "discriminator")

SDNET_SCHEDULE = (
    Step("supervised", "supervised", "supervised", GENERATORS, "labelled"),
    Step("z_rec_labelled", "z_reconstruction", "z_regressor", ("modality_encoder", "decoder"), "labelled"),
    Step("unsupervised", "unsupervised", "unsupervised", GENERATORS, "unlabelled"),
    Step("z_rec_unlabelled", "z_reconstruction", "z_regressor", ("modality_encoder", "decoder"), "unlabelled"),
    Step("discriminator", "discriminator", "discriminator", ("discriminator",), "discriminator"),
)

# The MICCAI 2018 precursor's iteration: its code trains the unlabelled generator, then the
# labelled one (each with its own Adam), then both discriminators together.
SDNET2018_SCHEDULE = (
    Step("unsupervised", "unsupervised_2018", "unsupervised", ("decomposer", "reconstructor"), "unlabelled"),
    Step("supervised", "supervised_2018", "supervised", ("decomposer", "reconstructor"), "labelled"),
    Step("discriminator", "discriminators_2018", "discriminator", ("mask_discriminator", "image_discriminator"),
         "discriminator"),
)


# The U-Net baselines' iteration (``models.UNetGAN``): SDNet's supervised, unlabelled and
# discriminator steps without the z-reconstructions; without the last two at adversarial 0.
UNET_GAN_SCHEDULE = (
    Step("supervised", "supervised_unet", "supervised", ("unet",), "labelled"),
    Step("unsupervised", "unsupervised_unet", "unsupervised", ("unet",), "unlabelled"),
    Step("discriminator", "discriminator", "discriminator", ("discriminator",), "discriminator"),
)


def unet_gan_schedule(adversarial=10.0):
    """``UNET_GAN_SCHEDULE``; the supervised step alone when the adversarial weight is 0 (the
    plain U-Net: nothing would read the discriminator)."""
    return UNET_GAN_SCHEDULE if adversarial else UNET_GAN_SCHEDULE[:1]


def sdnet_schedule(adversarial=10.0, lv_volume_head=False, shape_projection=0.0):
    """``SDNET_SCHEDULE``, without the discriminator step when the adversarial weight is 0
    (no loss would read the discriminator, as in the AdaIN + focal variant of M&Ms 2020; the
    unlabelled step then trains no segmentor either, unless the label-free shape term
    ``shape_projection`` reaches it), and with the LV-volume head trained by the supervised
    step when there is one."""
    steps = list(SDNET_SCHEDULE)
    if not adversarial:  # nothing reads the discriminator, and the unlabelled step not the segmentor
        steps = [dataclasses.replace(step, trains=tuple(n for n in step.trains
                                                        if n != "segmentor" or shape_projection))
                 if step.objective == "unsupervised" else step
                 for step in steps if step.objective != "discriminator"]
    if lv_volume_head:
        steps = [dataclasses.replace(step, trains=step.trains + ("lv_regressor",)) if step.objective == "supervised"
                 else step for step in steps]
    return tuple(steps)


# Stream identifiers of the sampler's random generators: every draw is a pure function of
# (seed, stream, counter), so a resumed run draws exactly what an uninterrupted one would.
_STREAMS = {"labelled": 1, "unlabelled": 2, "disc_images": 3, "real_masks": 4, "augment": 5, "z": 6, "pool": 7,
            "resolution": 8}


def _rng(seed, stream, *counters):
    return np.random.default_rng([seed, _STREAMS[stream], *counters])


class FakePool:
    """The latest ``size`` fake masks; a batch is drawn from it without replacement."""

    def __init__(self, size=50):
        self.size = size
        self.items = None  # (n, H, W, L)

    def add(self, masks):
        self.items = masks if self.items is None else np.concatenate([self.items, masks])[-self.size:]

    def sample(self, count, rng):
        index = rng.choice(len(self.items), size=min(count, len(self.items)), replace=False)
        return self.items[index]

    def state(self):
        return {"pool": self.items if self.items is not None else np.zeros((0,), np.float32)}

    def load_state(self, state):
        pool = state["pool"]
        self.items = pool if pool.ndim > 1 and len(pool) else None


class EarlyStopping:
    """Keras-style early stopping on a loss: improvement means below ``best - min_delta``."""

    def __init__(self, patience=100, min_delta=0.01):
        self.patience = patience
        self.min_delta = min_delta
        self.best = math.inf
        self.wait = 0

    def update(self, value):
        """Record an epoch's loss; return True when training should stop."""
        if value < self.best - self.min_delta:
            self.best = value
            self.wait = 0
        else:
            self.wait += 1
        return self.wait >= self.patience

    def state(self):
        return {"best": self.best, "wait": self.wait}

    def load_state(self, state):
        self.best, self.wait = float(state["best"]), int(state["wait"])


@functools.lru_cache(maxsize=32)
def _permutation(n, seed, stream, epoch):
    return _rng(seed, stream, epoch).permutation(n)


def _cycled_indices(n, seed, stream, batch_index, batch_size):
    """Indices of batch ``batch_index`` when passes over n items are each freshly shuffled."""
    positions = np.arange(batch_index * batch_size, (batch_index + 1) * batch_size)
    return np.array([_permutation(n, seed, stream, int(p // n))[p % n] for p in positions], dtype=np.int64)


class BatchSampler:
    """Draws every batch of an iteration as a pure function of (seed, iteration).

    Args:
        arrays: an ``SDNetArrays`` with the training arrays.
        batch_size: images per batch (4 in the original).
        seed: the run's seed.
        augment: apply the augmentations (rotation, and the resolution augmentation when
            ``resolution_range`` is given).
        rotation_range: rotations are uniform in [-rotation_range, rotation_range] degrees.
        nz: size of z, for the prior samples of the z-reconstruction steps.
        resolution_range: (lo, hi) in mm, or None for no resolution augmentation: each image
            of every training batch (and its mask) is first resampled to a pixel side drawn
            uniformly in [lo, hi] from ``spacing`` (``augment.rescale_batch``), then rotated.
        spacing: the pixel side of the arrays in mm (``data.spacing``).

    The draws of each augmentation come from their own stream, so turning the resolution
    augmentation on leaves the rotation angles, and the images each batch takes, as they were.
    """

    def __init__(self, arrays, batch_size, seed, augment=True, rotation_range=90.0, nz=8, resolution_range=None,
                 spacing=None):
        self.arrays = arrays
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.rotation_range = rotation_range
        self.nz = nz
        if resolution_range is not None:
            lo, hi = (float(v) for v in resolution_range)
            if not 0 < lo <= hi or spacing is None or not spacing > 0:
                raise ValueError(f"resolution range {resolution_range} mm must be 0 < lo <= hi, with the arrays' "
                                 f"pixel spacing (got {spacing})")
            resolution_range = (lo, hi)
        self.resolution_range = resolution_range
        self.spacing = spacing
        self._disc_images = None

    def iterations_per_epoch(self):
        n = max(len(self.arrays.labelled_images), len(self.arrays.unlabelled_images))
        return max(1, math.ceil(n / self.batch_size))

    def _take(self, data, stream, iteration, extra=None):
        index = _cycled_indices(len(data), self.seed, stream, iteration, self.batch_size)
        return data[index], (extra[index] if extra is not None else None)

    def pixel_sizes(self, iteration, which, count):
        """The (count,) pixel sides in mm the resolution augmentation draws for batch ``which``
        (0 labelled, 1 unlabelled, 2 discriminator images, 3 real masks) of ``iteration``."""
        return _rng(self.seed, "resolution", iteration, which).uniform(*self.resolution_range, size=count)

    def _augment(self, iteration, which, images, masks=None):
        if self.augment and self.resolution_range is not None:
            images, masks = rescale_batch(images, masks, self.pixel_sizes(iteration, which, len(images)),
                                          self.spacing)
        if not self.augment or self.rotation_range == 0:
            return images, masks
        angles = _rng(self.seed, "augment", iteration, which).uniform(
            -self.rotation_range, self.rotation_range, size=len(images))
        return rotate_batch(images, masks, angles)

    def batches(self, iteration):
        """All inputs of one iteration as a dict of float32 arrays."""
        a = self.arrays
        images, masks = self._take(a.labelled_images, "labelled", iteration, a.labelled_masks)
        images, masks = self._augment(iteration, 0, images, masks)
        unlabelled, _ = self._take(a.unlabelled_images, "unlabelled", iteration)
        unlabelled, _ = self._augment(iteration, 1, unlabelled)
        disc_images, _ = self._take(self.discriminator_images(), "disc_images", iteration)
        disc_images, _ = self._augment(iteration, 2, disc_images)
        real_masks, _ = self._take(a.real_masks, "real_masks", iteration)
        _, real_masks = self._augment(iteration, 3, real_masks[..., :1], real_masks)
        z = _rng(self.seed, "z", iteration)
        return {
            "labelled_images": images,
            "labelled_masks": masks,
            "unlabelled_images": unlabelled,
            "discriminator_images": disc_images,
            "real_masks": real_masks,
            "z_labelled": z.standard_normal((self.batch_size, self.nz)).astype(np.float32),
            "z_unlabelled": z.standard_normal((self.batch_size, self.nz)).astype(np.float32),
        }

    def discriminator_images(self):
        """Images whose segmentations become fake masks: labelled and unlabelled together."""
        if self._disc_images is None:
            self._disc_images = np.concatenate([self.arrays.labelled_images, self.arrays.unlabelled_images])
        return self._disc_images

    def pool_rng(self, iteration):
        return _rng(self.seed, "pool", iteration)


def shared_updates(schedule, compile_step):
    """{step name: ``compile_step(step)``}, compiled once per (objective, optimiser, networks).

    Steps that differ only in their batch (the two z-reconstruction steps) share one compiled
    update, so each engine traces four functions per iteration rather than five.
    """
    compiled, updates = {}, {}
    for step in schedule:
        key = (step.objective, step.optimizer, step.trains)
        if key not in compiled:
            compiled[key] = compile_step(step)
        updates[step.name] = compiled[key]
    return updates
