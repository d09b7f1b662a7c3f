"""FRDS's mask embedder: the ResNet-18 of the thesis' SimCLR, its loss, its views, its training."""

import numpy as np
import pytest

from sdnet_tf import losses
from sdnet_tf.data.masks import contrastive_views, prior_one_hot
from sdnet_tf.metrics.shape import frechet_distance
from sdnet_tf.models.embedder import MaskEmbedder

# torchvision's resnet18(num_classes=512) has 11,176,512 parameters before its fc layer; the
# thesis' head is that fc (512 x 512 + 512) and a Linear(512, 128): 328,320 more
RESNET18_SIMCLR_PARAMETERS = 11_176_512 + 262_656 + 65_664


def _count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def test_resnet18_simclr_parameter_count_and_shapes():
    model = MaskEmbedder(32).build_default()
    assert _count(model.trainable_variables) == RESNET18_SIMCLR_PARAMETERS
    masks = prior_one_hot(np.random.default_rng(0).integers(0, 4, (3, 32, 32)))
    assert tuple(model(masks).shape) == (3, 128) and tuple(model.embed(masks).shape) == (3, 512)
    with pytest.raises(ValueError, match="multiple of 32"):
        MaskEmbedder(48)


def _nt_xent_reference(z, temperature):
    """The thesis' loss (arch/simclr/simclr.py) written out in numpy."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    similarity = z @ z.T
    np.fill_diagonal(similarity, -9e15)
    count = len(z)
    pairs = (np.arange(count) + count // 2) % count
    similarity = similarity / temperature
    top = similarity.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(similarity - top).sum(axis=1)) + top[:, 0]
    return float(np.mean(log_sum - similarity[np.arange(count), pairs]))


def test_nt_xent_matches_the_thesis_loss_and_rewards_matching_pairs():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(8, 16)).astype("float32")
    assert float(losses.nt_xent(z, 0.07)) == pytest.approx(_nt_xent_reference(z.astype(np.float64), 0.07), rel=1e-4)
    assert float(losses.nt_xent(z, 0.5)) == pytest.approx(_nt_xent_reference(z.astype(np.float64), 0.5), rel=1e-4)
    half = rng.normal(size=(4, 16)).astype("float32")
    matched = np.concatenate([half, half + 0.01 * rng.normal(size=half.shape).astype("float32")])
    assert float(losses.nt_xent(matched, 0.07)) < 0.1 < float(losses.nt_xent(z, 0.07))


def test_contrastive_views_are_label_maps_of_the_same_heart_and_reproducible():
    labels = np.zeros((3, 32, 32), np.uint8)
    labels[:, 10:22, 12:20] = 3
    labels[:, 8:10, 12:20] = 2
    labels[:, 14:18, 6:12] = 1
    views = contrastive_views(labels, np.random.default_rng(0))
    assert views.shape == (6, 32, 32) and views.dtype == np.uint8
    assert set(np.unique(views)) <= {0, 1, 2, 3}
    for view in views:
        area = (view == 3).sum()
        assert 0.6 * 96 <= area <= 1.3 * 96 / 0.8  # a rotated, flipped, rescaled copy of the 96-pixel LV
    assert not np.array_equal(views[:3], views[3:])  # two different views of each map
    np.testing.assert_array_equal(views, contrastive_views(labels, np.random.default_rng(0)))


def test_a_tiny_embedder_learns_to_pair_views_and_is_cached(phantom_cohort_8, tmp_path):
    """Learning check: 60 SimCLR steps on 32 phantom masks (a ResNet-18 of width 16 at 32 x 32)
    lower NT-Xent from ln 63 = 4.14 (chance) below 3.0 and pair fresh views of those masks
    eight times as often as chance (1 in 63). Measured with seeds 0-3 (one TensorFlow thread, as
    in the suite): loss 2.12-2.52, top-1 0.17-0.33; at 30 steps top-1 ranged from 0.06 to 0.20,
    too close to chance for a threshold. A second call loads the cached weights instead of
    training."""
    from sdnet_tf.data.masks import load_mask_sets
    from sdnet_tf.training.embedder_trainer import embeddings, frds_embedder

    sets, _, _ = load_mask_sets(phantom_cohort_8, size=32, spacing=3.0, cache_dir=tmp_path, progress=False)
    masks = sets["training"].labels[:32]
    settings = {"epochs": 60, "batch_size": 32, "width": 16, "learning_rate": 3e-3}
    model, info = frds_embedder(masks, masks, tmp_path / "frds", settings, progress=False)
    print("final loss", info["final_loss"], "top-1", info["validation_top1"])
    assert info["steps"] == 60 and info["final_loss"] < 3.0
    assert info["validation_top1"] > 8 / 63
    again, cached = frds_embedder(masks, masks, tmp_path / "frds", settings, progress=False)
    assert cached == info and len(list((tmp_path / "frds").glob("frds-*.npz"))) == 1
    test = sets["test"].labels
    np.testing.assert_allclose(embeddings(again, test), embeddings(model, test), atol=1e-5)
    # FRDS: 0 for a set against itself, larger for scrambled pixels than for other real masks
    real = embeddings(model, test)
    scrambled = np.random.default_rng(0).permuted(test.reshape(len(test), -1), axis=1).reshape(test.shape)
    assert abs(frechet_distance(real, real)) < 1e-3  # sqrtm of a 512 x 512 product: rounding
    assert frechet_distance(real, embeddings(model, scrambled)) > frechet_distance(
        real, embeddings(model, sets["training"].labels))
