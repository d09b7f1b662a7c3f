"""Side-by-side A/B of the NVAE prior step between checkouts (or environment settings): each
variant runs ``prior_step.measure("tf-function", "nvae-acdc", ...)`` in a fresh process from its
own checkout, the variants alternate for ROUNDS rounds (default 3), and the medians and their
ratio to the first variant are printed. A variant is ``NAME=ENV=VALUE,...@CHECKOUT``, with
``+nograppler`` (Grappler off in the process) or ``+on`` (``train.graph_rewriting=true``) after
the checkout's path, and config overrides as ``+SECTION.KEY=VALUE``; ENV may be empty, e.g.

    ROUNDS=3 python benchmarks/prior_step_ab.py "base=@/path/to/base" "candidate=@/path/to/branch"
    python benchmarks/prior_step_ab.py "base=@." "eigen=TF_ENABLE_ONEDNN_OPTS=0@."
    python benchmarks/prior_step_ab.py "base=@." "deterministic=@.+train.deterministic=true"

STEPS (6) and WARM (2) set the timed and warm-up steps of each process.
"""
import json, os, statistics, subprocess, sys

if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
    sys.exit(__doc__)
rounds = int(os.environ.get("ROUNDS", 3)); steps = os.environ.get("STEPS", "6"); warm = os.environ.get("WARM", "2")
variants = []
for spec in sys.argv[1:]:
    name, rest = spec.split("=", 1)
    envs, root = rest.split("@")
    root, *flags = root.split("+")
    grappler = "nograppler" not in flags
    sets = ["train.graph_rewriting=true"] * ("on" in flags) + [f for f in flags if "=" in f]
    env = dict(kv.split("=", 1) for kv in envs.split(",") if kv)
    variants.append((name, env, root, grappler, sets))
CHILD = """
import sys, json
sys.argv=['x']
if not %r:
    import tensorflow as tf; tf.config.optimizer.set_experimental_options({'disable_meta_optimizer': True})
sys.path.insert(0, %r + '/benchmarks')
import prior_step
print(json.dumps(prior_step.measure('tf-function', 'nvae-acdc', %r, %s, %s)))
"""
res = {v[0]: [] for v in variants}; warmups = {v[0]: [] for v in variants}
for r in range(rounds):
    for name, env, root, grappler, sets in variants:
        e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=f"{root}/runtime:{root}", **env)
        out = subprocess.run(["nice", "-n", "10", sys.executable, "-c", CHILD % (grappler, root, sets, warm, steps)],
                             capture_output=True, text=True, env=e, cwd=root)
        if out.returncode: print(name, "FAILED", out.stderr[-2000:]); continue
        j = json.loads(out.stdout.strip().splitlines()[-1])
        res[name].append(j["median_step_s"]); warmups[name].append(j["warmup_s"])
        print(f"round {r} {name}: median {j['median_step_s']:.4f} steps {j['step_s']} warmup {j['warmup_s']}", flush=True)
base = statistics.median(res[variants[0][0]])
print("\n| variant | per-round medians s | median s/step | ratio (base / variant) | warm-up s |")
for name in res:
    m = statistics.median(res[name])
    print(f"| {name} | {', '.join(f'{x:.3f}' for x in res[name])} | {m:.3f} | {base / m:.2f} | {statistics.median(warmups[name]):.0f} |")
