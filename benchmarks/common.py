"""Helpers the benchmark scripts share: timing a trainer's iterations and reporting results.

Imports no TensorFlow or JAX, so every benchmark can use it whatever backend it runs on.
"""

import json
import time

from sdnet_tf.atomic import write_text


def time_calls(call, warmup, iterations):
    """(seconds of the ``warmup`` calls together, seconds of each timed call); ``call(i)`` is
    given the call's index, counting the warm-up ones."""
    start = time.perf_counter()
    for i in range(warmup):
        call(i)
    warmup_s = time.perf_counter() - start
    times = []
    for i in range(warmup, warmup + iterations):
        start = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - start)
    return warmup_s, times


def time_iterations(trainer, warmup, iterations):
    """(seconds of the ``warmup`` iterations together, seconds of each timed iteration)."""
    return time_calls(lambda i: trainer.train_iteration(), warmup, iterations)


def report(result, out=None):
    """Print ``result`` as indented JSON and, with ``out``, write it there atomically."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        write_text(out, text + "\n")
