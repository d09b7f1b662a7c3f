"""Compiled updates for the shape priors and the U-Net baseline, with TensorFlow.

One ``StepEngine`` wraps a loss function of Keras models: a ``tf.function`` computes the loss
and its gradients (plus coupled L2 weight decay), a finite-value guard inspects them, and a
second ``tf.function`` applies them. A step whose loss or gradients hold a NaN or an infinity
is skipped (weights, optimiser state, BatchNorm statistics and the other float state are
left as they were) or stops the run, as ``nonfinite`` says (``guard.Guard``).
"""

import tensorflow as tf

from sdnet_tf.training.guard import Guard, as_floats
from sdnet_tf.training.batchnorm import batchnorm_layers
from sdnet_tf.training.tf_engine import fused_batchnorm, optimizer_update


class StepEngine(Guard):
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
        state: the other variables ``loss_fn`` may assign (BatchNorm statistics, spectral
            vectors, seed states). ``tf.function`` tracks them itself; the engine restores
            the floating-point ones after a skipped step, so a non-finite batch cannot
            leave NaN in the BatchNorm statistics.
        frozen: variables ``loss_fn`` only reads (a frozen prior); ``tf.function`` tracks
            them itself, so this engine does not use the list (the JAX engine does).
        fused: apply a plain Adam or Adamax with TensorFlow's fused kernel
            (``tf_engine.apply_adam``: the same update to float rounding), and run the
            BatchNorm layers of ``networks`` called in training mode as TensorFlow's fused
            kernel (``tf_engine.fused_batchnorm``, also the same to float rounding); False:
            Keras' own update and ops.
        networks: the Keras models ``loss_fn`` trains, whose BatchNorm layers ``fused`` covers.
    """

    def __init__(self, variables, loss_fn, optimizer, weight_decay=0.0, jit_compile=False, nonfinite="skip",
                 max_nonfinite=20, state=(), frozen=(), fused=True, networks=()):
        super().__init__(nonfinite, max_nonfinite)
        self._norms = batchnorm_layers(*networks) if fused else []
        self.variables = list(variables)
        self.state = [v for v in state if "float" in str(v.dtype)]
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.weight_decay = float(weight_decay)
        optimizer.build(self.variables)
        # autograph off: the losses are keras.ops code that jax.jit traces too (no tensor-dependent
        # Python control flow), so converting them would only cost tracing time
        self._compute = tf.function(self._gradients, jit_compile=jit_compile, reduce_retracing=True, autograph=False)
        # Adam and Adamax as TensorFlow's fused kernels (tf_engine.apply_adam), Keras' update otherwise
        self._apply = tf.function(optimizer_update(optimizer, self.variables, fused), autograph=False)
        self._evaluate = tf.function(lambda *inputs: loss_fn(*inputs), reduce_retracing=True)

    def _gradients(self, *inputs):
        saved = [tf.identity(v.value) for v in self.state]
        with tf.GradientTape() as tape, fused_batchnorm(self._norms):
            total, terms = self.loss_fn(*inputs)
        grads = tape.gradient(total, self.variables)
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, self.variables)]
        if self.weight_decay:
            grads = [g + self.weight_decay * tf.cast(v, g.dtype) for g, v in zip(grads, self.variables)]
        finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(total))]
                                        + [tf.reduce_all(tf.math.is_finite(g)) for g in grads]))
        for variable, old in zip(self.state, saved):  # what the forward pass assigned, kept on a good step only
            variable.assign(tf.where(finite, variable.value, old))
        return total, terms, grads, finite

    def step(self, *inputs, where="step"):
        """One update; returns the loss terms (and ``total``) as floats, with ``skipped`` 1.0
        when the guard dropped it."""
        total, terms, grads, finite = self._compute(*inputs)
        if bool(finite):
            self._apply(grads)
        return self.outcome(total, terms, bool(finite), where)

    def evaluate(self, *inputs):
        """The loss terms (and ``total``) without an update, as floats."""
        return as_floats(*self._evaluate(*inputs))

    def compiled(self, fn):
        """``fn`` as a ``tf.function`` (the trainers' inference helpers)."""
        return tf.function(fn, reduce_retracing=True)
