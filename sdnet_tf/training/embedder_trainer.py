"""FRDS's mask embedder: a ResNet-18 trained by SimCLR on a split's training masks, cached.

The thesis' FRDS is the Frechet distance between the embeddings of real and generated masks
by a ResNet-18 it trained with SimCLR on ACDC masks (arch/simclr: AdamW 5e-4, weight decay
1e-4, cosine decay to 1e-5, batch 256 views, temperature 0.07). Its weights are not public, so
the embedder is trained here on the training masks of the split being scored, once: the
weights are cached under a key made of those masks and the settings, so every prior of one
split and framing is scored by the same embedder, and its FRDS values compare with each other
(not with the thesis' 33.2, whose embedder differs).
"""

import hashlib
import json
import logging
from pathlib import Path

import keras
import numpy as np
from tqdm import tqdm

from sdnet_tf.data.arrays import read_npz, save_npz
from sdnet_tf.data.masks import contrastive_views, epoch_batches, prior_one_hot
from sdnet_tf.models.embedder import MaskEmbedder
from sdnet_tf.models.priors import assign_values, variable_values

log = logging.getLogger("sdnet_tf.shape_eval")

# the thesis' SimCLR settings; the epochs are this project's CPU budget (the thesis trained 200
# and kept epoch 143)
SETTINGS = {"epochs": 30, "batch_size": 128, "learning_rate": 5e-4, "min_learning_rate": 1e-5,
            "weight_decay": 1e-4, "temperature": 0.07, "width": 64, "seed": 0, "version": 1}


def _key(labels, settings):
    digest = hashlib.sha256(np.ascontiguousarray(labels, np.uint8).tobytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def retrieval_accuracy(model, labels, rng, batch_size=64):
    """Top-1 retrieval of SimCLR pairs: for two views of each of ``labels``' maps, the share
    of views whose most similar other view (cosine, in projection space) is its pair."""
    views = prior_one_hot(contrastive_views(labels, rng))
    z = np.concatenate([np.asarray(model(views[i:i + batch_size], training=False))
                        for i in range(0, len(views), batch_size)])
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-8)
    similarity = z @ z.T
    np.fill_diagonal(similarity, -np.inf)
    count = len(labels)
    pairs = (np.arange(2 * count) + count) % (2 * count)
    return float(np.mean(similarity.argmax(axis=1) == pairs))


def frds_embedder(training, validation, cache_dir=None, settings=None, progress=True):
    """The FRDS embedder of a split's masks: trained by SimCLR, or loaded from the cache.

    Args:
        training: (N, H, W) training label maps (N >= the batch size).
        validation: (M, H, W) validation label maps, for the top-1 retrieval accuracy recorded.
        cache_dir: folder of ``frds-<key>.npz`` (None: train every time, keep nothing).
        settings: overrides of ``SETTINGS`` (epochs, batch_size, width, ...).
        progress: a progress bar over the steps.

    Returns:
        ``(model, info)``: the ``MaskEmbedder`` in inference use, and a JSON-able dict of the
        settings, the cache file, the steps and the validation top-1 retrieval accuracy.
    """
    from sdnet_tf import losses

    if keras.backend.backend() == "jax":
        from sdnet_tf.training.prior_jax_engine import StepEngine
    else:
        from sdnet_tf.training.prior_engine import StepEngine

    settings = {**SETTINGS, **(settings or {})}
    training = np.asarray(training)
    size = training.shape[1]
    path = Path(cache_dir).expanduser() / f"frds-{_key(training, settings)}.npz" if cache_dir else None
    keras.utils.set_random_seed(settings["seed"])
    model = MaskEmbedder(size, width=settings["width"]).build_default()
    if path is not None and path.is_file():
        stored = read_npz(path, "delete it to train the FRDS embedder again")
        info = json.loads(str(stored.pop("info")))
        assign_values(model, stored, source=str(path))
        log.info("FRDS embedder from %s (validation top-1 %.3f)", path, info["validation_top1"])
        return model, info
    steps_per_epoch = len(training) // settings["batch_size"]
    total = settings["epochs"] * steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(
        settings["learning_rate"], decay_steps=max(1, total),
        alpha=settings["min_learning_rate"] / settings["learning_rate"])
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=settings["weight_decay"])

    def loss_fn(views):
        value = losses.nt_xent(model(views, training=True), settings["temperature"])
        return value, {"nt_xent": value}

    engine = StepEngine(model.trainable_variables, loss_fn, optimizer, state=model.non_trainable_variables,
                        networks=(model,))
    rng = np.random.default_rng(settings["seed"])
    bar = tqdm(total=total, desc="FRDS embedder (SimCLR)", unit="step", disable=not progress)
    last = None
    for _ in range(settings["epochs"]):
        for index in epoch_batches(len(training), settings["batch_size"], rng):
            last = engine.step(prior_one_hot(contrastive_views(training[index], rng)))
            bar.update(1)
            bar.set_postfix(loss=f"{last['nt_xent']:.3f}")
    bar.close()
    info = {**settings, "steps": total, "final_loss": None if last is None else float(last["nt_xent"]),
            "validation_top1": retrieval_accuracy(model, np.asarray(validation), np.random.default_rng(1)),
            "training_masks": int(len(training)), "cache": str(path) if path else None}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_npz(path, {**variable_values(model), "info": np.array(json.dumps(info))})
    log.info("FRDS embedder trained: %d steps, final loss %s, validation top-1 %.3f", total, info["final_loss"],
             info["validation_top1"])
    return model, info


def embeddings(model, labels, batch_size=64):
    """(N, 8 * width) embeddings of (N, H, W) label maps."""
    labels = np.asarray(labels)
    return np.concatenate([np.asarray(model.embed(prior_one_hot(labels[i:i + batch_size]), training=False))
                           for i in range(0, len(labels), batch_size)])


def frds_function(settings=None, progress=True):
    """What ``apps.shape_eval.evaluate_prior`` takes as ``frds``: a function of (training
    labels, validation labels, cache folder) returning ``(embed, info)``, where ``embed`` maps
    label maps to the embeddings of that split's ``frds_embedder``."""
    def frds(training, validation, cache_dir):
        model, info = frds_embedder(training, validation, cache_dir, settings, progress)
        return (lambda labels: embeddings(model, labels)), info

    return frds
