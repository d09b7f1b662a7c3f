"""SDNet losses as plain functions of tensors (``keras.ops`` only, no TensorFlow import).

Every function returns a scalar (the batch mean) in float32, whatever the compute dtype of its
inputs, so the losses are safe under mixed precision.
"""

import math

from keras import ops

from sdnet_infer.labels import LABEL_NAMES, SDNET_CHANNELS

DICE_SMOOTH = 0.1


def _f32(x):
    return ops.cast(x, "float32")


def dice_coefficient(pred, target, mode="pooled", smooth=DICE_SMOOTH):
    """Soft Dice per sample, (B,).

    Args:
        pred: predicted foreground probabilities (B, H, W, L).
        target: reference masks (B, H, W, L), one-hot foreground channels (background excluded).
        mode: "pooled" sums over height, width and all L channels together, as the original
            does; "per_class" computes one Dice per channel and sample and averages the L
            values; "batch" computes one Dice per channel over the whole batch (sums over
            samples, height and width; nnU-Net's "batch Dice", Isensee et al., Nature Methods
            2021) and averages the L values, so a structure absent from one slice (the RV
            below the base, every class above it) is not a separate all-or-nothing term; the
            value is repeated for each sample. Under tf.distribute the batch is each replica's.
            "miccai2018" is "pooled" as the MICCAI 2018 precursor's code wrote it, the
            smoothing added to the intersection before doubling: (2 (I + s)) / (total + s),
            so an empty mask predicted empty scores 2.
        smooth: the additive smoothing term of numerator and denominator (0.1 in the original).

    Raises:
        ValueError: an unknown ``mode``.
    """
    pred, target = _f32(pred), _f32(target)
    if mode in ("pooled", "miccai2018"):
        axes = (1, 2, 3)
        inter = ops.sum(pred * target, axis=axes)
        total = ops.sum(pred, axis=axes) + ops.sum(target, axis=axes)
        if mode == "miccai2018":
            return 2.0 * (inter + smooth) / (total + smooth)
        return (2.0 * inter + smooth) / (total + smooth)
    if mode == "per_class":
        axes = (1, 2)
        inter = ops.sum(pred * target, axis=axes)  # (B, L)
        total = ops.sum(pred, axis=axes) + ops.sum(target, axis=axes)
        return ops.mean((2.0 * inter + smooth) / (total + smooth), axis=-1)
    if mode == "batch":
        axes = (0, 1, 2)
        inter = ops.sum(pred * target, axis=axes)  # (L,)
        total = ops.sum(pred, axis=axes) + ops.sum(target, axis=axes)
        value = ops.mean((2.0 * inter + smooth) / (total + smooth))
        return ops.zeros_like(pred[:, 0, 0, 0]) + value
    raise ValueError(f"dice mode must be 'pooled', 'per_class', 'batch' or 'miccai2018', got {mode!r}")


def dice_loss(pred, target, mode="pooled", smooth=DICE_SMOOTH):
    """``1 - mean_batch(dice_coefficient)``."""
    return 1.0 - ops.mean(dice_coefficient(pred, target, mode=mode, smooth=smooth))


def focal_loss(pred, target, gamma=2.0, eps=1e-7):
    """Focal loss (Lin et al., ICCV 2017) of foreground probabilities against one-hot masks.

    The background is ``1 - sum`` of the foreground channels, so each pixel is a categorical
    distribution over background and the L foreground classes; the loss is the mean over
    pixels and images of ``-(1 - p_t)^gamma * log(p_t)``, p_t being the probability of the
    pixel's true class. ``gamma`` 0 is the pixel cross-entropy.

    Args:
        pred: (B, H, W, L) foreground probabilities (the segmentor's output).
        target: (B, H, W, L) one-hot foreground masks (background: all zeros).
        gamma: the focusing exponent.

    Returns:
        A scalar.
    """
    pred, target = _f32(pred), _f32(target)
    p_t = ops.sum(pred * target, axis=-1) + (1.0 - ops.sum(pred, axis=-1)) * (1.0 - ops.sum(target, axis=-1))
    p_t = ops.clip(p_t, eps, 1.0)
    if not gamma:  # the cross-entropy: x ** 0 has the gradient 0 * x ** -1, NaN where p_t is 1
        return ops.mean(-ops.log(p_t))
    # (1 - p_t) kept at eps or more for the same reason when gamma < 1
    return ops.mean(-ops.power(ops.maximum(1.0 - p_t, eps), gamma) * ops.log(p_t))


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


