"""``train.deterministic``: the same seed, data and config give bit-identical weights.

With Grappler's graph rewriting and more than one inter-op thread, TensorFlow's gradients on a
CPU are not deterministic, and 20-step runs of the ACDC NVAE with one seed can part by 2.85 in
a weight; ``train.deterministic`` switches on op determinism and turns the rewriting off
(README, Training, "Same seed, same weights"). Both are process-wide and cannot be undone, and
the test processes run TensorFlow on one thread (tests/conftest.py), so the runs here are in a
subprocess with TensorFlow's default thread pools, as training runs.
"""

import json
import subprocess
import sys
import textwrap

import pytest

from support.helpers import TESTS, tensorflow_env


def test_deterministic_runs_of_sdnet_and_a_prior_give_bit_identical_weights(phantom_cohort_8, tmp_path):
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        sys.path.insert(0, {str(TESTS)!r})
        import numpy as np
        from tensorflow.python.framework import config as tf_config
        from sdnet_tf.config import PriorConfig
        from sdnet_tf.training.prior_trainer import train_prior
        from support.helpers import small_trainer

        out = {{}}
        assert not tf_config.is_op_determinism_enabled()
        sdnet = []
        for run in ("a", "b"):
            trainer = small_trainer(Path({str(tmp_path)!r}) / ("sdnet-" + run), deterministic=True)
            initial = [np.asarray(v).copy() for v in trainer.model.weights]
            trainer.fit(max_iterations=3)
            sdnet.append([np.asarray(v) for v in trainer.model.weights])
        out["enabled"] = tf_config.is_op_determinism_enabled()
        out["grappler_off"] = bool(tf_config.get_optimizer_experimental_options().get("disable_meta_optimizer"))
        out["sdnet"] = max(float(np.abs(a - b).max()) for a, b in zip(*sdnet))
        out["sdnet_moved"] = max(float(np.abs(a - b).max()) for a, b in zip(initial, sdnet[1]))

        prior = []
        for run in ("a", "b"):
            config = PriorConfig()
            config.model.kind, config.model.input_size = "acnn", 32
            config.model.filters, config.model.levels = 16, 2
            config.train.batch_size, config.train.epochs, config.train.steps_per_epoch = 8, 1, 3
            config.train.validation_samples, config.train.deterministic = 0, True
            config.data.augment, config.data.spacing = False, 6.0
            config.data.path, config.data.cache_dir = {str(phantom_cohort_8)!r}, {str(tmp_path / "cache")!r}
            run_dir = Path({str(tmp_path)!r}) / ("prior-" + run)
            train_prior(config, run_dir, progress=False)
            prior.append(dict(np.load(run_dir / "checkpoints" / "ckpt-3.npz")))
        out["prior"] = max(float(np.abs(prior[0][k] - prior[1][k]).max()) for k in prior[0]
                           if prior[0][k].dtype.kind == "f")
        print(json.dumps(out))
    """)
    result = subprocess.run([sys.executable, "-c", script], env=tensorflow_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["enabled"], "train.deterministic did not switch on TensorFlow's op determinism"
    assert found["grappler_off"], "train.deterministic left Grappler's graph rewriting on"
    assert found["sdnet_moved"] > 1e-4, found  # three iterations moved the weights
    assert found["sdnet"] == 0.0 and found["prior"] == 0.0, found


def test_deterministic_jax_on_a_gpu_without_the_xla_flag_is_refused(monkeypatch):
    pytest.importorskip("jax")
    # imported in this (TensorFlow) process for its check only: nothing runs on JAX here
    from sdnet_tf.config import ConfigError
    from sdnet_tf.training import jax_engine

    class Device:
        platform = "gpu"

    monkeypatch.setattr(jax_engine.jax, "devices", lambda: [Device()])
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    with pytest.raises(ConfigError, match="XLA_FLAGS=--xla_gpu_deterministic_ops=true"):
        jax_engine.check_deterministic()
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=true")
    jax_engine.check_deterministic()


def test_deterministic_with_graph_rewriting_on_is_refused_before_anything_is_written(tmp_path):
    from tensorflow.python.framework import config as tf_config

    from sdnet_tf.apps.train import train_run
    from sdnet_tf.config import ConfigError
    from support.helpers import small_config

    with pytest.raises(ConfigError, match="train.graph_rewriting: true contradicts it"):
        train_run(small_config(deterministic=True, graph_rewriting=True), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert not tf_config.is_op_determinism_enabled()  # nothing switched on in the test process
