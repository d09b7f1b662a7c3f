"""JAX data parallelism: one iteration under ``keras.distribution.DataParallel`` on two devices
equals one device with the same global batch; the configurations it is refused in.

Both iterations run in subprocesses on the JAX backend with two host-platform CPU devices
(``--xla_force_host_platform_device_count=2``): the one-device run sets no distribution and
runs on the first device, the two-device run builds the model and the engine in
``DataParallel``'s scope. The iteration is ``engine_iteration.run``'s (fixed weights, batch,
fake masks and noise table).
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("jax")

from cli import main  # noqa: E402
from support.helpers import small_config  # noqa: E402
from sdnet_tf.config import ConfigError  # noqa: E402
from sdnet_tf.apps.train import train_run  # noqa: E402
from support.helpers import ROOT, TESTS, assert_same_iteration, jax_env as _jax_env  # noqa: E402

# Tolerances of two devices against one (float32 on the CPU): the same kernels on half
# batches, with the batch reductions (losses, gradients, BatchNorm statistics) summed per
# device and then across devices, so only the order of the additions differs. Measured on
# the 2-core CI machine: loss terms 4.6e-7 relative, network variables 1.2e-7 absolute (the
# networks moved by up to 0.04), Adam's moments 4.4e-5 absolute (2.8e-5 relative, a second
# moment of 1.59), the initial masks equal. The tolerances are the TensorFlow-parity test's
# (support.helpers.assert_same_iteration).

CHILD = textwrap.dedent("""
    import sys

    import jax
    import keras
    import numpy as np

    sys.path.insert(0, {tests!r})
    from support import engine_iteration
    from support.helpers import small_config
    from sdnet_tf.config import ConfigError, model_kwargs
    from sdnet_tf.models import SDNet
    from sdnet_tf.training import jax_engine
    from sdnet_tf.training.engines import sdnet_engine

    devices, weights, out_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    placed = []  # (rows, devices, rows per device) of every input the engine placed
    place = jax_engine.JAXEngine._place

    def spy(self, array):
        result = place(self, array)
        if hasattr(result, "sharding"):
            rows = {{shard.index[0].indices(result.shape[0]) for shard in result.addressable_shards}}
            placed.append((result.shape[0], len(result.sharding.device_set),
                           max(s.data.shape[0] for s in result.addressable_shards), len(rows)))
        return result

    jax_engine.JAXEngine._place = spy
    keras.random.normal = engine_iteration.table_normal
    if devices == 2:
        parallel = jax_engine.data_parallel()
        with parallel.scope():
            out = engine_iteration.run(weights)
            # a global batch the devices cannot split is refused
            config = small_config(backend="jax", batch_size=3)
            model = SDNet(**model_kwargs(config), seed=config.train.seed)
            model.build()
            try:
                sdnet_engine(model, config)
            except ConfigError as error:
                out["batch_error"] = np.array(str(error))
    else:
        out = engine_iteration.run(weights)
    out["jax_devices"] = np.array(len(jax.devices()))
    out["placed"] = np.array(placed, np.int64).reshape(-1, 4)
    np.savez(out_path, **out)
""")


@pytest.fixture(scope="module")
def iterations(tmp_path_factory):
    """The iteration on one device and under DataParallel on two: (one, two) dicts."""
    tmp = tmp_path_factory.mktemp("data_parallel")
    env = _jax_env(tmp)
    env["XLA_FLAGS"] = env["XLA_FLAGS"] + " --xla_force_host_platform_device_count=2"
    weights = tmp / "initial.weights.h5"
    script = CHILD.format(tests=str(TESTS))
    runs = []
    for devices in (1, 2):  # one after the other: the first writes the initial weights
        out = tmp / f"{devices}.npz"
        result = subprocess.run([sys.executable, "-c", script, str(devices), str(weights), str(out)], env=env,
                                capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-4000:]
        with np.load(out) as data:
            runs.append({k: data[k] for k in data.files})
    return tuple(runs)


# slow: two JAX subprocesses one after the other (about 1.5 minutes); the TensorFlow-JAX parity of
# tests/training/test_jax_engine.py stays in the default suite
@pytest.mark.slow
def test_two_devices_match_one_device(iterations):
    one, two = iterations
    assert int(one["jax_devices"]) == int(two["jax_devices"]) == 2
    # one device: inputs passed through as numpy; two: every input split in half across both
    assert len(one["placed"]) == 0
    batch = small_config().train.batch_size
    assert len(two["placed"]) == 2 + 1 + 2 + 2 + 2 + 1  # the inputs of the five steps, and predict_masks'
    for rows, devices, per_device, slices in two["placed"]:
        assert (rows, devices, per_device, slices) == (batch, 2, batch // 2, 2)

    keys = set(one) - {"placed", "batch_error"}
    assert keys == set(two) - {"placed", "batch_error"}
    assert_same_iteration(one, two)
    moved = max(float(np.max(np.abs(one[name] - one["initial/" + name[len("final/"):]])))
                for name in one if name.startswith("final/") and not name.startswith("final/optimizer_")
                and np.issubdtype(one[name].dtype, np.floating))
    assert moved > 1e-3  # the iteration really trained


# slow: it reads the two-device subprocess of the test above
@pytest.mark.slow
def test_indivisible_global_batch_is_refused(iterations):
    _, two = iterations
    assert "train.batch_size=3" in str(two["batch_error"]) and "2 devices" in str(two["batch_error"])


@pytest.mark.parametrize("backend, distribute", [("tensorflow", "data_parallel"), ("jax", "mirrored"),
                                                 ("jax", "multi_worker")])
def test_distribute_must_fit_the_backend(tmp_path, backend, distribute):
    config = small_config(backend=backend, distribute=distribute)
    with pytest.raises(ConfigError, match=distribute):
        train_run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_refuses_data_parallel_on_tensorflow(tmp_path):
    result = CliRunner().invoke(main, ["train", "synthetic", "-o", str(tmp_path / "run"), "--backend", "tensorflow",
                                       "--distribute", "data-parallel"])
    assert result.exit_code != 0
    assert "needs the JAX engine" in result.output
