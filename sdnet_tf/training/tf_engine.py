"""TensorFlow engine: the gradient mechanics of the SDNet schedule.

With ``distribute``, the only modules of the package with ``tf.function``, ``GradientTape``,
``tf.distribute`` and ``tf.summary``. What each step optimises and updates comes from
``schedule.Step`` and ``objectives``; this module turns a step into a compiled update, on
one device or on the replicas of a ``tf.distribute.Strategy``.

Checkpoints are the loop's ``.npz`` files (``run_files``), the same as the JAX engine's, so
a run resumes on either backend. ``tf.train.CheckpointManager`` is not needed even for
multi-worker training: every variable of a ``MirroredStrategy`` or
``MultiWorkerMirroredStrategy`` holds the same value on each replica, so the chief's numpy
copy is the whole state, and each worker restores it by assigning the chief's file's values
(no collective is involved). TensorFlow checkpoints of runs written by earlier versions
are read once (``restore_tensorflow_checkpoint``). Scalars and image summaries also go to
TensorBoard event files.
"""

import contextlib
import functools
import logging
import re
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from sdnet_tf.data.arrays import DataError
from sdnet_tf.training import distribute, objectives
from sdnet_tf.training.batchnorm import batchnorm_layers
from sdnet_tf.runtime import tune_allocator
from sdnet_tf.training.speed import choose_allocator_tuning, choose_graph_rewriting, choose_xla
from sdnet_tf.training.optimizers import make_optimizer
from sdnet_tf.training.schedule import OPTIMIZERS, shared_updates

log = logging.getLogger("sdnet_tf.train")


