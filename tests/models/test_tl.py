"""ACNN's T-L network: the predictor's size (formula and golden value), shapes, the frozen
autoencoder, the code distance (golden values), config and .keras round trips."""

import keras
import numpy as np
import pytest

from sdnet_tf import losses
from sdnet_tf.models.tl import CodePredictor, TLNetwork
from sdnet_tf.training import prior_objectives

TINY = dict(input_size=16, code_size=3, autoencoder_filters=4, autoencoder_levels=2, filters=2, levels=2)


def predictor_parameters(input_size, input_channels, code_size, filters, levels):
    """The trainable parameters of ``CodePredictor`` by its docstring's formula."""
    c = [min(filters * 2 ** level, 8 * filters) for level in range(levels + 1)]
    count = 9 * input_channels * c[0] + 2 * c[0]
    count += sum(9 * c[l - 1] * c[l] + 9 * c[l] ** 2 + 4 * c[l] for l in range(1, levels + 1))
    return count + ((input_size // 2 ** levels) ** 2 * c[-1] + 1) * code_size


def _trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


@pytest.mark.parametrize("arguments", [{}, dict(input_size=32, code_size=8, filters=4, levels=2),
                                       dict(input_size=64, input_channels=2, code_size=5, filters=3, levels=3)])
def test_predictor_parameter_count_follows_the_formula(arguments):
    model = CodePredictor(**arguments).build_default()
    defaults = dict(input_size=128, input_channels=1, code_size=64, filters=16, levels=4)
    assert _trainable(model) == predictor_parameters(**{**defaults, **arguments})


def test_default_predictor_size_is_the_autoencoder_encoder_on_one_channel():
    # golden value: convolutions 585,360 (the AE encoder's 585,792 less 3 x 9 x 16 for the 3
    # channels fewer), BatchNorm gamma and beta 1,440, code Dense 8192 x 64 + 64 = 524,352
    model = CodePredictor().build_default()
    assert _trainable(model) == 1_111_152
    assert model.count_params() == 1_111_152 + 1_440  # the BatchNorm moving statistics


def test_tl_network_trains_only_the_predictor_and_segments_through_the_decoder():
    model = TLNetwork(**TINY, seed=1).build_default()
    assert not model.autoencoder.trainable
    assert model.trainable_variables and _trainable(model) == predictor_parameters(16, 1, 3, 2, 2)
    assert [v.path for v in model.trainable_variables] == [v.path for v in model.predictor.trainable_variables]
    assert model.variables == model.predictor.variables + model.autoencoder.variables  # the checkpoint's order
    images = np.random.default_rng(0).normal(size=(2, 16, 16, 1)).astype("float32")
    codes = np.asarray(model.predict_codes(images))
    assert codes.shape == (2, 3)
    probabilities = np.asarray(model(images, training=False))
    assert probabilities.shape == (2, 16, 16, 4)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
    decoded = np.asarray(keras.ops.softmax(model.autoencoder.decode(codes, training=False), axis=-1))
    np.testing.assert_allclose(probabilities, decoded, rtol=1e-5, atol=1e-6)


def test_invalid_size_names_it():
    with pytest.raises(ValueError, match="CodePredictor input_size 18 .*multiple of 4"):
        CodePredictor(input_size=18, levels=2)


def test_code_distance_golden_values():
    predicted = np.array([[1.0, 2.0], [0.0, 0.0]], "float32")
    target = np.array([[0.0, 0.0], [3.0, 4.0]], "float32")
    assert float(losses.code_distance(predicted, target)) == pytest.approx((5.0 + 25.0) / 2)  # per-sample sums, mean
    assert float(losses.code_distance(target, target)) == 0.0


def test_tl_loss_is_the_code_distance_to_the_autoencoder_code_of_the_mask():
    # both networks' code layers made constant (zero kernels): the predictor says (1, 2, 3)
    # for every image, the autoencoder (0, 0, 1) for every mask, so the loss is
    # 1^2 + 2^2 + 2^2 = 9 whatever the batch
    model = TLNetwork(**TINY, seed=2).build_default()
    for layer, bias in ((model.predictor.code, [1.0, 2.0, 3.0]), (model.autoencoder.code, [0.0, 0.0, 1.0])):
        layer.set_weights([np.zeros(layer.kernel.shape, "float32"), np.array(bias, "float32")])
    rng = np.random.default_rng(1)
    images = rng.normal(size=(3, 16, 16, 1)).astype("float32")
    masks = np.eye(4, dtype="float32")[rng.integers(0, 4, (3, 16, 16))]
    total, terms = prior_objectives.tl_code(model, images, masks)
    assert float(total) == float(terms["code"]) == pytest.approx(9.0) and set(terms) == {"code"}
    # with the decoded mask's cross-entropy: total = code + w * mean pixel cross-entropy
    total, terms = prior_objectives.tl_code(model, images, masks, code=2.0, cross_entropy=0.5)
    decoded = np.asarray(model(images, training=False))
    cross_entropy = float(np.mean(np.sum(-masks * np.log(np.clip(decoded, 1e-7, 1.0)), axis=-1)))
    assert float(terms["cross_entropy"]) == pytest.approx(cross_entropy, rel=1e-5)
    assert float(total) == pytest.approx(2.0 * 9.0 + 0.5 * cross_entropy, rel=1e-5)


def test_config_round_trip_and_save_load(tmp_path):
    model = TLNetwork(**TINY, seed=3).build_default()
    images = np.random.default_rng(2).normal(size=(2, 16, 16, 1)).astype("float32")
    out = np.asarray(model(images, training=False))
    clone = TLNetwork.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert {k: model.get_config()[k] for k in TINY} == TINY
    model.save(tmp_path / "tl.keras")
    loaded = keras.models.load_model(tmp_path / "tl.keras")
    assert isinstance(loaded, TLNetwork) and not loaded.autoencoder.trainable
    np.testing.assert_allclose(np.asarray(loaded(images, training=False)), out, rtol=1e-6, atol=1e-7)
