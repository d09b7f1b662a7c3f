#!/usr/bin/env python
"""Do the TensorFlow and JAX engines train SDNet alike over several iterations?

    python results/acdc/engine_agreement.py [--iterations 4] [--decay 1.0]

Two checks, each on the tiny test SDNet (32 x 32) on the CPU, in float32:

1. **The engines' updates.** From the same initial weights, the same batch and fake masks and
   the same table of normal draws (``tests/support/engine_iteration.py``, which the one-iteration
   parity test uses), each engine runs ``--iterations`` full iterations (five steps each) with
   an inverse-time decay of ``--decay`` per optimiser step, so a learning rate fixed at tracing
   time would show from the second iteration. Printed: the largest difference of each network's
   variables and of each optimiser's after every iteration, and of the masks each engine
   predicts for the fake pool (``predict_masks`` on the batch's discriminator images). The JAX side runs in its own
   process (a process holds one Keras backend).
2. **What the loop does around the updates.** With the weight average, BatchNorm recalibration
   and two validations between six iterations, the training state (every network variable)
   must end exactly where it ends without them, on each engine.

Written after the SDNet runs trained with the JAX engine on a GPU showed the mask
discriminator pulling ahead for good from about epoch 13, which the CPU runs with TensorFlow
did not (``results/acdc/README.md``).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "support"))


def iterations(initial, out, count, decay):
    """Run ``count`` iterations on Keras' backend from ``initial``; save every variable after each."""
    import keras
    import numpy as np

    import engine_iteration as fixed
    from sdnet_tf.training.schedule import SDNET_SCHEDULE
    from sdnet_tf.training.trainer import _step_inputs

    keras.random.normal = fixed.table_normal
    # the parity test's model, weights (written at the first call) and inputs, with the decay
    model, engine, batch, fakes = fixed.prepared(initial, decay=decay)
    saved = {}
    for k in range(count):
        for step in SDNET_SCHEDULE:
            engine.run_step(step, *_step_inputs(step, batch, fakes))
        saved.update({f"{k}/{name}": value for name, value in fixed.variables(model, engine).items()})
        # the masks the loop puts into the fake pool for the discriminator (inference mode)
        saved[f"{k}/predicted_masks/all"] = engine.predict_masks(batch["discriminator_images"])
    np.savez(out, **saved)


def loop_state():
    """Largest difference of the training state with and without average, recalibration and validation."""
    import keras
    import numpy as np

    from support.helpers import small_trainer

    def train(average, recalibration, validate):
        trainer = small_trainer(tempfile.mkdtemp(), backend=keras.backend.backend(), weight_average=average,
                                batchnorm_recalibration=recalibration)
        for i in range(6):
            trainer.train_iteration()
            if validate and i in (1, 3):
                with trainer.around_validation(None):
                    trainer.validate()
        return [np.array(v.value) for net in trainer.model.networks().values() for v in net.variables]

    plain, full = train(0.0, 0, False), train(0.999, 2, True)
    return max(float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0 for a, b in zip(plain, full))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--decay", type=float, default=1.0, help="inverse-time decay per optimiser step")
    parser.add_argument("--worker", nargs=4, metavar=("INITIAL", "OUT", "COUNT", "DECAY"), help=argparse.SUPPRESS)
    parser.add_argument("--loop-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        initial, out, count, decay = args.worker
        return iterations(initial, out, int(count), float(decay))
    if args.loop_worker:
        return print(json.dumps(loop_state()))

    import numpy as np

    tmp = Path(tempfile.mkdtemp())
    outputs = {}
    for backend in ("tensorflow", "jax"):
        # oneDNN's fused CPU kernels round differently from JAX's; off, the comparison is of
        # the engines' mathematics rather than of two kernel libraries' roundings
        # and both on the CPU, also on a machine with a GPU
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0",
                   JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
        subprocess.run([sys.executable, __file__, "--worker", str(tmp / "initial.weights.h5"), str(tmp / f"{backend}.npz"),
                        str(args.iterations), str(args.decay)], env=env, check=True)
        loop = subprocess.run([sys.executable, __file__, "--loop-worker"], env=env, capture_output=True, text=True)
        if loop.returncode:
            sys.exit(f"the {backend} loop check failed:\n{loop.stderr[-3000:]}")
        outputs[backend] = json.loads(loop.stdout.strip().splitlines()[-1])
    tf_vars, jax_vars = np.load(tmp / "tensorflow.npz"), np.load(tmp / "jax.npz")
    print(f"1. TensorFlow against JAX after each iteration (decay {args.decay} per step): the largest difference "
          "of each network's and optimiser's variables (in brackets, over the group's largest value):")
    for k in range(args.iterations):
        differences, scales = {}, {}
        for name in tf_vars.files:
            if name.startswith(f"{k}/") and tf_vars[name].size:
                group = name.split("/")[1]
                a, b = tf_vars[name].astype(np.float64), jax_vars[name].astype(np.float64)
                differences[group] = max(differences.get(group, 0.0), float(np.max(np.abs(a - b))))
                scales[group] = max(scales.get(group, 0.0), float(np.max(np.abs(a))))
        print(f"   iteration {k + 1}: " + ", ".join(f"{group} {differences[group]:.1e} ({differences[group] / scales[group]:.0e})"
                                                   for group in differences))
    print("2. Training state with the weight average, recalibration and two validations, against without:")
    for backend, difference in outputs.items():
        print(f"   {backend}: largest difference {difference:.1e}")


if __name__ == "__main__":
    main()
