"""JAX engine: the gradient mechanics of the SDNet schedule without TensorFlow.

The only module of the package that imports ``jax``. Each step is one jit-compiled pure
function of variable values: the step's objective (``objectives``, the same code the
TensorFlow engine runs) is called inside a ``keras.StatelessScope`` that maps every variable
of the five networks to a value, ``jax.value_and_grad`` differentiates the loss with respect
to the values of the networks the step trains only, and ``optimizer.stateless_apply`` returns
their new values and the optimiser's. The scope is the mechanism under
``Layer.stateless_call``; it is used directly because an objective calls several networks
and ``SDNet`` methods rather than one ``call``. Variables the forward pass assigns
(BatchNorm moving statistics, the sampling layer's seed-generator state) are read back from
the scope and returned, so the function has no side effects; the engine writes every new
value back into the Keras variables after each step, so the model, ``model.save`` and the
checkpoints always hold the current weights.

Checkpoints, best weights, history and scalars are the loop's files (``run_files``), the
same as on TensorFlow, so a run resumes on either backend. TensorBoard needs TensorFlow, so
there are no event files and no image summaries.

Data parallelism (``train.distribute: data_parallel``) is ``keras.distribution.DataParallel``
over every JAX device: ``data_parallel`` makes it, and the model and the engine are made in
its scope, so every variable (weights, BatchNorm statistics, seed state, the optimiser's) is
replicated on each device, and the engine places each batch sharded on its batch axis. The compiled steps are the single-device ones: XLA's SPMD
partitioner splits the computation by the inputs' shardings and inserts the all-reduces. The
losses are already means over the global batch, so the gradients need no rescaling, and
BatchNorm's batch mean and variance, being reductions over the sharded batch axis, are the
statistics of the global batch (synchronised BatchNorm, without asking for it).
"""

import logging
import os
from pathlib import Path

import jax
import keras
import numpy as np

from sdnet_tf.config import ConfigError
from sdnet_tf.training import objectives
from sdnet_tf.training.optimizers import make_optimizer
from sdnet_tf.training.schedule import OPTIMIZERS, shared_updates

log = logging.getLogger("sdnet_tf.train")



def _values(variables):
    return [variable.value for variable in variables]


def _assign(variables, values):
    for variable, value in zip(variables, values):
        variable.assign(value)


def data_parallel():
    """``keras.distribution.DataParallel`` over every JAX device (not yet set as Keras' distribution).

    Build the model and the engine inside its ``scope()``: variables take their (replicated)
    layout when they are created, and the engine shards its inputs for the distribution that
    is current when it is made.
    """
    return keras.distribution.DataParallel(devices=jax.devices())