# ---------------------------------------------------------------------------- shape priors
def pixel_cross_entropy(masks, logits):
    """Categorical cross-entropy summed over pixels, averaged over the batch.

    Args:
        masks: one-hot (or soft) targets (B, H, W, K).
        logits: (B, H, W, K).

    Returns:
        A scalar: the NVAE's reconstruction term (a negative log-likelihood per mask).
    """
    log_p = ops.log_softmax(_f32(logits), axis=-1)
    return ops.mean(ops.sum(-_f32(masks) * log_p, axis=(1, 2, 3)))


def mean_cross_entropy(masks, probabilities, eps=1e-7):
    """Categorical cross-entropy of probabilities, averaged over pixels and the batch."""
    p = ops.clip(_f32(probabilities), eps, 1.0)
    return ops.mean(ops.sum(-_f32(masks) * ops.log(p), axis=-1))


def to_prior_masks(foreground, size=None, scale=1.0):
    """SDNet's foreground masks [MYO, LV, RV] -> a prior's [background, RV, MYO, LV].

    Background is one minus the foreground sum. With ``size`` the masks are then brought to the
    prior's frame by ``prior_window``: resampled by ``scale`` and the central ``size`` x ``size``
    window kept. At ``scale`` 1 a prior trained on the same preprocessing sees exactly that
    window (both are centre crops of one slice resampled about its centre); at another scale,
    the same window up to the resampling's interpolation.

    Args:
        foreground: (B, H, W, 3) probabilities or one-hot masks.
        size: the prior's input size; None keeps H x W.
        scale: the network's mm per pixel over the prior's (1.0: the same spacing).

    Returns:
        (B, size, size, 4).
    """
    foreground = _f32(foreground)
    background = 1.0 - ops.sum(foreground, axis=-1, keepdims=True)
    channels = [background if value == 0 else foreground[..., SDNET_CHANNELS.index(name):SDNET_CHANNELS.index(name) + 1]
                for value, name in LABEL_NAMES.items()]  # channel k is ACDC label k
    masks = ops.concatenate(channels, axis=-1)
    return masks if size is None else prior_window(masks, size, scale)


def resampled_size(size, scale, window):
    """The side, in pixels, of ``size``-pixel masks resampled by ``scale`` before a central
    ``window`` is read: ``size * scale`` rounded to the nearest integer of ``window``'s parity,
    so the window is centred exactly (the scale changes by at most one pixel in the side)."""
    exact = size * scale
    low = int(math.floor(exact))
    if (low - window) % 2:
        low -= 1
    return low if exact - low <= low + 2 - exact else low + 2


def prior_window(masks, size, scale=1.0):
    """(B, H, W, K) masks in a prior's frame: resampled to the prior's pixel spacing, then the
    central ``size`` x ``size`` window.

    With ``scale`` (the masks' mm per pixel over the prior's) other than 1 the masks are
    resized bilinearly, with an antialiasing filter when shrinking (so every pixel of the
    network's masks reaches the prior), to ``resampled_size(H, scale, size)`` pixels, whose
    central window lies exactly about the image centre, as both frames' centre crops do. One-hot
    masks become soft at their edges, as predicted probabilities are; a network's truth and
    prediction go through the same resampling before the prior encodes them.

    Raises:
        ValueError: the resampled masks are smaller than ``size`` (the prior would read
            beyond the network's field of view).
    """
    if abs(scale - 1.0) > 1e-6:
        height, width = masks.shape[1], masks.shape[2]
        masks = ops.image.resize(masks, (resampled_size(height, scale, size), resampled_size(width, scale, size)),
                                 interpolation="bilinear", antialias=scale < 1.0)
    return centre_crop(masks, size)


def centre_crop(masks, size):
    """The central ``size`` x ``size`` window of (B, H, W, K) masks (H = W >= size)."""
    height = masks.shape[1]
    if size > height:
        raise ValueError(f"a prior of input size {size} cannot read masks of size {height}")
    top = (height - size) // 2
    return masks[:, top:top + size, top:top + size, :]


def shape_code_loss(prior, target_masks, predicted_masks):
    """ACNN / ACU-Net shape loss: squared distance between a frozen prior's codes.

    ``sum_i || c_i(target) - c_i(predicted) ||^2`` over the prior's code tensors (the NVAE's
    seven groups of posterior means, the autoencoder's one 64-d code), summed over each code's
    elements and averaged over the batch. The prior runs in inference mode; the target's
    codes carry no gradient, so only the predicted masks are pushed.

    Args:
        prior: a model with ``codes(masks, training=False)`` returning a list of tensors.
        target_masks: (B, H, W, K) one-hot, in the prior's channel order and size.
        predicted_masks: (B, H, W, K) probabilities, likewise.

    Returns:
        A scalar.
    """
    targets = prior.codes(target_masks, training=False)
    predictions = prior.codes(predicted_masks, training=False)
    total = 0.0
    for t, p in zip(targets, predictions):
        total = total + code_distance(p, t)
    return total


