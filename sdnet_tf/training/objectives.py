"""The losses of each SDNet training step, as functions of the model and a batch.

Written with ``keras.ops`` only so every engine (TensorFlow here, JAX later) computes exactly
the same objective; engines add only the gradient mechanics.

Each loss is a mean over the batch's images (and pixels), plus, for the discriminator, a
penalty on its weights alone: so the loss of a batch is the mean of the losses of equal
parts of it, which is what lets an engine split a batch across devices.

The objectives in ``SAMPLES_Z`` draw one z per image through the modality encoder's
sampler; their ``noise`` argument is that draw's ``eps`` (B, nz), None to let the sampler
draw it.
"""

from keras import ops

from sdnet_infer.labels import SDNET_CHANNELS
from sdnet_tf import losses

SAMPLES_Z = ("supervised", "unsupervised", "z_reconstruction")
# the objectives an engine passes ``dice_mode`` to
TAKES_DICE_MODE = ("supervised", "supervised_2018", "supervised_unet")


def supervised(model, images, masks, weights, dice_mode="pooled", noise=None, prior=None, omega=0.0):
    """Labelled step: ``dice * Dice + reconstruction * L1 + kl * KL``, plus ``lv_volume *
    lv_volume_loss`` when the model has the LV-volume head, ``focal * focal loss`` when
    ``weights["focal"]`` is set (M&Ms 2020; exponent ``weights["focal_gamma"]``) and
    ``omega * shape`` when a frozen shape ``prior`` is given (see ``shape``)."""
    anatomy, z, mean, logvar = model.decompose(images, training=True, noise=noise)
    predicted = model.segmentor(anatomy, training=True)
    reconstruction = model.reconstruct(anatomy, z)
    terms = {
        "dice": losses.dice_loss(predicted, masks, mode=dice_mode),
        "reconstruction": losses.l1_loss(reconstruction, images),
        "kl": losses.gaussian_kl(mean, logvar),
    }
    total = weights["dice"] * terms["dice"] + weights["reconstruction"] * terms["reconstruction"] \
        + weights["kl"] * terms["kl"]
    if getattr(model, "lv_regressor", None) is not None:
        terms["lv_volume"] = lv_volume_loss(model.lv_regressor(anatomy), masks)
        total = total + weights.get("lv_volume", 1.0) * terms["lv_volume"]
    if weights.get("focal"):
        terms["focal"] = losses.focal_loss(predicted, masks, weights.get("focal_gamma", 2.0))
        total = total + weights["focal"] * terms["focal"]
    if prior is not None:
        terms["shape"] = shape(prior, masks, predicted)
        total = total + omega * terms["shape"]
    return total, terms


def lv_pixel_count(masks):
    """The LV-volume head's target: the LV pixels of each mask (B, 1), from SDNet's [MYO, LV, RV]."""
    lv = SDNET_CHANNELS.index("LV")
    return ops.sum(masks[..., lv], axis=(1, 2))[:, None]


def lv_volume_loss(predicted_counts, masks):
    """Mean absolute error of predicted LV pixel counts (B, 1), over the image's pixel count
    (so a value of 0.01 is 1% of the image)."""
    pixels = float(masks.shape[1] * masks.shape[2])
    return losses.l1_loss(predicted_counts, lv_pixel_count(masks)) / pixels


def shape(prior, masks, predicted):
    """The shape loss of SDNet's foreground masks [MYO, LV, RV]: both turned into the prior's
    channels (background, RV, MYO, LV), resampled to its pixel spacing (``prior.frame_scale``,
    1.0 when unset), cropped to its central window, and compared by the squared distance of the
    prior's codes."""
    size, scale = prior.input_size, getattr(prior, "frame_scale", 1.0)
    return losses.shape_code_loss(prior, losses.to_prior_masks(masks, size, scale),
                                  losses.to_prior_masks(predicted, size, scale))


