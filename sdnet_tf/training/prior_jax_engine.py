"""Compiled updates for the shape priors and the U-Net baseline, with JAX.

The JAX counterpart of ``prior_engine``, with the same interface, so ``prior_trainer`` runs
either. A step is one jit-compiled pure function of variable values: the loss function
(``keras.ops`` code, shared with TensorFlow) runs in a ``keras.StatelessScope`` that maps
every variable it reads to a value, ``jax.value_and_grad`` differentiates it with respect to
the trainable values, coupled weight decay is added, and ``optimizer.stateless_apply`` gives
the new weights and optimiser state. The finite-value guard is inside the same function:
when the loss or a gradient is not finite, the old weights, optimiser state and float state
(BatchNorm statistics, spectral power-iteration vectors) are returned unchanged, so a
skipped step leaves no trace but the random-number state moving on. The engine writes the
new values back into the Keras variables after each step, so checkpoints (``prior_trainer``'s
``.npz`` files, the same on both backends) always hold the current weights, and a run begun
on one backend can be resumed on the other.
"""

import functools

import jax
import jax.numpy as jnp
import keras

from sdnet_tf.training.guard import Guard, as_floats
from sdnet_tf.training.jax_engine import _assign, _values


class StepEngine(Guard):
    """Guarded, jit-compiled gradient updates of ``variables`` on ``loss_fn`` with JAX.

    Args:
        variables: the trainable variables.
        loss_fn: ``loss_fn(*inputs) -> (total, terms)`` written with keras.ops.
        optimizer: a Keras optimiser (built here).
        weight_decay: L2 coefficient added to every gradient (``g + wd * w``, coupled).
        jit_compile: ignored: every JAX step is compiled with XLA.
        nonfinite: "skip" (drop the step, log it) or "stop" (raise ``NonFiniteError``).
        max_nonfinite: consecutive skipped steps after which the run stops anyway.
        state: the other variables ``loss_fn`` or the ``compiled`` functions may assign
            (the models' non-trainable variables, spectral vectors, seed generators'
            states); their values are passed in and returned.
        frozen: variables they only read (a frozen prior's weights); their values are passed
            in, never captured as constants, and not returned.
        networks: ignored: the TensorFlow engine's fused BatchNorm is not a JAX kernel (XLA
            fuses Keras' ops itself).
    """

    def __init__(self, variables, loss_fn, optimizer, weight_decay=0.0, jit_compile=True, nonfinite="skip",
                 max_nonfinite=20, state=(), frozen=(), networks=()):
        if keras.backend.backend() != "jax":
            raise RuntimeError(f"this engine needs Keras on the JAX backend, not {keras.backend.backend()!r}")
        super().__init__(nonfinite, max_nonfinite)
        self.variables = list(variables)
        self.state = list(state)
        self.frozen = list(frozen)
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.weight_decay = float(weight_decay)
        optimizer.build(self.variables)
        self._update = jax.jit(self._pure_update)
        self._evaluate = self.compiled(loss_fn)

    def _pure_update(self, trained, state, frozen, optimizer_values, *inputs):
        def loss(trained_values):
            mapping = (list(zip(self.variables, trained_values)) + list(zip(self.state, state))
                       + list(zip(self.frozen, frozen)))
            with keras.StatelessScope(state_mapping=mapping) as scope:
                total, terms = self.loss_fn(*inputs)
            return total, (terms, [scope.get_current_value(v) for v in self.state])

        (total, (terms, new_state)), grads = jax.value_and_grad(loss, has_aux=True)(trained)
        if self.weight_decay:
            grads = [g + self.weight_decay * w.astype(g.dtype) for g, w in zip(grads, trained)]
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(total))] + [jnp.all(jnp.isfinite(g)) for g in grads]))
        new_trained, new_optimizer = self.optimizer.stateless_apply(optimizer_values, grads, trained)

        def keep(new, old, always=False):
            return new if always else jnp.where(finite, new, old)

        new_trained = [keep(n, o) for n, o in zip(new_trained, trained)]
        new_optimizer = [keep(n, o) for n, o in zip(new_optimizer, optimizer_values)]
        # random-number states move on whatever happens; float state only on a good step
        new_state = [keep(n, o, not jnp.issubdtype(o.dtype, jnp.floating)) for n, o in zip(new_state, state)]
        return new_trained, new_state, new_optimizer, total, terms, finite

    def step(self, *inputs, where="step"):
        """One update; returns the loss terms (and ``total``) as floats, with ``skipped`` 1.0
        when the guard dropped it."""
        new_trained, new_state, new_optimizer, total, terms, finite = self._update(
            _values(self.variables), _values(self.state), _values(self.frozen), _values(self.optimizer.variables),
            *inputs)
        _assign(self.variables, new_trained)
        _assign(self.state, new_state)
        _assign(self.optimizer.variables, new_optimizer)
        total, terms, finite = jax.device_get((total, terms, finite))
        return self.outcome(total, terms, bool(finite), where)

    def evaluate(self, *inputs):
        """The loss terms (and ``total``) without an update, as floats."""
        return as_floats(*self._evaluate(*inputs))

    def compiled(self, fn):
        """``fn(*arrays)`` jit-compiled over the engine's variables' current values.

        Python numbers among the arguments (a sample count, a temperature) are compile-time
        constants: one compilation per value. Random-number states ``fn`` advances are
        written back, so repeated calls draw new samples, as on TensorFlow.
        """
        variables = self.variables + self.state + self.frozen
        cache = {}

        def pure(values, dynamic, static):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
                args = iter(dynamic)
                out = fn(*[static[i] if i in static else next(args) for i in range(len(static) + len(dynamic))])
            return out, [scope.get_current_value(v) for v in self.state]

        def call(*args):
            static = {i: a for i, a in enumerate(args) if isinstance(a, (bool, int, float))}
            dynamic = [a for i, a in enumerate(args) if i not in static]
            key = tuple(sorted(static.items()))
            if key not in cache:
                cache[key] = jax.jit(functools.partial(pure, static=static))
            out, new_state = cache[key](_values(variables), dynamic)
            for variable, value in zip(self.state, new_state):  # seed states only: inference leaves the weights
                if not jnp.issubdtype(value.dtype, jnp.floating):
                    variable.assign(value)
            return out

        return call
