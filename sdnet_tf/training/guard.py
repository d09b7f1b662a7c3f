"""The finite-value guard shared by the prior engines (TensorFlow and JAX), backend-free."""

import logging

log = logging.getLogger("sdnet_tf.train")

NONFINITE = ("skip", "stop")


class NonFiniteError(FloatingPointError):
    """A training step produced NaN or infinite values."""


def as_floats(total, terms):
    """A step's loss terms and ``total`` as a dict of Python floats."""
    out = {name: float(value) for name, value in terms.items()}
    out["total"] = float(total)
    return out


class Guard:
    """Counts the steps the engines skipped and decides what a non-finite step does.

    Args:
        nonfinite: "skip" (drop the step, log it) or "stop" (raise ``NonFiniteError``).
        max_nonfinite: consecutive skipped steps after which the run stops anyway.
    """

    def __init__(self, nonfinite="skip", max_nonfinite=20):
        if nonfinite not in NONFINITE:
            raise ValueError(f"nonfinite {nonfinite!r}: expected one of {', '.join(NONFINITE)}")
        self.nonfinite = nonfinite
        self.max_nonfinite = max_nonfinite
        self.skipped = 0
        self.consecutive = 0

    def outcome(self, total, terms, finite, where="step"):
        """The step's terms as floats with ``skipped`` 0.0 or 1.0; a skipped step is logged,
        or raises ``NonFiniteError`` under "stop" or after ``max_nonfinite`` in a row."""
        out = as_floats(total, terms)
        if finite:
            self.consecutive = 0
            out["skipped"] = 0.0
            return out
        self.skipped += 1
        self.consecutive += 1
        bad = ", ".join(f"{k}={v:.4g}" for k, v in out.items())
        text = (f"{where}: non-finite loss or gradients ({bad}); the step was not applied. "
                "If it recurs, lower train.learning_rate (e.g. 5e-3 or 1e-3) or raise train.weight_decay")
        if self.nonfinite == "stop" or self.consecutive >= self.max_nonfinite:
            if self.nonfinite == "skip":
                text += f" ({self.consecutive} consecutive non-finite steps: stopping)"
            raise NonFiniteError(text)
        log.warning(text)
        out["skipped"] = 1.0
        return out