class JAXEngine:
    """Jit-compiled SDNet updates with JAX.

    The interface is ``TFEngine``'s, so ``Trainer`` runs the same schedule on either.

    Args:
        model: a built ``SDNet`` (Keras running on the JAX backend).
        schedule: the steps (``schedule.SDNET_SCHEDULE``).
        loss_weights: dict with ``kl``, ``dice``, ``adversarial``, ``reconstruction``,
            ``z_reconstruction``.
        train_config: a ``TrainConfig`` (optimiser, precision and checkpoint settings;
            ``jit_compile`` is not read: every JAX step is compiled with XLA). All three
            precisions work; with ``mixed_float16`` the loss is scaled inside the
            differentiated function and ``LossScaleOptimizer.stateless_apply`` unscales the
            gradients and skips the steps whose gradients overflow, as on TensorFlow.
        dice_mode: "pooled" or "per_class".
        run_dir: not used (the JAX engine writes no files); accepted for the TF engine's signature.

    Made while a ``keras.distribution.DataParallel`` is Keras' distribution (``data_parallel``),
    the engine trains data-parallel: ``train_config.batch_size`` is the global batch, which
    must divide by the number of devices.
    """

    def __init__(self, model, schedule, loss_weights, train_config, dice_mode="pooled", run_dir=None):
        if keras.backend.backend() != "jax":
            raise RuntimeError(f"JAXEngine needs Keras on the JAX backend, but Keras runs on "
                               f"{keras.backend.backend()!r}; set KERAS_BACKEND=jax before Keras is imported")
        self.model = model
        self.schedule = tuple(schedule)
        self.loss_weights = {k: float(v) for k, v in loss_weights.items()}
        self.config = train_config
        self.dice_mode = dice_mode
        networks = model.networks()
        self._variables = [v for net in networks.values() for v in net.variables]
        self._distribution = self._check_distribution(keras.distribution.distribution(), train_config.batch_size)
        self._trainable = [v for net in networks.values() for v in net.trainable_variables]
        self._non_trainable = [v for net in networks.values() for v in net.non_trainable_variables]
        self.step_variables = {
            step.name: [v for net in step.trains for v in getattr(model, net).trainable_variables]
            for step in self.schedule
        }
        self.optimizers = {name: make_optimizer(train_config) for name in OPTIMIZERS}
        for name, optimizer in self.optimizers.items():
            # stateless_apply updates exactly the variables an optimiser was built with, so
            # every step of one optimiser must train the same networks (true of SDNet's four)
            steps = [step for step in self.schedule if step.optimizer == name]
            trains = {step.trains for step in steps}
            if len(trains) > 1:
                raise ValueError(f"optimiser {name!r} is shared by steps that train different networks "
                                 f"{sorted(trains)}; the JAX engine needs one set of networks per optimiser")
            if steps:
                optimizer.build(self.step_variables[steps[0].name])
        self.shape_prior, self.shape_omega = None, 0.0  # set by use_shape_prior
        self._updates = shared_updates(self.schedule, self._compile_update)
        self._segment = jax.jit(self._stateless(lambda images: objectives.segment_inference(self.model, images)))
        self._inspect = jax.jit(self._stateless(lambda images: self.model(images, training=False, sample=False)))
        self.run_dir = Path(run_dir) if run_dir else None
        self._images_skipped = False

    def _check_distribution(self, distribution, batch_size):
        """The ``DataParallel`` distribution to shard inputs for; None to run on one device."""
        if distribution is None:
            return None
        if not isinstance(distribution, keras.distribution.DataParallel):
            raise ConfigError(f"the JAX engine supports keras.distribution.DataParallel only, "
                              f"not {type(distribution).__name__}")
        devices = distribution.device_mesh.devices.size
        if batch_size % devices:
            raise ConfigError(f"train.batch_size={batch_size} is the global batch and must be divisible by the "
                              f"{devices} devices of DataParallel; use a multiple of {devices}")
        placed = [v.path for v in self._variables if len(v.value.sharding.device_set) != devices]
        if placed:
            raise RuntimeError(f"{len(placed)} model variables ({', '.join(placed[:3])}, ...) are not on the "
                               f"{devices} devices of DataParallel: build the model inside its scope()")
        return distribution

    def _place(self, array):
        """An input batch for the compiled steps: sharded on its batch axis under DataParallel.

        A batch the devices cannot split evenly (a short last batch of ``predict_masks``) is
        replicated instead: every device computes all of it, with the same result.
        """
        if self._distribution is None:
            return array
        devices = self._distribution.device_mesh.devices.size
        if np.ndim(array) and np.shape(array)[0] % devices == 0:
            sharding = self._distribution.get_data_layout(np.shape(array)).backend_layout
        else:
            sharding = jax.sharding.NamedSharding(self._distribution.device_mesh.backend_mesh,
                                                  jax.sharding.PartitionSpec())
        return jax.device_put(array, sharding)

    def _stateless(self, function):
        """``function(*args)`` as a pure function ``(variable values, *args) -> outputs``."""

        def pure(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(self._variables, values))):
                return function(*args)

        return pure

    # updates -----------------------------------------------------------------------------
    def _compile_update(self, step):
        objective = getattr(objectives, step.objective)
        trained = self.step_variables[step.name]
        trained_ids = {id(v) for v in trained}
        frozen = [v for v in self._trainable if id(v) not in trained_ids]  # the other networks' weights
        prior = self.shape_prior if (step.objective == "supervised" or (
            step.objective == "unsupervised" and self.loss_weights.get("shape_projection"))) else None
        if prior is not None:
            frozen += list(prior.variables)  # passed in as values, never captured as constants
        non_trainable = self._non_trainable
        optimizer = self.optimizers[step.optimizer]
        model, weights, dice_mode = self.model, self.loss_weights, self.dice_mode
        shape = {} if prior is None else {"prior": prior}
        if prior is not None and step.objective == "supervised":
            shape["omega"] = self.shape_omega
        scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

        def loss(trained_values, frozen_values, state_values, optimizer_values, inputs):
            mapping = (list(zip(trained, trained_values)) + list(zip(frozen, frozen_values))
                       + list(zip(non_trainable, state_values)))
            with keras.StatelessScope(state_mapping=mapping) as scope:
                if step.objective in objectives.TAKES_DICE_MODE:
                    total, terms = objective(model, *inputs, weights, dice_mode=dice_mode, **shape)
                elif step.objective == "discriminator":
                    total, terms = objective(model, *inputs)
                else:
                    total, terms = objective(model, *inputs, weights, **shape)
            # BatchNorm statistics and the seed-generator state after the forward pass
            new_state = [scope.get_current_value(v) for v in non_trainable]
            differentiated = total
            if scaled:
                # the loss scale is an optimiser variable: read it from the values passed in
                with keras.StatelessScope(state_mapping=list(zip(optimizer.variables, optimizer_values))):
                    differentiated = optimizer.scale_loss(total)
            return differentiated, (total, terms, new_state)

        gradient = jax.value_and_grad(loss, has_aux=True)

        def update(trained_values, frozen_values, state_values, optimizer_values, *inputs):
            (_, (total, terms, new_state)), grads = gradient(
                trained_values, frozen_values, state_values, optimizer_values, inputs)
            new_trained, new_optimizer = optimizer.stateless_apply(optimizer_values, grads, trained_values)
            return new_trained, new_state, new_optimizer, total, terms

        return jax.jit(update), trained, frozen, optimizer

    def use_shape_prior(self, prior, omega):
        """Add ``omega`` times a frozen prior's shape loss to the supervised step, and
        ``loss_weights["shape_projection"]`` times its label-free term to the unlabelled one; the
        steps are compiled again with the prior's weights as inputs."""
        self.shape_prior, self.shape_omega = prior, float(omega)
        self._updates = shared_updates(self.schedule, self._compile_update)
        self._shape_sizes = None

    def shape_sizes(self, images, masks):
        """The weighted Dice and shape losses of a batch, in inference mode (omega's estimate)."""
        variables = self._variables + list(self.shape_prior.variables)
        if getattr(self, "_shape_sizes", None) is None:
            def sizes(values, x, y):
                with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                    return objectives.shape_sizes(self.model, x, y, self.loss_weights["dice"], self.dice_mode,
                                                  self.shape_prior)

            self._shape_sizes = jax.jit(sizes)
        out = jax.device_get(self._shape_sizes(_values(variables), self._place(images), self._place(masks)))
        return {k: float(v) for k, v in out.items()}

    def run_step(self, step, *inputs):
        """Apply one update; returns its loss terms (and ``total``) as Python floats."""
        update, trained, frozen, optimizer = self._updates[step.name]
        new_trained, new_state, new_optimizer, total, terms = update(
            _values(trained), _values(frozen), _values(self._non_trainable), _values(optimizer.variables),
            *map(self._place, inputs))
        _assign(trained, new_trained)
        _assign(self._non_trainable, new_state)
        _assign(optimizer.variables, new_optimizer)
        total, terms = jax.device_get((total, terms))  # one transfer for all the scalars
        out = {name: float(value) for name, value in terms.items()}
        out["total"] = float(total)
        return out

    def infer(self, name, *inputs):
        """``objectives.<name>(model, *inputs)`` compiled once, on numpy inputs; returns numpy."""
        functions = self.__dict__.setdefault("_inference", {})
        if name not in functions:
            objective = getattr(objectives, name)
            functions[name] = jax.jit(self._stateless(lambda *x: objective(self.model, *x)))
        return np.asarray(functions[name](_values(self._variables), *map(self._place, inputs)), dtype=np.float32)

    def predict_masks(self, images, batch_size=16):
        """Foreground probabilities in inference mode, as a numpy array."""
        values = _values(self._variables)
        outputs = [np.asarray(self._segment(values, self._place(images[i:i + batch_size])))
                   for i in range(0, len(images), batch_size)]
        return np.concatenate(outputs).astype(np.float32)

    def inspect(self, images):
        """Anatomy, reconstruction (own z, mean mode) and masks in inference mode, as numpy."""
        out = self._inspect(_values(self._variables), self._place(images))
        return {k: np.asarray(out[k], dtype=np.float32) for k in ("anatomy", "reconstruction", "masks")}

    # costs -------------------------------------------------------------------------------
    def step_flops(self, step, *inputs):
        """XLA's count of floating-point operations of one update of ``step`` on ``inputs``."""
        update, trained, frozen, optimizer = self._updates[step.name]
        lowered = update.lower(_values(trained), _values(frozen), _values(self._non_trainable),
                               _values(optimizer.variables), *map(self._place, inputs))
        return float(lowered.compile().cost_analysis()["flops"])

    def predict_flops(self, images):
        """XLA's count of floating-point operations of ``predict_masks`` on one batch ``images``."""
        lowered = self._segment.lower(_values(self._variables), self._place(images))
        return float(lowered.compile().cost_analysis()["flops"])

    # summaries ---------------------------------------------------------------------------
    def log_scalars(self, values, step):
        """Scalars go to the run's ``scalars.jsonl`` (``run_files``); without TensorFlow there is no
        TensorBoard copy."""

    def log_images(self, images, step):
        """Image summaries need TensorBoard (TensorFlow); the JAX engine skips them."""
        if not self._images_skipped:
            log.info("image summaries skipped: TensorBoard event files need TensorFlow "
                     "(set train.image_summaries=0 to skip computing them)")
            self._images_skipped = True

    def close(self):
        """Nothing is held open: every scalar line is written and closed when logged."""