def code_distance(predicted, target):
    """Squared Euclidean distance between codes, ``mean_batch || predicted - target ||^2``.

    Summed over each sample's code elements, averaged over the batch; the target carries no
    gradient. The T-L network's loss (Oktay et al. 2018, after Girdhar et al. 2016) and each
    term of ``shape_code_loss``.

    Args:
        predicted: codes (B, ...).
        target: codes of the same shape.

    Returns:
        A scalar, in squared code units.
    """
    diff = _f32(predicted) - ops.stop_gradient(_f32(target))
    return ops.mean(ops.sum(ops.reshape(diff * diff, (ops.shape(diff)[0], -1)), axis=1))


def kl_balance(kl, alpha):
    """NVAE's KL balancing coefficients of each group, from a batch's KL (B, G).

    ``c_i = mean_batch |KL_i| + 0.01``, divided by the group's size factor ``alpha_i`` and
    multiplied by their sum, then rescaled so that the coefficients average 1. Groups that
    carry more KL get a larger weight, which keeps every group in use during the warm-up.

    Args:
        kl: (B, G).
        alpha: (G,) size factors (spatial area of the group / groups of its scale, over the
            smallest).

    Returns:
        (G,) coefficients without gradient.
    """
    c = ops.mean(ops.abs(_f32(kl)), axis=0) + 0.01
    c = c / _f32(alpha) * ops.sum(c)
    return ops.stop_gradient(c / ops.mean(c))


def spectral_norms(kernels, vectors, iterations=1):
    """Largest singular value of each conv kernel by power iteration.

    Each kernel (kh, kw, Cin, Cout) is read as a (kh * kw * Cin, Cout) matrix W. Starting from
    the stored left vector u, ``iterations`` rounds of ``v = W^T u / |.|, u = W v / |.|`` give
    ``sigma = u^T W v``; gradients flow through W only (u and v are constants), as in NVAE's
    spectral regularisation.

    Args:
        kernels: list of 4-D kernels.
        vectors: list of matching u vectors (kh * kw * Cin,).
        iterations: power-iteration rounds.

    Returns:
        ``(sigmas, new_vectors)``: a list of scalars and the updated u vectors.
    """
    sigmas, updated = [], []
    for kernel, u in zip(kernels, vectors):
        w = ops.reshape(_f32(kernel), (-1, kernel.shape[-1]))  # (kh * kw * Cin, Cout)
        u = ops.stop_gradient(_f32(u))
        w_const = ops.stop_gradient(w)
        for _ in range(iterations):
            v = ops.matmul(u, w_const)
            v = v / (ops.norm(v) + 1e-12)
            u = ops.matmul(w_const, v)
            u = u / (ops.norm(u) + 1e-12)
        sigmas.append(ops.sum(u * ops.matmul(w, v)))
        updated.append(u)
    return sigmas, updated


def nt_xent(projections, temperature=0.07):
    """SimCLR's contrastive loss (NT-Xent) of a batch of view pairs.

    Rows ``i`` and ``i + N`` of the (2N, D) projections are the two views of one mask. Each
    row's cosine similarities to all other rows, over ``temperature``, are a softmax whose
    target is its pair: the loss is ``mean_i [log sum_{j != i} exp(s_ij / T) - s_i,pair / T]``
    (Chen et al., ICML 2020; the thesis' arch/simclr/simclr.py, temperature 0.07).

    Args:
        projections: (2N, D), N >= 1.
        temperature: the softmax temperature.

    Returns:
        A scalar.
    """
    z = _f32(projections)
    z = z / ops.maximum(ops.sqrt(ops.sum(z * z, axis=1, keepdims=True)), 1e-8)
    count = z.shape[0]
    similarity = ops.matmul(z, ops.transpose(z)) / temperature
    self_mask = ops.eye(count, dtype="float32")
    similarity = similarity - 1e9 * self_mask  # a row is not its own candidate
    pairs = ops.roll(self_mask, count // 2, axis=0)  # row i's pair is row i + N (mod 2N)
    positive = ops.sum(similarity * pairs, axis=1)
    return ops.mean(ops.logsumexp(similarity, axis=1) - positive)