def shape_projection(prior, predicted):
    """The label-free shape term of unlabelled images: how far the segmentor's masks are from
    the frozen prior's reconstruction of them.

    The predicted masks (B, H, W, 3) [MYO, LV, RV] go to the prior's frame as in ``shape``;
    the prior reconstructs them (posterior means, inference mode) and the most likely label of
    each pixel, one-hot and without gradient, is the target of a pooled soft Dice loss over the
    three foreground channels. A mask the prior reproduces (a plausible shape) costs nothing; a
    hole, a broken ring or a stray island that the prior's reconstruction removes is pulled
    towards it. An addition of this project (``loss.shape_projection``), after denoising
    autoencoders used as anatomical post-processing (Larrazabal et al., IEEE TMI 2020); the
    original SDNet has no such term.

    Returns:
        A scalar in [0, 1].
    """
    size, scale = prior.input_size, getattr(prior, "frame_scale", 1.0)
    masks = losses.to_prior_masks(predicted, size, scale)
    reconstruction = prior.reconstruct(masks, training=False)
    target = ops.stop_gradient(ops.one_hot(ops.argmax(reconstruction, axis=-1), masks.shape[-1], dtype="float32"))
    return losses.dice_loss(masks[..., 1:], target[..., 1:], mode="pooled")


def shape_sizes(model, images, masks, dice_weight, dice_mode, prior):
    """The two terms whose typical sizes set omega: the weighted Dice loss and the shape loss
    of the network in inference mode."""
    predicted = model.segment(images, training=False)
    return {"dice": dice_weight * losses.dice_loss(predicted, masks, mode=dice_mode),
            "shape": shape(prior, masks, predicted)}


def unsupervised(model, images, weights, noise=None, prior=None):
    """Unlabelled step: ``adversarial * LSGAN_G + reconstruction * L1 + kl * KL``, plus
    ``shape_projection * shape_projection(prior, masks)`` when a frozen shape ``prior`` is given
    and ``weights["shape_projection"]`` is set; with ``adversarial`` 0 (M&Ms 2020) and no
    projection term the segmentor and the discriminator are not run."""
    anatomy, z, mean, logvar = model.decompose(images, training=True, noise=noise)
    reconstruction = model.reconstruct(anatomy, z)
    terms = {
        "reconstruction": losses.l1_loss(reconstruction, images),
        "kl": losses.gaussian_kl(mean, logvar),
    }
    total = weights["reconstruction"] * terms["reconstruction"] + weights["kl"] * terms["kl"]
    projection = weights.get("shape_projection", 0.0) if prior is not None else 0.0
    if weights["adversarial"] or projection:
        predicted = model.segmentor(anatomy, training=True)
    if weights["adversarial"]:
        terms["adversarial"] = losses.lsgan_generator_loss(model.discriminator(predicted))
        total = total + weights["adversarial"] * terms["adversarial"]
    if projection:
        terms["shape_projection"] = shape_projection(prior, predicted)
        total = total + projection * terms["shape_projection"]
    return total, terms


def z_reconstruction(model, images, z_prior, weights, noise=None):
    """z-reconstruction step: decode the batch's anatomy with a prior z and recover that z.

    The anatomy is computed in inference mode and held constant (no gradient reaches the
    anatomy encoder), as the original computes it with ``predict`` before the step.
    """
    anatomy = ops.stop_gradient(model.anatomy_encoder(images, training=False))
    fake_images = model.reconstruct(anatomy, z_prior)
    z_recovered, _, _ = model.modality_encoder([anatomy, fake_images], training=True, noise=noise)
    terms = {"z_reconstruction": losses.z_reconstruction_loss(z_recovered, z_prior)}
    return weights["z_reconstruction"] * terms["z_reconstruction"], terms


def discriminator(model, real_masks, fake_masks):
    """Discriminator step: LSGAN discriminator loss plus the spectral penalty."""
    real_scores = model.discriminator(real_masks)
    fake_scores = model.discriminator(fake_masks)
    terms = {"discriminator": losses.lsgan_discriminator_loss(real_scores, fake_scores)}
    penalties = [ops.cast(p, "float32") for p in model.discriminator.losses]
    terms["spectral"] = ops.sum(ops.stack(penalties)) if penalties else ops.convert_to_tensor(0.0)
    return terms["discriminator"] + terms["spectral"], terms


