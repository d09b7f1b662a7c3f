"""The losses of the shape priors, the U-Net baseline and the T-L network, with ``keras.ops`` only.

Each function takes the model and a batch and returns ``(total, terms)``: the scalar to
minimise and a dict of scalars to log.
"""

from keras import ops

from sdnet_tf import losses


def kl_coefficient(step, steps_per_epoch, warmup_epochs=30.0, const_steps=10, minimum=1e-4):
    """NVAE's KL warm-up: ``minimum`` for ``const_steps`` steps, then linear to 1 over
    ``warmup_epochs`` epochs (never below ``minimum``)."""
    total = max(1.0, warmup_epochs * steps_per_epoch)
    return float(max(min((step - const_steps) / total, 1.0), minimum))


def nvae(model, masks, kl_coefficient, betas, alpha, balance=True):
    """Negative ELBO with per-group KL weights, warm-up coefficient and KL balancing.

    ``reconstruction + coefficient * mean_batch sum_i c_i beta_i KL_i``, where the
    reconstruction is the pixel-summed categorical cross-entropy of a posterior sample's
    decoding, ``beta_i`` the weight of group i's scale and, while ``coefficient`` < 1 and
    ``balance`` is on, ``c_i`` NVAE's balancing coefficients of the groups' KL before the
    ``beta_i`` (``losses.kl_balance``; the thesis' ``_balance_kl``), else 1.

    Args:
        model: an ``NVAE``.
        masks: one-hot masks (B, H, W, K).
        kl_coefficient: the warm-up coefficient (a scalar tensor or float).
        betas: (G,) per-group KL weights.
        alpha: (G,) per-group size factors (``NVAE.group_alpha``, official NVAE's), or ones
            (the thesis').
        balance: apply KL balancing during the warm-up.

    Returns:
        ``(total, terms)``; terms hold ``reconstruction``, ``kl`` (unweighted, summed over
        groups), ``kl_weighted`` and ``kl_group{i}`` (batch means).
    """
    logits, kl = model(masks, training=True, sample=True)  # (B, H, W, K), (B, G)
    reconstruction = losses.pixel_cross_entropy(masks, logits)
    weighted = ops.cast(kl, "float32") * ops.convert_to_tensor(betas, "float32")[None, :]
    coefficient = ops.cast(ops.convert_to_tensor(kl_coefficient), "float32")
    if balance:
        c = losses.kl_balance(kl, alpha)
        c = ops.where(coefficient < 1.0, c, ops.ones_like(c))
    else:
        c = ops.ones((weighted.shape[1],), "float32")
    kl_weighted = ops.mean(ops.sum(weighted * c[None, :], axis=1))
    total = reconstruction + coefficient * kl_weighted
    per_group = ops.mean(ops.cast(kl, "float32"), axis=0)
    terms = {"reconstruction": reconstruction, "kl": ops.sum(per_group), "kl_weighted": kl_weighted}
    terms.update({f"kl_group{i}": per_group[i] for i in range(weighted.shape[1])})
    return total, terms


def nvae_validation(model, masks, betas):
    """The validation objective with the warm-up done: reconstruction + sum_i beta_i KL_i."""
    logits, kl = model(masks, training=False, sample=True)
    reconstruction = losses.pixel_cross_entropy(masks, logits)
    weighted = ops.mean(ops.sum(ops.cast(kl, "float32") * ops.convert_to_tensor(betas, "float32")[None, :], axis=1))
    return reconstruction + weighted, {"reconstruction": reconstruction, "kl_weighted": weighted}


def autoencoder(model, masks, corrupted, training=True):
    """The shape autoencoder's denoising loss: decode the label-swapped masks, score against
    the clean ones (pixel-summed categorical cross-entropy). ``training``: BatchNorm's mode;
    validation passes False, so scoring never moves the moving statistics."""
    logits = model(corrupted, training=training)
    reconstruction = losses.pixel_cross_entropy(masks, logits)
    return reconstruction, {"reconstruction": reconstruction}


def segmentation(model, images, masks, alpha=1.0, omega=0.0, prior=None):
    """The U-Net baseline: ``alpha * CE + omega * shape loss`` (the thesis' ACU-Net).

    Args:
        model: the U-Net; its softmax has the prior's channels (background, RV, MYO, LV).
        images: (B, H, W, 1).
        masks: one-hot (B, H, W, 4).
        alpha: weight of the pixel-averaged cross-entropy.
        omega: weight of the shape loss (ignored without a prior).
        prior: a frozen prior with ``codes`` and ``input_size``, or None.

    Returns:
        ``(total, terms)`` with ``cross_entropy`` and, with a prior, ``shape``.
    """
    predicted = model(images, training=True)
    terms = {"cross_entropy": losses.mean_cross_entropy(masks, predicted)}
    total = alpha * terms["cross_entropy"]
    if prior is not None:
        terms["shape"] = shape_term(prior, masks, predicted)
        total = total + omega * terms["shape"]
    return total, terms


def shape_term(prior, masks, predicted):
    """The shape loss of prior-ordered masks and predictions, resampled to the prior's pixel
    spacing (``prior.frame_scale``, 1.0 when unset) and cropped to its size."""
    size, scale = prior.input_size, getattr(prior, "frame_scale", 1.0)
    return losses.shape_code_loss(prior, losses.prior_window(masks, size, scale),
                                  losses.prior_window(predicted, size, scale))


def tl_code(model, images, masks, code=1.0, cross_entropy=0.0, training=True):
    """The T-L network's loss: ``code * ||p(x) - f(y)||^2 + cross_entropy * CE(y, softmax(g(p(x))))``.

    ``p`` is the predictor, ``f`` and ``g`` the frozen autoencoder's encoder and decoder (in
    inference mode), the squared distance summed over the code and averaged over the batch
    (``losses.code_distance``), the cross-entropy averaged over pixels and the batch. Oktay
    et al. (2018) train the predictor with the code distance alone, as Girdhar et al.'s second
    stage, so ``cross_entropy`` is 0 by default and its term is then not computed.

    Args:
        model: a ``TLNetwork``.
        images: (B, H, W, 1).
        masks: one-hot (B, H, W, 4) in the autoencoder's channels (background, RV, MYO, LV).
        code: weight of the code distance.
        cross_entropy: weight of the decoded mask's cross-entropy.
        training: the predictor's BatchNorm mode (False for validation).

    Returns:
        ``(total, terms)`` with ``code`` and, with a cross-entropy weight, ``cross_entropy``.
    """
    predicted = model.predict_codes(images, training=training)  # (B, code_size)
    terms = {"code": losses.code_distance(predicted, model.target_codes(masks))}
    total = code * terms["code"]
    if cross_entropy:
        decoded = ops.softmax(model.decode(predicted), axis=-1)  # (B, H, W, 4)
        terms["cross_entropy"] = losses.mean_cross_entropy(masks, decoded)
        total = total + cross_entropy * terms["cross_entropy"]
    return total, terms
