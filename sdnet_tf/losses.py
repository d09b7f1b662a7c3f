"""SDNet losses as plain functions of tensors (``keras.ops`` only, no TensorFlow import).

Every function returns a scalar (the batch mean) in float32, whatever the compute dtype of its
inputs, so the losses are safe under mixed precision.
"""

from keras import ops

DICE_SMOOTH = 0.1


def _f32(x):
    return ops.cast(x, "float32")


def dice_coefficient(pred, target, mode="pooled", smooth=DICE_SMOOTH):
    """Soft Dice per sample, (B,).

    Args:
        pred: predicted foreground probabilities (B, H, W, L).
        target: reference masks (B, H, W, L), one-hot foreground channels (background excluded).
        mode: "pooled" sums over height, width and all L channels together, as the original
            does; "per_class" computes one Dice per channel and averages the L values.
        smooth: the additive smoothing term of numerator and denominator (0.1 in the original).
    """
    pred, target = _f32(pred), _f32(target)
    if mode == "pooled":
        axes = (1, 2, 3)
        inter = ops.sum(pred * target, axis=axes)
        total = ops.sum(pred, axis=axes) + ops.sum(target, axis=axes)
        return (2.0 * inter + smooth) / (total + smooth)
    if mode == "per_class":
        axes = (1, 2)
        inter = ops.sum(pred * target, axis=axes)  # (B, L)
        total = ops.sum(pred, axis=axes) + ops.sum(target, axis=axes)
        return ops.mean((2.0 * inter + smooth) / (total + smooth), axis=-1)
    raise ValueError(f"dice mode must be 'pooled' or 'per_class', got {mode!r}")


def dice_loss(pred, target, mode="pooled", smooth=DICE_SMOOTH):
    """``1 - mean_batch(dice_coefficient)``."""
    return 1.0 - ops.mean(dice_coefficient(pred, target, mode=mode, smooth=smooth))


def l1_loss(pred, target):
    """Mean absolute error over all elements."""
    return ops.mean(ops.abs(_f32(pred) - _f32(target)))


def gaussian_kl(mean, logvar):
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over z, averaged over the batch."""
    mean, logvar = _f32(mean), _f32(logvar)
    per_sample = -0.5 * ops.sum(1.0 + logvar - ops.square(mean) - ops.exp(logvar), axis=-1)
    return ops.mean(per_sample)


def lsgan_discriminator_loss(real_scores, fake_scores):
    """LSGAN discriminator side: ``mean((D(real) - 1)^2) + mean(D(fake)^2)``."""
    real_scores, fake_scores = _f32(real_scores), _f32(fake_scores)
    return ops.mean(ops.square(real_scores - 1.0)) + ops.mean(ops.square(fake_scores))


def lsgan_generator_loss(fake_scores):
    """LSGAN generator side: ``mean((D(fake) - 1)^2)``."""
    return ops.mean(ops.square(_f32(fake_scores) - 1.0))


def z_reconstruction_loss(z_recovered, z_sampled):
    """L1 between a z drawn from the prior and the one the modality encoder recovers."""
    return l1_loss(z_recovered, z_sampled)
