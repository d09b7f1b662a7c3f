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
    from sdnet_tf.config import load_config
    from sdnet_tf.training.trainer import Trainer

    from common import seeded_sdnet

    config = load_config(args.config, ["train.image_summaries=0", "train.jit_compile=false", *args.overrides])
    model, arrays = seeded_sdnet(config)
    updates, first_name = {}, {}  # first_name: id of a compiled update -> the first step using it
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, arrays, config, run_dir, progress=False)
        trainer.train_iteration()
        for name, function in trainer.engine._updates.items():
            for concrete in function._list_all_concrete_functions_for_serialization():
                ops = concrete.graph.get_operations()
                kinds = collections.Counter(op.type for op in ops)
                shared = first_name.setdefault(id(function), name)
                updates[name] = {"ops": len(ops), "most_frequent": dict(kinds.most_common(10)),
                                 "shared_with": None if shared == name else shared}
    total = sum(u["ops"] for u in updates.values() if u["shared_with"] is None)
    print(json.dumps({"config": args.config, "overrides": args.overrides, "input_size": config.model.input_size,
                      "updates": updates, "total_ops_distinct_updates": total}, indent=1))


if __name__ == "__main__":
    main()
