"""Building, saving and loading the shape priors (NVAE, shape autoencoder) of a run directory.

A prior's run directory holds ``config.yaml`` (its ``PriorConfig``) and ``best.npz`` (the
values of every model variable, in creation order, of the best validation epoch). Loading
rebuilds the network from the config, assigns the values and freezes it.
"""

from pathlib import Path

import numpy as np

PRIOR_KINDS = ("nvae", "acnn")
NVAE_KEYS = ("input_size", "stem_channels", "preprocess_blocks", "groups_per_scale", "latent_channels",
             "cells_per_group", "decoder_expansion", "encoder_residual_scale",
             "decoder_residual_scale")
ACNN_KEYS = ("input_size", "code_size", "filters", "levels")


def build_prior(model_config, seed=None):
    """A built NVAE or shape autoencoder from a ``PriorModelConfig``."""
    kind = model_config.kind
    if kind == "nvae":
        from sdnet_tf.models.nvae import NVAE

        model = NVAE(**{k: getattr(model_config, k) for k in NVAE_KEYS}, seed=seed)
    elif kind == "acnn":
        from sdnet_tf.models.acnn import ShapeAutoencoder

        model = ShapeAutoencoder(**{k: getattr(model_config, k) for k in ACNN_KEYS}, seed=seed)
    else:
        raise ValueError(f"prior kind {kind!r}: expected one of {', '.join(PRIOR_KINDS)}")
    return model.build_default()


def variable_values(model):
    """Every variable's value as numpy, keyed ``0000``, ``0001``, ... in creation order."""
    return {f"{i:04d}": np.asarray(v.value) for i, v in enumerate(model.variables)}


def assign_values(model, values, source="weights"):
    """Assign ``variable_values``-style arrays to ``model``, checking count and shapes."""
    keys = sorted(values)
    if len(keys) != len(model.variables):
        raise ValueError(f"{source}: {len(keys)} arrays for {len(model.variables)} variables "
                         "(a different architecture than the config describes)")
    for key, variable in zip(keys, model.variables):
        if tuple(values[key].shape) != tuple(variable.shape):
            raise ValueError(f"{source}: array {key} has shape {values[key].shape}, variable {variable.path} "
                             f"has {tuple(variable.shape)}")
        variable.assign(values[key])


def load_prior(path, freeze=True):
    """The frozen best prior of a run directory (``sdnet-tf train nvae|acnn``).

    Args:
        path: the run directory (``config.yaml`` and ``best.npz``).
        freeze: mark every layer not trainable (the shape loss never updates it).

    Returns:
        ``(model, config)``: the built model, in inference use, and its ``PriorConfig``.
    """
    from sdnet_tf.config import PriorConfig, load_config

    path = Path(path).expanduser()
    config_path, weights = path / "config.yaml", path / "best.npz"
    for needed in (config_path, weights):
        if not needed.is_file():
            raise FileNotFoundError(f"shape prior {path}: no {needed.name} (train one with sdnet-tf train nvae "
                                    "or sdnet-tf train acnn, and give its run directory)")
    config = load_config(config_path, kind=PriorConfig)
    model = build_prior(config.model)
    with np.load(weights) as data:
        assign_values(model, {k: data[k] for k in data.files}, source=str(weights))
    if freeze:
        model.trainable = False
    return model, config
