"""Helpers the benchmark scripts share: timing a trainer's iterations and reporting results.

Imports no TensorFlow or JAX, so every benchmark can use it whatever backend it runs on.
"""

import json
import statistics
import subprocess
import time

from sdnet_tf.atomic import write_text


def seeded_sdnet(config):
    """``(model, arrays)``: the benchmarks' SDNet of ``config`` (seed 1, built in
    ``config.train.precision``, as ``sdnet-tf train`` builds it) and its synthetic data (32
    labelled and 8 unlabelled-per-labelled images of the config's size, seed 0)."""
    import keras

    from sdnet_tf.apps.train import apply_precision
    from sdnet_tf.config import model_kwargs
    from sdnet_tf.data.synthetic import synthetic_arrays
    from sdnet_tf.models import SDNet

    keras.utils.set_random_seed(1)
    apply_precision(config)  # before the layers are made: they take the policy then
    arrays = synthetic_arrays(32, 8, config.model.input_size, 0.5, seed=0)
    model = SDNet(**model_kwargs(config), seed=1)
    model.build()
    return model, arrays


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


def profile_iterations(trainer, warmup, iterations):
    """Where one iteration's time goes: (median seconds per iteration, {part: median seconds
    per iteration}) over ``iterations`` iterations after ``warmup`` untimed ones.

    The parts are each step of the schedule (``engine.run_step``, which returns the loss
    terms as Python floats and so waits for the step), the fake masks of the discriminator's
    pool (``engine.predict_masks``), the weight average's update (``trainer.after_step``) and
    "host" (the rest: drawing and augmenting the batches, the pool, Python).
    """
    engine = trainer.engine
    spent = {}

    def timed(name_of, function):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                key = name_of(*args)
                spent[key] = spent.get(key, 0.0) + time.perf_counter() - start
        return call

    run_step, predict_masks, after_step = engine.run_step, engine.predict_masks, trainer.after_step
    engine.run_step = timed(lambda step, *_: step.name, run_step)
    engine.predict_masks = timed(lambda *_: "fake masks", predict_masks)
    trainer.after_step = timed(lambda *_: "weight average", after_step)
    try:
        for _ in range(warmup):
            trainer.train_iteration()
        rows, totals = [], []
        for _ in range(iterations):
            spent.clear()
            start = time.perf_counter()
            trainer.train_iteration()
            total = time.perf_counter() - start
            rows.append(dict(spent, host=total - sum(spent.values())))
            totals.append(total)
    finally:
        engine.run_step, engine.predict_masks, trainer.after_step = run_step, predict_masks, after_step
    parts = {key: statistics.median(row.get(key, 0.0) for row in rows) for key in rows[0]}
    return statistics.median(totals), parts


def matmul_rate(n, product, repeats=5):
    """Measured TFLOP/s of an (n, n) @ (n, n) product: ``product()`` runs one and waits for it;
    the median of ``repeats`` timed calls after one untimed."""
    _, times = time_calls(lambda i: product(), 1, repeats)
    return 2 * n ** 3 / statistics.median(times) / 1e12


def iteration_flops(trainer):
    """The engine's count of one SDNet iteration's floating-point operations: the five updates
    and the fake-mask pass, on the batches of iteration 0 (XLA's ``cost_analysis`` on JAX,
    TensorFlow's profiler on TensorFlow). Returns (total, {step name: count})."""
    from sdnet_tf.training.trainer import _step_inputs

    engine, batch = trainer.engine, trainer.sampler.batches(0)
    fakes = batch["real_masks"]  # the discriminator's inputs have the real masks' shape
    total = engine.predict_flops(batch["discriminator_images"])
    per_step = {}
    for step in trainer.schedule:
        per_step[step.name] = engine.step_flops(step, *_step_inputs(step, batch, fakes))
        total += per_step[step.name]
    return total, per_step


def report(result, out=None):
    """Print ``result`` as indented JSON and, with ``out``, write it there atomically."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        write_text(out, text + "\n")


def run_json(command, env=None):
    """Run a benchmark ``command`` in its own process and return the JSON object on the last
    line of its output; a failing command ends this one with the end of its error output."""
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(map(str, command[:2]))} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