# The MICCAI 2018 precursor (``models.SDNet2018``) ---------------------------------------------
# Its code's two generator trainers and its discriminator trainer (agis85/spatial_factorisation,
# sdnet.py): every term is a mean over the batch, LSGAN terms over every patch score too.


def supervised_2018(model, images, masks, weights, dice_mode="miccai2018"):
    """Labelled step of the 2018 precursor: ``dice * Dice(mask) + mask_reconstruction *
    L1(R(true mask, z)) + reconstruction * L1(R(mask, z)) + adversarial * LSGAN_G(D_M(mask)) +
    mask_image_adversarial * LSGAN_G(D_X(R(true mask, z)))``, z the image's own."""
    mask, z = model.decompose(images, training=True)
    from_true = model.reconstruct(masks, z, training=True)
    terms = {
        "dice": losses.dice_loss(mask, masks, mode=dice_mode),
        "mask_reconstruction": losses.l1_loss(from_true, images),
        "reconstruction": losses.l1_loss(model.reconstruct(mask, z, training=True), images),
        "adversarial": losses.lsgan_generator_loss(model.mask_discriminator(mask)),
        "mask_image_adversarial": losses.lsgan_generator_loss(model.image_discriminator(from_true)),
    }
    return sum(weights[name] * value for name, value in terms.items()), terms


def unsupervised_2018(model, images, weights):
    """Unlabelled step of the 2018 precursor: ``adversarial * LSGAN_G(D_M(mask)) +
    unlabelled_reconstruction * L1(R(mask, z)) + image_adversarial * LSGAN_G(D_X(R(mask, z)))``."""
    mask, z = model.decompose(images, training=True)
    reconstruction = model.reconstruct(mask, z, training=True)
    terms = {
        "adversarial": losses.lsgan_generator_loss(model.mask_discriminator(mask)),
        "unlabelled_reconstruction": losses.l1_loss(reconstruction, images),
        "image_adversarial": losses.lsgan_generator_loss(model.image_discriminator(reconstruction)),
    }
    return sum(weights[name] * value for name, value in terms.items()), terms


def discriminators_2018(model, real_masks, fake_masks, real_images, fake_images, weights=None):
    """Both discriminators of the 2018 precursor in one step, the sum of their LSGAN losses."""
    terms = {
        "mask_discriminator": losses.lsgan_discriminator_loss(model.mask_discriminator(real_masks),
                                                             model.mask_discriminator(fake_masks)),
        "image_discriminator": losses.lsgan_discriminator_loss(model.image_discriminator(real_images),
                                                              model.image_discriminator(fake_images)),
    }
    return terms["mask_discriminator"] + terms["image_discriminator"], terms


def fake_images_2018(model, images, masks):
    """The image discriminator's fakes: ``masks`` decoded with the z of ``images``, inference mode."""
    _, z = model.decompose(images, training=False)
    return model.reconstruct(masks, z, training=False)


# The U-Net and GAN baselines (``models.UNetGAN``) ------------------------------------------
# SDNet's supervised and adversarial terms, on the U-Net's own segmentations.


def supervised_unet(model, images, masks, weights, dice_mode="pooled"):
    """Labelled step of the U-Net baselines: ``dice * Dice``, plus ``focal * focal loss`` when
    ``weights["focal"]`` is set; SDNet's supervised step without its reconstruction and KL."""
    predicted = model.segment(images, training=True)
    terms = {"dice": losses.dice_loss(predicted, masks, mode=dice_mode)}
    total = weights["dice"] * terms["dice"]
    if weights.get("focal"):
        terms["focal"] = losses.focal_loss(predicted, masks, weights.get("focal_gamma", 2.0))
        total = total + weights["focal"] * terms["focal"]
    return total, terms


def unsupervised_unet(model, images, weights):
    """Unlabelled step of the GAN baseline: ``adversarial * LSGAN_G(D(U-Net(x)))``, the
    adversarial term of SDNet's unlabelled step on the U-Net's segmentations."""
    terms = {"adversarial": losses.lsgan_generator_loss(model.discriminator(model.segment(images, training=True)))}
    return weights["adversarial"] * terms["adversarial"], terms


def segment_inference(model, images):
    """Foreground probabilities of the test-time model, BatchNorm in inference mode."""
    return model.segment(images, training=False)
