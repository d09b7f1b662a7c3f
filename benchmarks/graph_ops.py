"""Count the graph ops of each SDNet training update on the TensorFlow engine.

    python benchmarks/graph_ops.py --config synthetic-quick [--set model.input_size=32]

A ``tf.function``'s first call builds its graph op by op in Python, so an update's first
iteration costs about in proportion to the ops it holds (benchmarks/RESULTS.md, "Tracing
fewer ops"). This runs one iteration (without XLA, Grappler as the engine chooses) and prints,
per update, the number of ops in its traced graph and the ten most frequent op types, then the
total over the distinct updates, as JSON.
"""

import argparse
import collections
import json
import os
import tempfile


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="synthetic-quick")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from sdnet_tf.config import load_config, model_kwargs
    from sdnet_tf.data.synthetic import synthetic_arrays
    from sdnet_tf.models import SDNet
    from sdnet_tf.training.trainer import Trainer

    config = load_config(args.config, ["train.image_summaries=0", "train.jit_compile=false", *args.overrides])
    keras.utils.set_random_seed(1)
    arrays = synthetic_arrays(32, 8, config.model.input_size, 0.5, seed=0)
    model = SDNet(**model_kwargs(config), seed=1)
    model.build()
    updates, seen = {}, set()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, arrays, config, run_dir, progress=False)
        trainer.train_iteration()
        for name, function in trainer.engine._updates.items():
            for concrete in function._list_all_concrete_functions_for_serialization():
                ops = concrete.graph.get_operations()
                kinds = collections.Counter(op.type for op in ops)
                updates[name] = {"ops": len(ops), "most_frequent": dict(kinds.most_common(10)),
                                 "shared_with": next((n for n, f in seen if f is function), None)}
            seen.add((name, function))
    total = sum(u["ops"] for u in updates.values() if u["shared_with"] is None)
    print(json.dumps({"config": args.config, "overrides": args.overrides, "input_size": config.model.input_size,
                      "updates": updates, "total_ops_distinct_updates": total}, indent=1))


if __name__ == "__main__":
    main()
