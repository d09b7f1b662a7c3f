"""The quality-control calibration an export carries in its sidecar (``meta["qc"]``).

The runtime's quality control (``sdnet_infer.qc``) needs thresholds and the training
distribution of z; they are measured here with the exported ONNX models themselves, on the
run's own data (``sdnet_tf.apps.quality.calibrate_run``), before the sidecar is written.
"""

from sdnet_infer.io import DataError
from sdnet_infer.model import SDNetRuntime
from sdnet_infer.qc import uncalibrated


def calibrate_export(run_dir, out_dir, meta, log=None, data=None):
    """The sidecar's ``qc`` entry for the models just written to ``out_dir``.

    The sidecar does not exist yet (it is written last); the models are opened as the runtime
    will open them, with ``meta`` as their sidecar (so every file's hash is checked, external
    weights included).

    Args:
        run_dir: the exported run (its ``data.json`` names the cohort and split), or None for a
            model exported without one.
        out_dir: the export folder, its model files complete.
        meta: the sidecar as it will be written (``models``, ``layout``, ``preprocessing``).
        log: a function taking one line, or None.
        data: the cohort folder, when it moved since training.

    Returns:
        ``sdnet_infer.qc.calibrate``'s result, or ``sdnet_infer.qc.uncalibrated(reason)`` when
        the run's data cannot be read (the runtime then reports validity only and says why).
    """
    from sdnet_tf.apps.quality import calibrate_run

    if run_dir is None:
        return uncalibrated("exported without a run directory, so without its validation patients")
    if len(meta["probability_channels"]) < 3:
        return uncalibrated(f"the model segments {', '.join(meta['probability_channels'])} only; the anatomical "
                            "checks need LV, MYO and RV")
    runtime = SDNetRuntime(out_dir, meta=meta)
    try:
        return calibrate_run(run_dir, runtime, data=data, log=log)
    except DataError as error:
        if log:
            log(f"quality control not calibrated, validity only: {error}")
        return uncalibrated(error)