def check_deterministic():
    """Refuse ``train.deterministic`` where XLA would not be: on a GPU without
    ``--xla_gpu_deterministic_ops=true`` in ``XLA_FLAGS`` (read when JAX starts, so it cannot be
    set from here). XLA's CPU kernels are deterministic as they are.

    Raises:
        ConfigError: a GPU or TPU without the flag.
    """
    platform = jax.devices()[0].platform
    if platform != "cpu" and "--xla_gpu_deterministic_ops=true" not in os.environ.get("XLA_FLAGS", ""):
        raise ConfigError(f"train.deterministic on the JAX engine on {platform}: start the process with "
                          "XLA_FLAGS=--xla_gpu_deterministic_ops=true (XLA reads it when JAX starts)")


def compile_stateful(fn, variables, updated):
    """``fn`` jit-compiled under a ``keras.StatelessScope`` over ``variables``' values; each call
    assigns the new values of ``updated`` afterwards, so they end as eager execution leaves
    them (``engines.stateful_compiler``)."""
    variables, updated = list(variables), list(updated)

    def pure(values, *args):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
            fn(*args)
        return [scope.get_current_value(v) for v in updated]

    jitted = jax.jit(pure)

    def call(*args):
        for variable, value in zip(updated, jitted([v.value for v in variables], *args)):
            variable.assign(value)

    return call
