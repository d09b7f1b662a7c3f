"""Parameter counts of the SDNet networks."""

from sdnet_tf.apps.train import build_sdnet


def parameter_counts(config):
    """Build SDNet for ``config`` and return {network: (total, trainable)}."""
    import numpy as np

    model = build_sdnet(config)
    model.build()
    counts = {}
    for name, network in model.networks().items():
        trainable = sum(int(np.prod(v.shape)) for v in network.trainable_variables)
        counts[name] = (network.count_params(), trainable)
    return counts


def network_summary(config):
    """A table of the networks and their parameter counts, as text."""
    counts = parameter_counts(config)
    m = config.model
    name = "SDNet (MICCAI 2018)" if m.kind == "sdnet2018" else "SDNet"
    channels = 1 if m.kind == "sdnet2018" else m.anatomy_channels
    lines = [f"{name} at {m.input_size}x{m.input_size}, C={channels}, nz={m.nz}, "
             f"U-Net filters {m.unet_filters}, classes {m.num_classes}",
             f"{'network':<18}{'parameters':>14}{'trainable':>14}"]
    for name, (total, trainable) in counts.items():
        lines.append(f"{name:<18}{total:>14,}{trainable:>14,}")
    lines.append(f"{'total':<18}{sum(c[0] for c in counts.values()):>14,}"
                 f"{sum(c[1] for c in counts.values()):>14,}")
    return "\n".join(lines)
