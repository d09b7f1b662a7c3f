"""The U-Net baseline: SDNet's anatomy encoder (the U-Net of Chartsias et al. 2019) with a
4-channel softmax over (background, RV, MYO, LV) instead of the binarised anatomy factor."""

from sdnet_tf.models.anatomy_encoder import AnatomyEncoder


def build_unet(input_size, filters, depth):
    """A built U-Net baseline.

    Args:
        input_size: side of the square input images, pixels.
        filters: filters of the first level (doubled at each level down).
        depth: number of down-sampling levels.

    Returns:
        An ``AnatomyEncoder`` mapping (N, input_size, input_size, 1) images to (N, input_size,
        input_size, 4) softmax probabilities, not binarised.
    """
    return AnatomyEncoder(input_size, 1, channels=4, filters=filters, depth=depth, binarise=False).build_default()
