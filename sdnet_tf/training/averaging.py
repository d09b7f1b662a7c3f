"""An exponential moving average of the trainable weights (Polyak averaging), for validation
and for the weights a run keeps.

With Adam at the CPU protocol's learning rate (1e-3, beta1 0.5) consecutive epochs' weights
differ enough that validation Dice moves by up to 0.1 from one epoch to the next even with
exact BatchNorm statistics (``results/acdc/validation_instability.log``, "preciseBN" column,
epochs 6 -> 7). The average of the recent weights is a better and steadier estimate of where
training is (Polyak and Juditsky 1992; the ``ExponentialMovingAverage`` of TensorFlow with
``num_updates``); training itself goes on from the raw weights.

``WeightAverage`` keeps one ``keras.Variable`` per averaged weight (so it checkpoints with
every engine), updates it with ``keras.ops`` after each step, and ``swapped`` puts the
averages into the model for validation, restoring every variable afterwards. The trainers
pass their engine's compiler (``engines.stateful_compiler``), so an update is one
compiled call over all the weights instead of five eager operations per weight
(``benchmarks/RESULTS.md`` has the time saved); the arithmetic is the same either way.
"""

import contextlib

import keras
import numpy as np
from keras import ops


class WeightAverage:
    """Exponential moving average of ``variables`` with decay ``min(decay, (1 + t) / (10 + t))``
    at the t-th update (t from 0), so the first updates are not dominated by the initial weights.

    Args:
        variables: the trainable variables to average (e.g. ``model.trainable_variables``).
        decay: the decay per update, in (0, 1); 0.99 averages over about 100 updates.
        compiler: ``compiler(fn, variables, updated)`` compiles the update into one call
            (``engines.stateful_compiler(backend)``); None updates eagerly.

    Raises:
        ValueError: ``decay`` outside (0, 1).
    """

    def __init__(self, variables, decay, compiler=None):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"weight average decay {decay} must be in (0, 1)")
        self.targets = list(variables)
        self.decay = float(decay)
        self.averages = [keras.Variable(np.asarray(v.value), trainable=False, name=f"average_{i:04d}")
                         for i, v in enumerate(self.targets)]
        self.updates = keras.Variable(0, dtype="int64", trainable=False, name="average_updates")
        self._update = lambda keep, take: fold_into(self.averages, self.targets, keep, take)
        if compiler is not None:
            self._update = compiler(self._update, self.averages + self.targets, self.averages)

    def variables(self):
        """The variables to checkpoint (averages, then the update count)."""
        return [*self.averages, self.updates]

    def state(self):
        """The averages and the update count as numpy arrays, by name."""
        return {f"weight_average_{i:04d}": np.asarray(v.value) for i, v in enumerate(self.variables())}

    def load_state(self, state):
        for i, variable in enumerate(self.variables()):
            variable.assign(state[f"weight_average_{i:04d}"])

    def restart(self):
        """Start the average again from the current weights (after weights are loaded)."""
        for average, target in zip(self.averages, self.targets):
            average.assign(target.value)
        self.updates.assign(0)

    def update(self):
        """Fold the current weights into the averages."""
        t = int(np.asarray(self.updates.value))
        decay = min(self.decay, (1.0 + t) / (10.0 + t))
        # the two factors rounded to float32 once, as Python numbers would be; as arrays, a
        # compiled update is traced once for all values
        self._update(np.float32(decay), np.float32(1.0 - decay))
        self.updates.assign(t + 1)

    @contextlib.contextmanager
    def swapped(self, model_variables):
        """Within the block the averaged weights are in place; afterwards every variable of
        ``model_variables`` (weights and BatchNorm statistics alike) has its value from before."""
        saved = [np.array(v.value) for v in model_variables]
        try:
            for average, target in zip(self.averages, self.targets):
                target.assign(average.value)
            yield
        finally:
            for variable, value in zip(model_variables, saved):
                variable.assign(value)


def fold_into(averages, targets, keep, take):
    """``average = average * keep + target * take`` for each pair of variables (the target
    cast to the average's dtype), eagerly or inside a compiled function."""
    for average, target in zip(averages, targets):
        average.assign(ops.add(ops.multiply(average.value, keep), ops.multiply(ops.cast(target.value, average.dtype), take)))


@contextlib.contextmanager
def validation_weights(model_variables, average=None, recalibrate=None):
    """The weights every training loop validates and keeps: within the block, the averaged
    weights when ``average`` (a ``WeightAverage``) is given, then BatchNorm statistics
    recomputed for them by ``recalibrate()`` when given (``batchnorm.recalibrate``); afterwards
    every variable of ``model_variables`` is back to its value from before, so training goes
    on from the raw weights and their own statistics."""
    with average.swapped(model_variables) if average is not None else contextlib.nullcontext():
        if recalibrate is not None:
            recalibrate()
        yield
