"""A shared base for the networks: building by a symbolic call of ``call``."""

import keras


def _is_shape(value):
    return isinstance(value, (tuple, list)) and all(v is None or isinstance(v, int) for v in value)


def placeholders(input_shape):
    """KerasTensors for a shape or a list of shapes."""
    if _is_shape(input_shape):
        return keras.KerasTensor(tuple(input_shape))
    return [placeholders(shape) for shape in input_shape]


class SymbolicBuildModel(keras.Model):
    """A subclassed model that creates all its weights when ``build`` is called.

    Keras' default ``build`` of a subclassed model marks it built without creating the weights
    of its sub-layers; here ``build`` traces ``call`` on symbolic inputs, so ``count_params``,
    ``summary`` and weight loading work before the first real call.
    """

    def default_input_shape(self):
        raise NotImplementedError

    def build(self, input_shape=None):
        if self.built:
            return
        self.call(placeholders(input_shape or self.default_input_shape()))
        self.built = True

    def build_default(self):
        """Build for the constructor's input size and return self."""
        self.build(self.default_input_shape())
        return self


class NetworkGroup(SymbolicBuildModel):
    """A model made of named networks (``networks()``) that each build at their own input
    shapes (SDNet, its MICCAI 2018 precursor); its input is ``input_size`` square images of
    ``input_channels``."""

    def networks(self):
        raise NotImplementedError

    def build(self, input_shape=None):
        if self.built:
            return
        for network in self.networks().values():
            network.build_default()
        self.built = True

    def default_input_shape(self):
        return (None, self.input_size, self.input_size, self.input_channels)