class TFEngine:
    """Compiled SDNet updates and TensorBoard summaries with TensorFlow.

    Args:
        model: a built ``SDNet``.
        schedule: the steps (``schedule.SDNET_SCHEDULE``).
        loss_weights: dict with ``kl``, ``dice``, ``adversarial``, ``reconstruction``,
            ``z_reconstruction``.
        train_config: a ``TrainConfig`` (optimiser, precision, XLA, batch size, checkpoint
            settings).
        dice_mode: "pooled" or "per_class".
        run_dir: where TensorBoard events go; None for none.
        strategy: a ``tf.distribute.Strategy`` whose scope created ``model``; None for one
            device. Its replicas share each global batch of ``train_config.batch_size``.
    """

    def __init__(self, model, schedule, loss_weights, train_config, dice_mode="pooled", run_dir=None,
                 strategy=None):
        self.model = model
        self.schedule = tuple(schedule)
        self.loss_weights = {k: float(v) for k, v in loss_weights.items()}
        self.config = train_config
        self.dice_mode = dice_mode
        self.strategy = strategy
        distribute.check_global_batch(train_config.batch_size, strategy)
        gpu = bool(tf.config.list_physical_devices("GPU"))
        size = getattr(model, "input_size", None)
        self.xla = choose_xla(train_config.jit_compile, size, gpu)
        # as Keras' own fit does, no XLA under tf.distribute: the replicas' all-reduces run
        # between the compiled parts
        self.jit_compile = self.xla and strategy is None
        # SDNET_TF_ALLOCATOR=auto and train.graph_rewriting auto: where each was measured faster
        # (sdnet_tf/training/speed.py, benchmarks/RESULTS.md)
        self.allocator_tuned = tune_allocator(when_auto=choose_allocator_tuning(self.jit_compile, size, gpu))
        self.graph_rewriting = choose_graph_rewriting(getattr(train_config, "graph_rewriting", "auto"),
                                                      self.jit_compile, size, gpu,
                                                      deterministic=getattr(train_config, "deterministic", False))
        if not self.graph_rewriting:
            # process-wide: every TensorFlow function this process runs from now on (the
            # updates, validation, inference) is executed without Grappler's rewriting
            tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
        if self.xla and strategy is not None:
            log.info("XLA is off for the training updates under %s", type(strategy).__name__)
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            self.optimizers = {name: make_optimizer(train_config) for name in OPTIMIZERS}
            self.step_variables = {
                step.name: [v for net in step.trains for v in getattr(model, net).trainable_variables]
                for step in self.schedule
            }
            for name, optimizer in self.optimizers.items():
                union = {}
                for step in self.schedule:
                    if step.optimizer == name:
                        union.update({id(v): v for v in self.step_variables[step.name]})
                if union:
                    optimizer.build(list(union.values()))
        self.fused_optimizer = bool(getattr(train_config, "fused_optimizer", True)) and strategy is None
        # BatchNorm in the updates as TensorFlow's fused kernel, on one device (under tf.distribute
        # the layers synchronise their statistics over the replicas, which the kernel cannot)
        self.fused_batchnorm = bool(getattr(train_config, "fused_batchnorm", True)) and strategy is None
        self._fused_norms = batchnorm_layers(*model.networks().values()) if self.fused_batchnorm else []
        self.shape_prior, self.shape_omega = None, 0.0  # set by use_shape_prior before the first step
        self._updates = shared_updates(self.schedule, self._compile_update)
        # inference runs on this process's first replica: its variables equal every other's
        self._segment = tf.function(lambda x: objectives.segment_inference(self.model, x),
                                    jit_compile=self.xla, reduce_retracing=True)
        self._inspect = tf.function(lambda x: self.model(x, training=False, sample=False))
        self.run_dir = Path(run_dir) if run_dir else None
        self._writer = None

    # updates -----------------------------------------------------------------------------
    def _compile_update(self, step):
        objective = getattr(objectives, step.objective)
        variables = self.step_variables[step.name]
        optimizer = self.optimizers[step.optimizer]
        model, weights, dice_mode = self.model, self.loss_weights, self.dice_mode
        scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        sampler = model.modality_encoder.sampler if step.objective in objectives.SAMPLES_Z else None
        distributed = self.strategy is not None
        # the fused kernel on one device (self.fused_optimizer is off under tf.distribute: mirrored
        # variables); Keras' own update for what the kernel does not cover (loss scaling)
        apply = optimizer_update(optimizer, variables, self.fused_optimizer)

        def update(*inputs):
            """One replica's update on its slice of the batch (the whole batch on one device)."""
            replica = tf.distribute.get_replica_context()
            kwargs = {"dice_mode": dice_mode} if step.objective in objectives.TAKES_DICE_MODE else {}
            if step.objective == "supervised" and self.shape_prior is not None:
                kwargs.update(prior=self.shape_prior, omega=self.shape_omega)
            if step.objective == "unsupervised" and self.shape_prior is not None and weights.get("shape_projection"):
                kwargs.update(prior=self.shape_prior)  # read with weights["shape_projection"]
            if distributed and step.objective in objectives.SAMPLES_Z:
                # every replica draws the same eps for the global batch and takes its own
                # rows: each image gets the eps it would get on one device (where the
                # sampling layer draws that same (B, nz) batch itself)
                local = tf.shape(inputs[0])[0]
                eps = sampler.draw_noise((local * replica.num_replicas_in_sync, model.nz))  # (global B, nz)
                kwargs["noise"] = tf.gather(eps, replica.replica_id_in_sync_group * local + tf.range(local))
            with tf.GradientTape() as tape, fused_batchnorm(self._fused_norms):
                if step.objective == "discriminator":
                    total, terms = objective(model, *inputs)
                else:
                    total, terms = objective(model, *inputs, weights, **kwargs)
                # the optimiser sums the replicas' gradients; every loss is a mean over equal
                # slices, and the spectral penalty is the same on every replica, so
                # 1 / replicas makes the sum the gradient of the global batch's loss
                loss = total / replica.num_replicas_in_sync
                loss = optimizer.scale_loss(loss) if scaled else loss
            grads = tape.gradient(loss, variables)
            apply(grads)
            return total, terms

        # autograph off: the objectives are keras.ops code without tensor-dependent Python
        # control flow (they run under jax.jit too), so converting them only costs tracing time
        if self.strategy is None:
            return tf.function(update, jit_compile=self.jit_compile, reduce_retracing=True, autograph=False)
        strategy = self.strategy
        synchronise = distribute.replicas(strategy) > 1

        def distributed_update(*inputs):
            with distribute.synchronized_batchnorm(model) if synchronise else contextlib.nullcontext():
                outputs = strategy.run(update, args=inputs)
            # means over equal slices: their mean is the global batch's value
            return tf.nest.map_structure(lambda v: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None),
                                         outputs)

        return tf.function(distributed_update, reduce_retracing=True, autograph=False)

    def use_shape_prior(self, prior, omega):
        """Add ``omega`` times a frozen prior's shape loss to the supervised step (one device),
        and ``loss_weights["shape_projection"]`` times its label-free term to the unlabelled one.

        Call before the first update: the compiled steps read the prior when first traced.
        """
        if self.strategy is not None:
            raise ValueError("the shape loss runs on one device: use train.distribute none")
        self.shape_prior, self.shape_omega = prior, float(omega)

    def shape_sizes(self, images, masks):
        """The weighted Dice and shape losses of a batch, in inference mode (omega's estimate)."""
        if not hasattr(self, "_shape_sizes"):
            self._shape_sizes = tf.function(lambda x, y: objectives.shape_sizes(
                self.model, x, y, self.loss_weights["dice"], self.dice_mode, self.shape_prior))
        return {k: float(v) for k, v in self._shape_sizes(images, masks).items()}

    def run_step(self, step, *inputs):
        """Apply one update to numpy ``inputs`` (global batches); returns its loss terms (and
        ``total``) as Python floats."""
        if self.strategy is not None:
            inputs = [distribute.split_batch(self.strategy, np.asarray(x)) for x in inputs]
        total, terms = self._updates[step.name](*inputs)
        out = {name: float(value) for name, value in terms.items()}
        out["total"] = float(total)
        return out

    def infer(self, name, *inputs):
        """``objectives.<name>(model, *inputs)`` compiled once, on numpy inputs; returns numpy."""
        functions = self.__dict__.setdefault("_inference", {})
        if name not in functions:
            objective = getattr(objectives, name)
            functions[name] = tf.function(lambda *x: objective(self.model, *x), jit_compile=self.xla,
                                          reduce_retracing=True)
        return np.asarray(functions[name](*inputs), dtype=np.float32)

    def step_flops(self, step, *inputs):
        """TensorFlow's count of the floating-point operations of one update of ``step`` on
        ``inputs`` (``graph_flops`` of the update traced afresh at these shapes; nothing runs)."""
        return graph_flops(self._compile_update(step).get_concrete_function(*inputs).graph)

    def predict_flops(self, images):
        """TensorFlow's count of the floating-point operations of ``predict_masks`` on one batch."""
        function = tf.function(lambda x: objectives.segment_inference(self.model, x), autograph=False)
        return graph_flops(function.get_concrete_function(images).graph)

    def predict_masks(self, images, batch_size=16):
        """Foreground probabilities in inference mode, as a numpy array."""
        outputs = [np.asarray(self._segment(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
        return np.concatenate(outputs).astype(np.float32)

    def inspect(self, images):
        """Anatomy, reconstruction (own z, mean mode) and masks in inference mode, as numpy."""
        out = self._inspect(images)
        return {k: np.asarray(out[k], dtype=np.float32) for k in ("anatomy", "reconstruction", "masks")}

    # checkpoints of earlier versions ------------------------------------------------------
    def restore_tensorflow_checkpoint(self, variables, directory):
        """Read the newest TensorFlow checkpoint of ``directory`` (``ckpt-<i>.index`` and
        ``state-<i>.npz``, the form of runs written by earlier versions) into ``variables``,
        the ``run_files`` names of the model's and optimisers' variables, which are the names
        those checkpoints used. Returns the ``state-<i>.npz`` arrays.

        Raises:
            DataError: no TensorFlow checkpoint, or one of another model.
        """
        path = tf.train.latest_checkpoint(str(directory))
        if path is None:
            raise DataError(f"{directory}: no TensorFlow checkpoint")
        iteration = int(re.search(r"ckpt-(\d+)$", path).group(1))
        try:
            tf.train.Checkpoint(**{name: v.value for name, v in variables.items()}).restore(
                path).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            raise DataError(f"{path}: not a checkpoint of this model ({error})") from error
        with np.load(Path(directory) / f"state-{iteration}.npz") as data:
            return {k: data[k] for k in data.files}

    # summaries ---------------------------------------------------------------------------
    def _summary_writer(self):
        if self._writer is None and self.run_dir is not None:
            self._writer = tf.summary.create_file_writer(str(self.run_dir / "tensorboard"))
        return self._writer

    def log_scalars(self, values, step):
        writer = self._summary_writer()
        if writer is None:
            return
        with writer.as_default():
            for name, value in values.items():
                tf.summary.scalar(name, value, step=step)

    def log_images(self, images, step):
        """``images``: name -> (N, H, W, 1 or 3) float arrays in [0, 1]."""
        writer = self._summary_writer()
        if writer is None:
            return
        with writer.as_default():
            for name, value in images.items():
                tf.summary.image(name, value, step=step, max_outputs=len(value))
        writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


def graph_flops(graph):
    """The floating-point operations of one run of ``graph`` as TensorFlow's profiler counts them:
    the registered ``flops`` statistics of the convolutions (forward and both backward
    products) and matrix products, two per multiply-add; elementwise ops, normalisation and
    the optimiser are not counted (they are a few per cent of a convolutional network's).

    Args:
        graph: a ``tf.Graph`` with fully defined shapes (a concrete function's ``graph``).
    """
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return float(tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops)


def fused_adam_applies(optimizer, variables):
    """Whether ``apply_adam`` computes exactly what ``optimizer.apply`` would: a plain Keras
    Adam or Adamax (no AMSGrad, clipping, weight decay, EMA, gradient accumulation or loss
    scaling) on variables without constraints."""
    if type(optimizer) not in (keras.optimizers.Adam, keras.optimizers.Adamax) or getattr(optimizer, "amsgrad", False):
        return False
    extras = (optimizer.clipnorm, optimizer.clipvalue, optimizer.global_clipnorm, optimizer.weight_decay,
              getattr(optimizer, "gradient_accumulation_steps", None), optimizer.loss_scale_factor)
    if any(extras) or optimizer.use_ema:
        return False
    return all(v.constraint is None and not getattr(v, "overwrite_with_gradient", False) for v in variables)


def optimizer_update(optimizer, variables, fused=True):
    """``apply(grads)``, the update of ``variables`` by ``optimizer``: TensorFlow's fused kernel
    (``apply_adam``) when ``fused`` and ``fused_adam_applies``, Keras' ``optimizer.apply`` otherwise."""
    if fused and fused_adam_applies(optimizer, variables):
        return lambda grads: apply_adam(optimizer, grads, variables)
    return lambda grads: optimizer.apply(grads, variables)


def apply_adam(optimizer, grads, variables):
    """``optimizer.apply(grads, variables)`` for a Keras Adam or Adamax that ``fused_adam_applies``
    to, with TensorFlow's fused kernels (``ResourceApplyAdam``, ``ResourceApplyAdaMax``): one op
    per weight instead of the twenty-odd small ops of Keras' per-weight update, which on a CPU
    cost more graph building (the first iteration) and more dispatch than the arithmetic
    (benchmarks/RESULTS.md).

    The same update, on the optimiser's own moment variables and step counter (so checkpoints
    and the JAX engine's Keras update are unchanged), with t = iterations + 1 and the learning
    rate lr of the schedule at ``iterations`` (Kingma and Ba, 2015, Algorithms 1 and 2):
    Adam: alpha = lr sqrt(1 - beta_2^t) / (1 - beta_1^t), m += (g - m)(1 - beta_1),
    v += (g^2 - v)(1 - beta_2), w -= alpha m / (sqrt(v) + epsilon), the bias corrections folded
    into alpha as Keras does; Adamax: m += (g - m)(1 - beta_1), u = max(beta_2 u, |g|),
    w -= lr / (1 - beta_1^t) m / (u + epsilon).

    Args:
        optimizer: a built ``keras.optimizers.Adam`` or ``Adamax`` (``optimizer.build(variables)``).
        grads: one dense gradient per variable (tensors), None for none.
        variables: the Keras variables, as passed to ``optimizer.apply``.
    """
    pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
    if any(isinstance(g, tf.IndexedSlices) for g, _ in pairs):
        optimizer.apply(grads, variables)
        return
    adamax = isinstance(optimizer, keras.optimizers.Adamax)
    first, second = (optimizer._m, optimizer._u) if adamax else (optimizer._momentums, optimizer._velocities)
    learning_rate = tf.convert_to_tensor(optimizer.learning_rate)
    step = tf.cast(optimizer.iterations + 1, tf.float32)
    powers = tf.pow(tf.constant([optimizer.beta_1, optimizer.beta_2], tf.float32), step)
    constants = {}
    for grad, variable in pairs:
        dtype = variable.dtype
        if dtype not in constants:
            constants[dtype] = dict(
                beta1_power=tf.cast(powers[0], dtype), lr=tf.cast(learning_rate, dtype),
                beta1=tf.constant(optimizer.beta_1, dtype), beta2=tf.constant(optimizer.beta_2, dtype),
                epsilon=tf.constant(optimizer.epsilon, dtype))
            if not adamax:
                constants[dtype]["beta2_power"] = tf.cast(powers[1], dtype)
        index = optimizer._get_variable_index(variable)
        kernel = tf.raw_ops.ResourceApplyAdaMax if adamax else tf.raw_ops.ResourceApplyAdam
        kernel(var=variable.value.handle, m=first[index].value.handle, v=second[index].value.handle,
               grad=tf.cast(grad, dtype), use_locking=False, **constants[dtype])
    optimizer.iterations.assign_add(1)


#: cuDNN's smallest BatchNorm epsilon: on a GPU a layer with a smaller one keeps Keras' ops
CUDNN_MIN_EPSILON = 1.001e-5


@contextlib.contextmanager
def fused_batchnorm(layers):
    """While a training update is traced, run Keras ``BatchNormalization`` ``layers`` called in
    training mode as TensorFlow's fused kernel (``FusedBatchNormV3``, oneDNN's on a CPU, cuDNN's
    on a GPU) instead of Keras' unfused ops.

    Keras 3 computes a training-mode BatchNorm as separate ops (two means, a squared difference,
    the normalisation's products and sums) and differentiates each of them; TensorFlow's own
    Keras used the fused kernel, whose forward and backward passes are one op each. The layer
    computes the same thing to float rounding (golden test against Keras' call): the batch's
    mean and biased variance normalise the batch, and the moving averages take the same
    ``moving * momentum + batch * (1 - momentum)`` update with the biased variance (the
    kernel returns the Bessel-corrected one, multiplied back by (n - 1) / n here). Inputs are
    normalised in float32 and the result cast to the layer's compute dtype, as Keras does
    under a mixed precision policy. Layers the kernel does not cover keep Keras' call: not 4-D
    channels-last input, a mask, renormalisation, synchronised statistics, inference mode, a
    frozen layer, and on a GPU an epsilon below cuDNN's ``CUDNN_MIN_EPSILON``.

    The substitution lasts only while the context is open (each layer's ``call`` is replaced on
    the instance and restored afterwards), so validation, inference, the BatchNorm
    recalibration and other engines see the layers as built. The models themselves keep to
    ``keras.ops``; this is the TensorFlow engine's choice of kernel, like ``apply_adam``.

    Args:
        layers: ``keras.layers.BatchNormalization`` layers (``batchnorm.batchnorm_layers``).
    """
    replaced = [layer for layer in layers if "call" not in vars(layer)]
    on_gpu = bool(replaced) and bool(tf.config.list_logical_devices("GPU"))
    for layer in replaced:
        layer.call = functools.partial(_fused_batchnorm_call, layer, layer.call, on_gpu)
    try:
        yield
    finally:
        for layer in replaced:
            del layer.call


def _fused_batchnorm_call(layer, keras_call, on_gpu, inputs, training=None, mask=None):
    """``layer``'s training-mode call with ``FusedBatchNormV3`` where it applies (``fused_batchnorm``);
    ``on_gpu``: the process has a GPU, where cuDNN's smallest epsilon applies."""
    if (training is not True or not layer.trainable or mask is not None or len(inputs.shape) != 4
            or layer.axis not in (-1, 3) or layer.renorm or layer.synchronized or inputs.shape[-1] is None
            or (on_gpu and layer.epsilon < CUDNN_MIN_EPSILON)):
        return keras_call(inputs, training=training, mask=mask)
    x = tf.cast(inputs, tf.float32)
    channels = x.shape[-1]
    scale = tf.cast(tf.convert_to_tensor(layer.gamma), tf.float32) if layer.scale else tf.ones([channels])
    offset = tf.cast(tf.convert_to_tensor(layer.beta), tf.float32) if layer.center else tf.zeros([channels])
    y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=scale, offset=offset, mean=tf.zeros([0]), variance=tf.zeros([0]), epsilon=layer.epsilon,
        data_format="NHWC", is_training=True)
    # the biased variance Keras averages: times (n - 1) / n, a constant when the shape is static
    # (ten graph ops fewer per layer to build), computed in the graph otherwise
    pixels = x.shape[:-1]
    count = (tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32) if None in pixels
             else np.float32(np.prod(pixels)))
    variance = variance * ((count - np.float32(1.0)) / count)
    momentum = layer.momentum
    moving_mean = tf.cast(tf.convert_to_tensor(layer.moving_mean), tf.float32)
    moving_variance = tf.cast(tf.convert_to_tensor(layer.moving_variance), tf.float32)
    layer.moving_mean.assign(moving_mean * momentum + mean * (1.0 - momentum))
    layer.moving_variance.assign(moving_variance * momentum + variance * (1.0 - momentum))
    return tf.cast(y, layer.compute_dtype)


def enable_determinism():
    """Deterministic TensorFlow for the rest of the process (``engines.apply_determinism``):
    ``tf.config.experimental.enable_op_determinism`` (an op without a deterministic kernel then
    raises ``UnimplementedError`` when it runs) and Grappler's graph rewriting off. Op
    determinism alone does not suffice on a CPU: with Grappler's rewriting and more than one
    inter-op thread, the NVAE's gradient on one batch from the same weights differed from the
    first call's (by up to 3.7e-4) in 12 of 15 later calls, and in 10 of 15 with op
    determinism; with both settings, in 0 of 15 (``benchmarks/gradient_repeat.py``), as with
    one inter-op thread (which TensorFlow takes only before its first op). Turning Grappler's
    passes off one at a time (remapping, arithmetic, layout, dependency, function, loop
    optimisation, constant folding) did not remove it."""
    tf.config.experimental.enable_op_determinism()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


def compile_stateful(fn, variables, updated):
    """``fn`` as a ``tf.function``: its variable updates run inside the graph, so every
    variable ends as eager execution leaves it (``engines.stateful_compiler``)."""
    return tf.function(fn, reduce_retracing=True)
