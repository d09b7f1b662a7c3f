"""The optimisers of the SDNet schedule, shared by every engine (Keras only, any backend)."""

import keras


def make_optimizer(train_config):
    """Adam with the original's Keras-2 inverse-time decay ``lr / (1 + decay * t)``.

    With ``precision: mixed_float16`` it is wrapped in Keras' dynamic ``LossScaleOptimizer``:
    the engines scale the loss before differentiating and the optimiser unscales the
    gradients and skips steps whose gradients overflow.
    """
    schedule = keras.optimizers.schedules.InverseTimeDecay(
        train_config.learning_rate, decay_steps=1, decay_rate=train_config.decay)
    optimizer = keras.optimizers.Adam(schedule, beta_1=train_config.beta_1, beta_2=train_config.beta_2,
                                      epsilon=train_config.epsilon)
    if train_config.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
