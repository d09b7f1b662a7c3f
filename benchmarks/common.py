"""Helpers the benchmark scripts share: timing a trainer's iterations and reporting results.

Imports no TensorFlow or JAX, so every benchmark can use it whatever backend it runs on.
"""

import json
import time

from sdnet_tf.atomic import write_text


def time_iterations(trainer, warmup, iterations):
    """(seconds of the ``warmup`` iterations together, seconds of each timed iteration)."""
    start = time.perf_counter()
    for _ in range(warmup):
        trainer.train_iteration()
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        trainer.train_iteration()
        times.append(time.perf_counter() - start)
    return warmup_s, times


def report(result, out=None):
    """Print ``result`` as indented JSON and, with ``out``, write it there atomically."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        write_text(out, text + "\n")
