"""Speed settings chosen for the user, by what the benchmarks measured (``benchmarks/RESULTS.md``).

Framework-free, so the engines and the command line can both ask it.
"""

# from this input size up XLA made the TensorFlow engine's iteration faster on a CPU (224: 1.24x
# over tf.function); on the AVX-512 machine it was slower at 64 and 128 (0.66x, 0.64x) and
# its first iteration about 35 s longer (benchmarks/train_step.py --compare, benchmarks/RESULTS.md)
XLA_MIN_SIZE_ON_CPU = 192


def choose_xla(jit_compile, input_size, gpu):
    """Whether the TensorFlow engine compiles with XLA: ``train.jit_compile`` when it is true
    or false; for ``"auto"``, XLA on a GPU (TensorFlow's fast path there; not measured in this
    project), and on a CPU for inputs of at least ``XLA_MIN_SIZE_ON_CPU`` pixels a side.

    Args:
        jit_compile: ``True``, ``False`` or ``"auto"``.
        input_size: the model's input height and width in pixels (None: unknown, as small).
        gpu: whether TensorFlow sees a GPU.
    """
    if jit_compile != "auto":
        return bool(jit_compile)
    return bool(gpu) or (input_size or 0) >= XLA_MIN_SIZE_ON_CPU


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


def choose_allocator_tuning(xla, input_size, gpu):
    """Whether ``SDNET_TF_ALLOCATOR=auto`` tunes glibc's allocator for a TensorFlow training run:
    where it was measured faster, with XLA on a CPU from ``XLA_MIN_SIZE_ON_CPU`` up (224: 1.09x
    over XLA alone). Not with plain ``tf.function`` (0.85x at 64, 0.96x at 128), not with XLA at
    128 (0.88x), and not on a GPU (not measured)."""
    return bool(xla) and not gpu and (input_size or 0) >= XLA_MIN_SIZE_ON_CPU
