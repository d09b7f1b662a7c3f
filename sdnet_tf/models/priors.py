"""Building the shape priors (NVAE, shape autoencoder) and the T-L network from their model
config, and their
variables as numbered arrays (the form ``best.npz`` and the checkpoints keep them in; reading
and writing those files is ``sdnet_tf.inference.load_prior``'s and the trainers' job)."""

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


def build_tl(model_config, prior_model_config, seed=None):
    """A built ``TLNetwork`` from a ``TLModelConfig`` and its ACNN prior's ``PriorModelConfig``:
    the autoencoder as the prior's, the predictor's filters and levels the config's or, at 0,
    the autoencoder's. The autoencoder's weights are the caller's to assign."""
    from sdnet_tf.models.tl import TLNetwork

    p, m = prior_model_config, model_config
    return TLNetwork(input_size=p.input_size, code_size=p.code_size, autoencoder_filters=p.filters,
                     autoencoder_levels=p.levels, filters=m.filters or p.filters, levels=m.levels or p.levels,
                     seed=seed).build_default()


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
