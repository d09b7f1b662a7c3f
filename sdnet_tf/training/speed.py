"""Speed settings chosen for the user, by what the benchmarks measured (``benchmarks/RESULTS.md``).

Framework-free, so the engines and the command line can both ask it.
"""

def choose_xla(jit_compile, input_size, gpu):
    """Whether the TensorFlow engine compiles with XLA: ``train.jit_compile`` when it is true
    or false; for ``"auto"``, XLA on a GPU (TensorFlow's fast path there; not measured in this
    project) and never on a CPU. On CPUs plain ``tf.function`` was faster at every size measured
    with the fused Adam update (benchmarks/RESULTS.md, ``train_step.py --compare``): at 224 x 224
    XLA ran at 0.90x and 0.78x of it on a 2-core Xeon, its first iteration 54-74 s against 29-30 s; at
    64 and 128 it ran at 0.66x and 0.64x on the AVX-512 EPYC. XLA's one win on a CPU (1.24x at
    224 on an AVX2 EPYC) was measured with Keras' per-weight Adam, whose small ops XLA fuses.

    Args:
        jit_compile: ``True``, ``False`` or ``"auto"``.
        input_size: the model's input height and width in pixels (None: unknown); unused by
            the rule, kept for the callers.
        gpu: whether TensorFlow sees a GPU.
    """
    if jit_compile != "auto":
        return bool(jit_compile)
    return bool(gpu)


# Grappler's graph rewriting (TensorFlow) without XLA on a CPU, off against on
# (benchmarks/RESULTS.md, "Grappler on or off, and the table against PyTorch again"). On the
# 2-core Xeon, three invocations of benchmarks/speed_table.sh with both: off made the first
# iteration shorter at every size, by 2.5 s at 64 (10.3 against 12.8 s), 5.3 s at 128 and 3.0 s
# at 224. Per iteration, off ran at 1.13x on's speed at 64 and 0.94x at 128 (medians of six
# pairs: the table's three and three rounds alone) and 1.03x at 224 (three pairs); at 128 the
# pairs spread from 0.72x to 1.14x. On the AVX-512 EPYC off saved 4-5 s of the first iteration
# too, its iteration 0.92x at 64 and 1.05x at 128.


def choose_graph_rewriting(graph_rewriting, xla, input_size, gpu, deterministic=False):
    """Whether TensorFlow's Grappler rewrites the graphs: never with ``train.deterministic``
    (``engines.apply_determinism`` has turned it off; a ``true`` beside it is refused before);
    else ``train.graph_rewriting`` when true or
    false; for ``"auto"``, off on a CPU without XLA, where rewriting was measured to cost 2.5-5 s
    of the first iteration at every size while its effect on the iteration (off at 0.94x-1.13x
    of on's speed) stayed within the runs' spread. With XLA and on a GPU (not measured)
    TensorFlow's default (on) is kept.

    Args:
        graph_rewriting: ``True``, ``False`` or ``"auto"``.
        xla: whether the updates are compiled with XLA (``choose_xla``).
        input_size: the model's input height and width in pixels (None: unknown); unused by
            the rule, kept for the callers.
        gpu: whether TensorFlow sees a GPU.
        deterministic: ``train.deterministic``.
    """
    if deterministic:
        return False
    if graph_rewriting != "auto":
        return bool(graph_rewriting)
    return bool(xla) or bool(gpu)


# with XLA on a CPU the allocator tuning made the iteration faster from this size up (224: 1.09x)
ALLOCATOR_MIN_SIZE_WITH_XLA = 192


def choose_allocator_tuning(xla, input_size, gpu):
    """Whether ``SDNET_TF_ALLOCATOR=auto`` tunes glibc's allocator for a TensorFlow training run:
    where it was measured faster, with XLA (asked for: ``choose_xla`` leaves it off on CPUs) on
    a CPU from ``ALLOCATOR_MIN_SIZE_WITH_XLA`` up (224: 1.09x over XLA alone). Not with plain
    ``tf.function`` (0.85x at 64, 0.96x at 128), not with XLA at 128 (0.88x), and not on a GPU
    (not measured)."""
    return bool(xla) and not gpu and (input_size or 0) >= ALLOCATOR_MIN_SIZE_WITH_XLA
