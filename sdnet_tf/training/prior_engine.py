"""Compiled updates for the shape priors and the U-Net baseline, with TensorFlow.

One ``StepEngine`` wraps a loss function of Keras models: a ``tf.function`` computes the loss
and its gradients (plus coupled L2 weight decay), a finite-value guard inspects them, and a
second ``tf.function`` applies them. A step whose loss or gradients hold a NaN or an infinity
is skipped (the optimiser state is untouched) or stops the run, as ``nonfinite`` says.
"""

import logging

import tensorflow as tf

log = logging.getLogger("sdnet_tf.train")

NONFINITE = ("skip", "stop")


class NonFiniteError(FloatingPointError):
    """A training step produced NaN or infinite values."""


class StepEngine:
    """Guarded gradient updates of ``variables`` on ``loss_fn``.

    Args:
        variables: the trainable variables.
        loss_fn: ``loss_fn(*inputs) -> (total, terms)`` written with keras.ops.
        optimizer: a Keras optimiser (built here).
        weight_decay: L2 coefficient added to every gradient (``g + wd * w``, coupled, as
            PyTorch's Adamax ``weight_decay``).
        jit_compile: compile the gradient computation with XLA.
        nonfinite: "skip" (drop the step, log it) or "stop" (raise ``NonFiniteError``).
        max_nonfinite: consecutive skipped steps after which the run stops anyway.
    """

    def __init__(self, variables, loss_fn, optimizer, weight_decay=0.0, jit_compile=False, nonfinite="skip",
                 max_nonfinite=20):
        if nonfinite not in NONFINITE:
            raise ValueError(f"nonfinite {nonfinite!r}: expected one of {', '.join(NONFINITE)}")
        self.variables = list(variables)
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.weight_decay = float(weight_decay)
        self.nonfinite = nonfinite
        self.max_nonfinite = max_nonfinite
        self.skipped = 0
        self.consecutive = 0
        optimizer.build(self.variables)
        self._compute = tf.function(self._gradients, jit_compile=jit_compile, reduce_retracing=True)
        self._apply = tf.function(lambda grads: optimizer.apply(grads, self.variables))
        self._evaluate = tf.function(lambda *inputs: loss_fn(*inputs), reduce_retracing=True)

    def _gradients(self, *inputs):
        with tf.GradientTape() as tape:
            total, terms = self.loss_fn(*inputs)
        grads = tape.gradient(total, self.variables)
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, self.variables)]
        if self.weight_decay:
            grads = [g + self.weight_decay * tf.cast(v, g.dtype) for g, v in zip(grads, self.variables)]
        finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(total))]
                                        + [tf.reduce_all(tf.math.is_finite(g)) for g in grads]))
        return total, terms, grads, finite

    def step(self, *inputs, where="step"):
        """One update; returns the loss terms (and ``total``) as floats, with ``skipped`` 1.0
        when the guard dropped it."""
        total, terms, grads, finite = self._compute(*inputs)
        out = {name: float(value) for name, value in terms.items()}
        out["total"] = float(total)
        if bool(finite):
            self._apply(grads)
            self.consecutive = 0
            out["skipped"] = 0.0
            return out
        self.skipped += 1
        self.consecutive += 1
        bad = ", ".join(f"{k}={v:.4g}" for k, v in out.items())
        message = (f"{where}: non-finite loss or gradients ({bad}); the step was not applied. "
                   "If it recurs, lower train.learning_rate (e.g. 5e-3 or 1e-3) or raise train.weight_decay")
        if self.nonfinite == "stop" or self.consecutive >= self.max_nonfinite:
            if self.nonfinite == "skip":
                message += f" ({self.consecutive} consecutive non-finite steps: stopping)"
            raise NonFiniteError(message)
        log.warning(message)
        out["skipped"] = 1.0
        return out

    def evaluate(self, *inputs):
        """The loss terms (and ``total``) without an update, as floats."""
        total, terms = self._evaluate(*inputs)
        out = {name: float(value) for name, value in terms.items()}
        out["total"] = float(total)
        return out



def compiled(fn):
    """``fn`` as a ``tf.function`` (the trainers' inference helpers)."""
    return tf.function(fn, reduce_retracing=True)
