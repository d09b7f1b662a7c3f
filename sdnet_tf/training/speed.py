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


# Grappler's graph rewriting (TensorFlow) without XLA on the AVX-512 CPU, Grappler on against
# off, three invocations (benchmarks/grappler_compare.py): off made the first iteration 5.1 s
# shorter at 64 and 4.3 s at 128, and the iteration 0.92x as fast at 64 and 1.05x at 128
GRAPHS_UNREWRITTEN_MIN_SIZE_ON_CPU = 128


def choose_graph_rewriting(graph_rewriting, xla, input_size, gpu):
    """Whether TensorFlow's Grappler rewrites the graphs: ``train.graph_rewriting`` when true or
    false; for ``"auto"``, off only where it was measured to cost time: on a CPU, without XLA,
    for inputs of at least ``GRAPHS_UNREWRITTEN_MIN_SIZE_ON_CPU`` pixels a side. On a GPU
    (not measured) and with XLA, TensorFlow's default (on) is kept.

    Args:
        graph_rewriting: ``True``, ``False`` or ``"auto"``.
        xla: whether the updates are compiled with XLA (``choose_xla``).
        input_size: the model's input height and width in pixels (None: unknown, as small).
        gpu: whether TensorFlow sees a GPU.
    """
    if graph_rewriting != "auto":
        return bool(graph_rewriting)
    return bool(xla) or bool(gpu) or (input_size or 0) < GRAPHS_UNREWRITTEN_MIN_SIZE_ON_CPU


# with XLA on a CPU the allocator tuning made the iteration faster from this size up (224: 1.09x)
ALLOCATOR_MIN_SIZE_WITH_XLA = 192


def choose_allocator_tuning(xla, input_size, gpu):
    """Whether ``SDNET_TF_ALLOCATOR=auto`` tunes glibc's allocator for a TensorFlow training run:
    where it was measured faster, with XLA (asked for: ``choose_xla`` leaves it off on CPUs) on
    a CPU from ``ALLOCATOR_MIN_SIZE_WITH_XLA`` up (224: 1.09x over XLA alone). Not with plain
    ``tf.function`` (0.85x at 64, 0.96x at 128), not with XLA at 128 (0.88x), and not on a GPU
    (not measured)."""
    return bool(xla) and not gpu and (input_size or 0) >= ALLOCATOR_MIN_SIZE_WITH_XLA
