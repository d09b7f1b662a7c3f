"""A run's ``train.log``: the package's log messages copied to a file in the run directory."""

import logging
from pathlib import Path


def log_to_file(run_dir):
    """Copy the package's log messages (INFO and up) to ``<run_dir>/train.log``; returns the
    handler for ``stop_logging``."""
    handler = logging.FileHandler(Path(run_dir) / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_log = logging.getLogger("sdnet_tf")
    package_log.addHandler(handler)
    if package_log.getEffectiveLevel() > logging.INFO:
        package_log.setLevel(logging.INFO)
    return handler


def stop_logging(handler):
    logging.getLogger("sdnet_tf").removeHandler(handler)
    handler.close()
