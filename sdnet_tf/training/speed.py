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


def choose_graph_rewriting(graph_rewriting, xla):
    """Whether TensorFlow's Grappler rewrites the training updates' graphs: ``train.graph_rewriting``
    when true or false; for ``"auto"``, only when they are compiled with XLA (TensorFlow's own
    default there). Without XLA, on the AVX-512 CPU, turning it off made the first iteration
    4-5 s shorter at 64 and 128 and the iteration 0.97x and 1.05x as fast (medians of six
    invocations; benchmarks/RESULTS.md).

    Args:
        graph_rewriting: ``True``, ``False`` or ``"auto"``.
        xla: whether the updates are compiled with XLA (``choose_xla``).
    """
    if graph_rewriting != "auto":
        return bool(graph_rewriting)
    return bool(xla)
