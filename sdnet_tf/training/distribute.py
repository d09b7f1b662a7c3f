"""``tf.distribute`` for the TensorFlow engine: strategies, worker roles, batch splitting.

A strategy replicates every variable on each of its replicas (the GPUs of one host for
``MirroredStrategy``; the devices of every host listed in ``TF_CONFIG`` for
``MultiWorkerMirroredStrategy``). The configured batch size is the global batch; each
replica computes its update on an equal slice of it and the gradients are summed across
replicas, so the engine scales every replica's loss by ``1 / num_replicas``.
"""

import contextlib
import os

import keras
import tensorflow as tf

from sdnet_tf.config import ConfigError

STRATEGIES = ("none", "mirrored", "multi_worker")


def make_strategy(kind):
    """The strategy for ``train.distribute``; None for "none" (TensorFlow's default, one device).

    Create it before any other TensorFlow operation: ``MultiWorkerMirroredStrategy`` sets up
    the collective operations, which TensorFlow allows only at program start-up.
    """
    if kind == "none":
        return None
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ConfigError("train.distribute=multi_worker needs the TF_CONFIG environment variable: "
                              '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
                              '"task": {"type": "worker", "index": 0}} on each host, with its own index')
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"train.distribute: expected one of {', '.join(STRATEGIES)}, got {kind!r}")


def task(strategy):
    """This process's ``(type, index)`` in the cluster; ``(None, None)`` outside a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None, None
    return resolver.task_type, resolver.task_id


def is_chief(strategy):
    """Whether this process writes the run directory: outside a cluster always; in a cluster the
    "chief" task, or worker 0 when there is no chief (TensorFlow's convention)."""
    task_type, index = task(strategy)
    if task_type is None:
        return True
    if "chief" in strategy.cluster_resolver.cluster_spec().jobs:
        return task_type == "chief"
    return task_type == "worker" and index == 0


def replicas(strategy):
    """Replicas that share a global batch (1 without a strategy)."""
    return strategy.num_replicas_in_sync if strategy is not None else 1


def check_global_batch(batch_size, strategy):
    """Refuse a global batch the replicas cannot split evenly.

    Equal slices are what make the mean of the replicas' losses the loss of the global batch.
    """
    count = replicas(strategy)
    if batch_size % count:
        raise ConfigError(f"train.batch_size={batch_size} is the global batch and must be divisible by the "
                          f"{count} replicas of {type(strategy).__name__}; use a multiple of {count}")


def split_batch(strategy, array):
    """A numpy batch as per-replica values: replica ``r`` of ``R`` gets rows ``[r * B / R, (r + 1) * B / R)``.

    Every worker holds the whole global batch (the sampler is a pure function of the seed and
    the iteration), so each takes its replicas' rows without any exchange of data.
    """
    count = strategy.num_replicas_in_sync
    if len(array) % count:
        raise ValueError(f"a batch of {len(array)} cannot be split evenly across {count} replicas")
    size = len(array) // count

    def local(context):
        start = context.replica_id_in_sync_group * size
        return array[start:start + size]

    return strategy.experimental_distribute_values_from_function(local)


@contextlib.contextmanager
def synchronized_batchnorm(model):
    """BatchNorm statistics over the global batch while a distributed update is traced.

    With local statistics each replica normalises by its own slice's mean and variance, so
    the update is not the single-device update of the global batch, and each replica would
    write different moving averages into its copy of the mirrored statistics. Keras reads the
    flag when a call is traced; it is restored afterwards, so the model is left as built for
    inference and for other engines (``synchronized=True`` exists only under TensorFlow).
    """
    norms = [layer for network in model.networks().values() for layer in _batch_norms(network)]
    previous = [layer.synchronized for layer in norms]
    for layer in norms:
        layer.synchronized = True
    try:
        yield
    finally:
        for layer, value in zip(norms, previous):
            layer.synchronized = value


def _batch_norms(layer):
    for sublayer in getattr(layer, "layers", ()):
        if isinstance(sublayer, keras.layers.BatchNormalization):
            yield sublayer
        else:
            yield from _batch_norms(sublayer)
