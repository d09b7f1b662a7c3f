"""``train_run``: build data, model and engine for a config and train in a run directory."""

import logging
from pathlib import Path

import keras

from sdnet_tf.config import model_kwargs
from sdnet_tf.data.arrays import DataError

log = logging.getLogger("sdnet_tf.train")


def load_arrays(config):
    """The training arrays for ``config.data``."""
    d, m = config.data, config.model
    if d.dataset == "synthetic":
        from sdnet_tf.data.synthetic import synthetic_arrays

        return synthetic_arrays(d.synthetic_images, d.synthetic_validation, m.input_size, d.labelled_fraction,
                                seed=config.train.seed)
    raise DataError(f"unknown dataset {d.dataset!r}; available: synthetic")


def train_run(config, run_dir, resume=True, max_iterations=None, progress=True, arrays=None):
    """Train SDNet as ``config`` says; returns the run summary.

    With ``resume`` a run directory holding checkpoints is continued from the last one;
    without it such a directory is refused rather than overwritten.
    """
    run_dir = Path(run_dir)
    if not resume and (run_dir / "checkpoints").exists():
        raise FileExistsError(f"{run_dir} already holds checkpoints; use --resume or another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_log = logging.getLogger("sdnet_tf")
    package_log.addHandler(handler)
    if package_log.getEffectiveLevel() > logging.INFO:
        package_log.setLevel(logging.INFO)
    try:
        return _train(config, run_dir, resume, max_iterations, progress, arrays)
    finally:
        package_log.removeHandler(handler)
        handler.close()


def _train(config, run_dir, resume, max_iterations, progress, arrays):
    from sdnet_tf.training.trainer import Trainer

    keras.utils.set_random_seed(config.train.seed)
    if config.train.precision != "float32":
        keras.config.set_dtype_policy(config.train.precision)
    if arrays is None:
        arrays = load_arrays(config)
    from sdnet_tf.models import SDNet

    model = SDNet(**model_kwargs(config), seed=config.train.seed)
    model.build()
    trainer = Trainer(model, arrays, config, run_dir, progress=progress)
    counts = arrays.counts()
    log.info("data: %d labelled, %d unlabelled, %d validation images; %d iterations per epoch",
             counts["labelled"], counts["unlabelled"], counts["validation"], trainer.iterations_per_epoch)
    if resume:
        trainer.resume()
    trainer.fit(max_iterations=max_iterations)
    return trainer.finish()
