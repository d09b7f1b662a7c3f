"""The ``sdnet-tf`` command line: each command parses its options and calls one library function."""

import logging
import sys
from pathlib import Path

import click

from sdnet_tf.runtime import tune_allocator

try:
    tune_allocator(when_auto=False)  # SDNET_TF_ALLOCATOR=tuned: from start-up; auto: by the engine
except ValueError as error:  # an unknown setting: one line, before anything else runs
    sys.exit(f"Error: {error}")

log = logging.getLogger("sdnet_tf")
ONNX_OPSETS = (13, 18)  # export.onnx_export.OPSETS (not imported here: it would load nibabel at start-up)
TENSORFLOW_COMMANDS = {"summary", "shape-eval", "preprocess", "predict", "evaluate", "figures", "latent", "report",
                       "export", "modality-classifier"}


class UserError(click.ClickException):
    """An error the user can fix; printed without a traceback, exit code 1."""


class Interrupted(click.ClickException):
    """Ctrl-C or SIGINT; any file being written was removed. Exit code 130, as a shell reports it."""

    exit_code = 130


class Folder(click.Path):
    """A folder argument or option (an output, or evaluate's inputs). A path that is a file, a
    symbolic link loop or a broken symbolic link (``sdnet_infer.io.folder_problem``) is one line, ``Error: PATH: <problem>``, exit code 1, as the commands'
    other errors about their inputs and outputs (click's own check prints its usage block and
    exits with 2). A folder that is not there is the command's to create or report."""

    def __init__(self):
        super().__init__(file_okay=False, path_type=Path)

    def convert(self, value, param, ctx):
        from sdnet_infer.io import folder_problem

        option = max(param.opts, key=len) if isinstance(param, click.Option) else param.human_readable_name
        problem = folder_problem(value)
        if problem:
            raise UserError(f"{value}: {problem} ({option} takes a folder)")
        return super().convert(value, param, ctx)


FOLDER = Folder()


class SliceAxis(click.ParamType):
    """``--slice-axis``: "auto" or a stored axis 0, 1 or 2 (``sdnet_infer.geometry.parse_slicing``);
    anything else is click's usage error."""

    name = "auto|0|1|2"

    def convert(self, value, param, ctx):
        from sdnet_infer.cli import slice_axis

        try:
            return slice_axis(value)
        except Exception as error:  # argparse.ArgumentTypeError
            self.fail(str(error), param, ctx)


SLICE_AXIS = SliceAxis()


def refuse_repeated_options(command, ctx, args):
    """Refuse an option given more than once where click would keep only the last value.

    click's default for an option without ``multiple=True`` is last-wins, without a word:
    ``sdnet-tf predict -i A -i B`` would segment B alone. So, before ``command`` processes
    ``args`` (its command-line words, a list of str; not modified), its options are counted as
    click's own parser reads them (a value that looks like an option counts as a value), and
    refused with a ``click.BadOptionUsage`` (a usage error: exit code 2, one ``Error:`` line
    naming the option) are

    - an option that takes a value, neither ``multiple`` nor a count, given twice or more
      (``-i A -i B``, ``--batch-size 8 --batch-size 16``); and
    - an on/off pair (``--qc/--no-qc``, ``--resume/--restart``) given twice or more in any
      spelling: ``--qc --no-qc`` contradicts itself, and one of the pair once is the rule, so
      ``--qc --qc`` is refused too.

    Accepted as before: repeatable options (``--set``, ``--temperature``, ``figures -i``),
    counts, and a plain flag repeated (``--quiet --quiet`` means ``--quiet``). With an eager
    option (``--help``, ``--version``) given, nothing is refused here, and words click cannot
    parse (an unknown option, a missing value) are left to click's own error.
    """
    from collections import Counter

    try:
        _, _, order = command.make_parser(ctx).parse_args(args=list(args))  # one entry per occurrence
    except click.UsageError:
        return  # click's own parse reports it
    if any(getattr(param, "is_eager", False) for param in order):
        return
    counts = Counter(order)
    for param in dict.fromkeys(order):  # first-given order
        times = counts[param]
        if times < 2 or not isinstance(param, click.Option) or param.multiple or param.count:
            continue
        if param.is_flag and not param.secondary_opts:
            continue  # the same meaning each time
        if param.is_flag:
            names = "/".join(param.opts + param.secondary_opts)
            raise click.BadOptionUsage(param.name, f"{names} given {times} times; give "
                                       f"{' or '.join(param.opts + param.secondary_opts)} once", ctx)
        from sdnet_infer.cli import REPEAT_HINTS  # the same hints as sdnet-infer's refusal

        hint = REPEAT_HINTS.get(max(param.opts, key=len))
        raise click.BadOptionUsage(param.name, f"{'/'.join(param.opts)} given {times} times; it takes one value"
                                   + (f" ({hint})" if hint else ""), ctx)


class SingleValuedOptions:
    """A click command or group mixin: ``refuse_repeated_options`` before the arguments are parsed."""

    def parse_args(self, ctx, args):
        if not ctx.resilient_parsing:  # shell completion parses partial command lines
            refuse_repeated_options(self, ctx, args)
        return super().parse_args(ctx, args)


class Command(SingleValuedOptions, click.Command):
    """Every ``sdnet-tf`` command: a repeated single-valued option is a usage error."""


class Commands(SingleValuedOptions, click.Group):
    """The command group: a failed file operation (an unwritable or missing output location, a
    full disk) or an interrupt in any command is one line naming the path, never a traceback.
    Its commands are ``Command`` and its sub-groups (``prior``, ``baseline``) are ``Commands``,
    so a repeated single-valued option is refused in every one (``refuse_repeated_options``)."""

    command_class = Command
    group_class = type  # sub-groups of this class

    def invoke(self, ctx):
        from sdnet_infer.io import describe_os_error

        try:
            return super().invoke(ctx)
        except OSError as error:
            raise UserError(describe_os_error(error)) from error
        except KeyboardInterrupt as error:
            raise Interrupted(str(error) or "interrupted") from error


def _load_tensorflow(backend):
    """After ``select_backend``: load TensorFlow with its start-up lines hidden (unless --verbose)."""
    from sdnet_tf.runtime import import_tensorflow_quietly

    if backend == "tensorflow" and not click.get_current_context().find_root().params.get("verbose"):
        import_tensorflow_quietly()


def _with_shortcuts(overrides, shortcuts):
    """``--set`` overrides followed by the options that are shortcuts for them (``--epochs N``
    is ``--set train.epochs=N``), each as SECTION.KEY=VALUE; options not given are left out."""
    given = [f"{key}={str(value).lower() if isinstance(value, bool) else value}"
             for key, value in shortcuts.items() if value is not None]
    return list(overrides) + given


def _load_config(config, overrides, kind=None):
    from sdnet_tf.config import ConfigError, load_config

    try:
        return load_config(config, overrides, kind=kind)
    except ConfigError as error:
        raise UserError(str(error)) from error


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sdnet-tf")
@click.option("-v", "--verbose", is_flag=True,
              help="Log debug messages, and TensorFlow's, absl's, JAX's and tf2onnx's log lines (hidden by default).")
@click.pass_context
def main(ctx, verbose):
    """SDNet (Chartsias et al., Medical Image Analysis 2019) in TensorFlow 2 / Keras 3."""
    import os

    from tqdm.contrib.logging import logging_redirect_tqdm

    from sdnet_tf.runtime import import_tensorflow_quietly, quiet_tensorflow

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if any(isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr)
           for handler in logging.root.handlers):
        # log lines are written through tqdm, above a progress bar instead of onto its line, until
        # the command ends (a caller that captured the streams keeps its own handlers)
        ctx.with_resource(logging_redirect_tqdm())
    quiet_tensorflow(verbose)
    if not verbose and ctx.invoked_subcommand in TENSORFLOW_COMMANDS \
            and os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        import_tensorflow_quietly()


@main.command()
@click.option("-c", "--config", default=None, help="Config name in configs/ or a YAML path (default: original SDNet).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a config value.")
def summary(config, overrides):
    """Print each network's parameter count."""
    from sdnet_tf.apps.summary import network_summary

    cfg = _load_config(config, overrides)
    click.echo(network_summary(cfg))


@main.command()
@click.argument("dataset", type=click.Choice(["synthetic", "acdc", "mmwhs", "mnms", "nvae", "acnn", "unet"]),
                default="synthetic")
@click.option("--data", default=None, metavar="DIR|phantom",
              help="For acdc: an ACDC training folder, or 'phantom' for the built-in phantom cohort; for mmwhs: "
                   "a folder with mr_train/ and ct_train/ (MM-WHS layout), or 'phantom' for the two-modality "
                   "phantom; for mnms: a folder in the M&Ms layout with its CSV, or 'phantom' for the four-vendor "
                   "phantom.")
@click.option("--split", type=click.IntRange(0, 2), default=None, help="Which of the three 70/15/15 splits.")
@click.option("-c", "--config", default=None, help="Config name in configs/ or a YAML path.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a config value, e.g. --set train.epochs=5 (repeatable).")
@click.option("-o", "--run-dir", type=FOLDER, default=None,
              help="Run directory (default: runs/<dataset or data folder>-<config>[-split<N>]).")
@click.option("--epochs", type=int, default=None, help="Shortcut for --set train.epochs=N.")
@click.option("--seed", type=int, default=None, help="Shortcut for --set train.seed=N.")
@click.option("--labelled-fraction", type=float, default=None, help="Fraction of training images with labels.")
@click.option("--xla/--no-xla", default=None,
              help="Compile the training steps with XLA (default: train.jit_compile, auto: on a GPU, "
                   "not on a CPU, as measured).")
@click.option("--precision", type=click.Choice(["float32", "mixed_bfloat16", "mixed_float16"]), default=None,
              help="Compute precision (Keras dtype policy).")
@click.option("--distribute", type=click.Choice(["none", "mirrored", "multi-worker", "data-parallel"]),
              default=None,
              help="Train on one device, on every GPU of this host (mirrored), or on the hosts of TF_CONFIG "
                   "(multi-worker) with TensorFlow; on every JAX device (data-parallel) with --backend jax; "
                   "batch sizes are global.")
@click.option("--backend", type=click.Choice(["tensorflow", "jax"]), default=None,
              help="Keras backend and training engine (default: train.backend, tensorflow); the shape priors and "
                   "the U-Net train on either, and resume on either.")
@click.option("--resume/--restart", default=True, show_default=True,
              help="Continue from the run directory's last checkpoint, or refuse a non-empty one.")
@click.option("--max-iterations", type=click.IntRange(min=1), default=None,
              help="Stop after this many iterations in total (of all self-training rounds); the same command "
                   "without it resumes.")
@click.option("--shape-prior", default=None, metavar="RUN",
              help="A frozen prior's run directory (prior train nvae|acnn) whose shape loss is added to the "
                   "supervised segmentation loss. At another data.spacing the masks are resampled to the prior's; "
                   "a prior whose field of view (pixels x mm) exceeds the network's, or one trained with "
                   "data.framing heart, is refused.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(dataset, data, split, config, overrides, run_dir, epochs, seed, labelled_fraction, xla, precision,
          distribute, backend, resume, max_iterations, shape_prior, quiet):
    """Train SDNet on DATASET and print the best validation Dice.

    DATASET "acdc" reads an ACDC-layout folder (--data DIR) or the built-in phantom cohort
    (--data phantom, generated into the cache on first use) with the original preprocessing;
    "mmwhs" reads MR and CT volumes in the MM-WHS layout (--data DIR) or the two-modality
    phantom (--data phantom) and trains on both at once; "mnms" reads an M&Ms-layout folder
    (--data DIR) or the four-vendor phantom (--data phantom), the vendors' roles set by
    data.train_vendors, data.unlabelled_vendors and data.test_vendors; "synthetic" is a set of
    seeded discs and rings (no download).

    The config's model.kind picks the model: sdnet (the default), sdnet2018 (the MICCAI 2018
    precursor) or unet_gan (the U-Net and GAN baselines, and self-training with
    train.self_training_rounds; e.g. -c gan-phantom-quick).

    The shape priors, the step-trainer U-Net and the T-L network have their own commands,
    'sdnet-tf prior train nvae|acnn' and 'sdnet-tf baseline train unet|tl'; the older
    spellings 'train nvae|acnn|unet' still work and print a deprecation note.

    With --distribute multi-worker, run the same command on every host, each with its own
    TF_CONFIG; only the chief (worker 0) writes the run directory.
    """
    if dataset in SHAPE_JOBS:
        group = "baseline" if dataset == "unet" else "prior"
        click.echo(f"note: 'sdnet-tf train {dataset}' is deprecated and will be removed; use "
                   f"'sdnet-tf {group} train {dataset}' (same options)", err=True)
        if labelled_fraction is not None or precision or distribute:
            raise UserError(f"train {dataset} takes none of --labelled-fraction, --precision, --distribute "
                            "(it trains on one device)")
        if shape_prior and dataset != "unet":
            raise UserError(f"--shape-prior is for baseline train unet and train acdc, not {dataset}")
        return _train_shape(dataset, data, split, config, overrides, run_dir, epochs, seed, xla, backend, resume,
                            max_iterations, shape_prior, quiet)
    from sdnet_tf.config import ConfigError
    from sdnet_tf.data.arrays import DataError
    from sdnet_tf.runtime import select_backend

    overrides = _with_shortcuts(overrides, {
        "loss.shape_prior": shape_prior or None, "data.path": data, "train.epochs": epochs, "train.seed": seed,
        "data.labelled_fraction": labelled_fraction, "train.jit_compile": xla, "train.precision": precision,
        "train.backend": backend, "data.split": split,
        "train.distribute": distribute.replace("-", "_") if distribute else None, "data.dataset": dataset})
    cfg = _load_config(config, overrides)
    # Keras fixes its backend when it is first imported. In the sdnet-tf process nothing has
    # imported it yet (this module imports click and sdnet_tf.runtime only; config and data
    # code are Keras-free), so setting KERAS_BACKEND here, before sdnet_tf.apps.train imports
    # Keras, is enough and the process need not re-exec itself.
    try:
        select_backend(cfg.train.backend)
    except (ValueError, ImportError, RuntimeError) as error:
        raise UserError(str(error)) from error
    _load_tensorflow(cfg.train.backend)
    from sdnet_tf.apps.train import train_run

    if run_dir is None:
        from sdnet_tf.data.sources import default_run_dir

        run_dir = default_run_dir(dataset, cfg, config, data)
    from sdnet_tf.training.guard import NonFiniteError

    try:
        result = train_run(cfg, run_dir, resume=resume, max_iterations=max_iterations, progress=not quiet)
    except (ConfigError, DataError, FileExistsError, FileNotFoundError, NonFiniteError) as error:
        raise UserError(str(error)) from error
    best = result["best_val_dice"]
    shown = f"best validation Dice {best:.4f}" if best > float("-inf") else "no validation epoch yet"
    click.echo(f"{shown} after {result['iteration']} iterations; run directory {run_dir}")


@main.command("shape-eval")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=FOLDER,
              help="Folder for <run>.json and table.md.")
@click.option("--samples", type=click.IntRange(100, None), default=1000, show_default=True,
              help="NVAE samples drawn per temperature.")
@click.option("--temperature", "temperatures", type=click.FloatRange(0.0, None, min_open=True), multiple=True,
              help="A sampling temperature (repeatable; default 1.0, 0.8, 0.7 and 0.5).")
@click.option("--frds", is_flag=True,
              help="Also FRDS (the thesis' metric) of the NVAE samples: trains a SimCLR ResNet-18 on the split's "
                   "training masks once (30 epochs; cached, so later runs of that split reuse it).")
@click.option("--frds-epochs", type=click.IntRange(1, None), default=None,
              help="Epochs of that training (default 30; the thesis trained 200).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def shape_eval(runs, output, samples, temperatures, frds, frds_epochs, quiet):
    """Evaluate shape-prior, U-Net and T-L network RUNS on their split's held-out test patients.

    Priors: reconstruction Dice per class, anatomically valid reconstructions and samples
    (temperatures 1.0, 0.8, 0.7 and 0.5 by default) with a grid of samples per temperature,
    Frechet shape distance, pathology from codes (10-fold CV); with --frds also FRDS.
    U-Nets and T-L networks: Dice per class and anatomically valid slices. Writes one JSON
    per run and a Markdown table of them all (table.md) and their learning curves
    (learning_curves.png); a run that cannot be read is reported and the others are still
    evaluated.
    """
    from sdnet_tf.runtime import select_backend

    select_backend("tensorflow")
    from sdnet_tf.apps.shape_eval import evaluate_runs

    def report(run, error):
        if error:
            message = str(error)
            click.echo(message if message.startswith(str(run)) else f"{run}: {message}", err=True)
        else:
            click.echo(f"{run}: written {output / (Path(run).name + '.json')}")

    if frds_epochs is not None and not frds:
        raise UserError("--frds-epochs goes with --frds")
    frds_fn = None
    if frds:
        from sdnet_tf.training.embedder_trainer import frds_function

        frds_fn = frds_function({} if frds_epochs is None else {"epochs": frds_epochs}, progress=not quiet)
    results, failed = evaluate_runs(runs, output, samples, tuple(temperatures) or None, not quiet, report,
                                    frds=frds_fn)
    if results:
        click.echo((output / "table.md").read_text())
    if failed:
        raise UserError(f"{len(failed)} of {len(runs)} runs could not be evaluated")


SHAPE_JOBS = {"nvae": "nvae-acdc", "acnn": "acnn-acdc", "unet": "unet-acdc", "tl": "tl-acdc"}


def _shape_train_options(function):
    """The options shared by ``prior train`` and ``baseline train``."""
    options = [
        click.option("--data", default=None, metavar="DIR|phantom",
                     help="An ACDC training folder whose masks (and images, for the U-Net and the T-L network) "
                          "are used, or 'phantom'."),
        click.option("--split", type=click.IntRange(0, 2), default=None, help="Which of the three 70/15/15 splits."),
        click.option("-c", "--config", default=None, help="Config name in configs/ or a YAML path "
                     "(default: nvae-acdc, acnn-acdc, unet-acdc or tl-acdc)."),
        click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="Override a config value, e.g. --set train.epochs=5 (repeatable)."),
        click.option("-o", "--run-dir", type=FOLDER, default=None,
                     help="Run directory (default: runs/<kind>-<data folder>-split<N>)."),
        click.option("--epochs", type=int, default=None, help="Shortcut for --set train.epochs=N."),
        click.option("--seed", type=int, default=None, help="Shortcut for --set train.seed=N."),
        click.option("--xla/--no-xla", default=None, help="Compile the training step with XLA (jit_compile)."),
        click.option("--backend", type=click.Choice(["tensorflow", "jax"]), default=None,
                     help="Keras backend and training engine (default: train.backend); a run resumes on either."),
        click.option("--resume/--restart", default=True, show_default=True,
                     help="Continue from the run directory's last checkpoint, or refuse a non-empty one."),
        click.option("--max-steps", type=click.IntRange(min=1), default=None,
                     help="Stop after this many steps in total (train.max_steps; the priors' learning-rate decay "
                          "ends there too); the same command with more or none goes on."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@main.group()
def prior():
    """Shape priors: the NVAE (the thesis' Default-N) and ACNN's shape autoencoder."""


@prior.command("train")
@click.argument("kind", type=click.Choice(["nvae", "acnn"]))
@_shape_train_options
def prior_train(kind, data, split, config, overrides, run_dir, epochs, seed, xla, backend, resume, max_steps, quiet):
    """Train a KIND shape prior on the masks of --data DIR|phantom and print its best
    validation epoch. The frozen prior gives SDNet and the U-Net their shape loss
    (--shape-prior RUN); an ACNN prior is also the T-L network's autoencoder
    (baseline train tl --shape-prior RUN). --set data.framing=heart frames each
    volume about its heart as the NVAE thesis does, for comparing with its figures
    (such a prior gives no shape loss)."""
    _train_shape(kind, data, split, config, overrides, run_dir, epochs, seed, xla, backend, resume, max_steps,
                 None, quiet)


@main.group()
def baseline():
    """Baselines SDNet is compared with: the plain 2-D U-Net, and ACNN's T-L network."""


@baseline.command("train")
@click.argument("kind", type=click.Choice(["unet", "tl"]))
@_shape_train_options
@click.option("--shape-prior", default=None, metavar="RUN",
              help="unet: a frozen prior's run directory (prior train nvae|acnn) whose shape loss is added to the "
                   "cross-entropy (ACU-Net); at another data.spacing the masks are resampled to the prior's, and a "
                   "prior with a larger field of view or data.framing heart is refused. tl: the frozen ACNN "
                   "autoencoder's run (prior train acnn, same size and spacing), required.")
def baseline_train(kind, data, split, config, overrides, run_dir, epochs, seed, xla, backend, resume, max_steps,
                   quiet, shape_prior):
    """Train a baseline on --data DIR|phantom and print its best validation epoch.

    KIND "unet": SDNet's U-Net with a 4-class softmax and cross-entropy; with --shape-prior,
    ACU-Net. KIND "tl": ACNN's T-L network, an image encoder trained to predict the frozen ACNN
    autoencoder's code of the ground-truth mask (--shape-prior RUN), segmenting through the
    autoencoder's decoder."""
    _train_shape(kind, data, split, config, overrides, run_dir, epochs, seed, xla, backend, resume, max_steps,
                 shape_prior, quiet)


def _train_shape(job, data, split, config, overrides, run_dir, epochs, seed, xla, backend, resume, max_steps,
                 shape_prior, quiet):
    from sdnet_tf.config import ConfigError, PriorConfig, SegmentationConfig, TLConfig
    from sdnet_tf.data.arrays import DataError
    from sdnet_tf.runtime import select_backend

    overrides = _with_shortcuts(overrides, {
        "data.path": data, "data.split": split, "train.epochs": epochs, "train.seed": seed, "train.max_steps": max_steps,
        "loss.shape_prior": shape_prior, "train.backend": backend, "train.jit_compile": xla})
    if job in ("nvae", "acnn"):
        overrides.insert(0, f"model.kind={job}")
    kind = {"unet": SegmentationConfig, "tl": TLConfig}.get(job, PriorConfig)
    cfg = _load_config(config or SHAPE_JOBS[job], overrides, kind=kind)
    if run_dir is None:
        from sdnet_tf.data.sources import default_run_dir

        run_dir = default_run_dir(job, cfg)
    try:
        select_backend(cfg.train.backend)  # before anything imports Keras (see train above)
    except (ValueError, ImportError, RuntimeError) as error:
        raise UserError(str(error)) from error
    _load_tensorflow(cfg.train.backend)
    from sdnet_tf.training.guard import NonFiniteError
    from sdnet_tf.training.prior_trainer import train_prior, train_tl, train_unet

    try:
        if job == "unet":
            result = train_unet(cfg, run_dir, resume=resume, progress=not quiet)
        elif job == "tl":
            result = train_tl(cfg, run_dir, resume=resume, progress=not quiet)
        else:
            result = train_prior(cfg, run_dir, resume=resume, progress=not quiet)
    except (ConfigError, DataError, FileExistsError, FileNotFoundError, NonFiniteError) as error:
        raise UserError(str(error)) from error
    best = result["best"]
    shown = ", ".join(f"{k} {v:.4f}" for k, v in best.items() if k.startswith(("dice_mean", "loss", "valid")))
    click.echo(f"{job}: best validation epoch {best.get('epoch')} ({shown}) after {result['steps']} steps; "
               f"run directory {run_dir}")


@main.command()
@click.argument("out", type=FOLDER)
@click.option("--patients", type=click.IntRange(1, 999), default=20, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def phantom(out, patients, seed):
    """Write a phantom cohort of synthetic cine MRI in the ACDC layout to OUT."""
    from sdnet_tf.data.phantom import write_cohort

    write_cohort(out, patients, seed, progress=True)
    click.echo(f"wrote {patients} phantom patients to {out}")


@main.command()
@click.option("--data", required=True, metavar="DIR|phantom", help="An ACDC-layout folder, or 'phantom'.")
@click.option("-c", "--config", default=None, help="Config name or YAML path (preprocessing size and spacing).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE")
def preprocess(data, config, overrides):
    """Preprocess a cohort into the cache and print per-split slice counts and the time taken."""
    from sdnet_tf.data.arrays import DataError
    from sdnet_tf.data.sources import preprocess_summary

    cfg = _load_config(config, list(overrides) + [f"data.path={data}"])
    try:
        summary = preprocess_summary(cfg)
    except DataError as error:
        raise UserError(str(error)) from error
    click.echo(f"{summary['patients']} patients from {summary['folder']} in {summary['seconds']:.1f} s "
               f"(cache: {summary['cache']})")
    click.echo(f"{'split':<6}{'train pts':>10}{'labelled':>10}{'unlabelled':>12}{'validation':>12}{'test':>8}")
    for row in summary["splits"]:
        click.echo(f"{row['split']:<6}{row['training']:>10}{row['labelled']:>10}{row['unlabelled']:>12}"
                   f"{row['validation']:>12}{row['test']:>8}")
    click.echo(f"unlabelled images: {summary['unlabelled_source']}")


@main.command()
@click.option("-i", "--input", "source", required=True, type=click.Path(exists=False, path_type=Path),
              help="A NIfTI image (3-D frame or 4-D cine) or a folder of them (*_gt and *_4d files skipped).")
@click.option("-o", "--output", required=True, type=FOLDER,
              help="Output folder; predictions are <name>_pred.nii.gz, the folder structure is kept.")
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path),
              help="A trained run directory (its model.keras and config.yaml).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Slices per network call.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="The run's cohort folder, when it moved since training (for the quality-control calibration).")
@click.option("--qc/--no-qc", default=True, show_default=True,
              help="Quality control: anatomical validity and out-of-distribution scores per slice, qc.json "
                   "(adds the modality encoder and the decoder; the anatomy factor comes from the segmentation pass).")
@click.option("--slice-axis", "slice_axis", type=SLICE_AXIS, default="auto", show_default=True,
              help="The slice axis of every input: auto (from the header's voxel sizes and orientation, README "
                   "'Input geometry') or a stored axis 0, 1 or 2, for a file whose slice axis the header cannot tell "
                   "(the refusal says so); the orientation is still read from the header.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def predict(source, output, run_dir, batch_size, data, qc, slice_axis, quiet):
    """Segment NIfTI volumes with a trained run; labels go back onto each input's own grid.

    Each volume's voxel size, slice axis and orientation are read from its header (README,
    "Input geometry"); it is brought into the run's training orientation, preprocessed as in
    training, segmented slice by slice, un-cropped, resampled and re-oriented back, and written
    as uint8 (0 background, 1 RV, 2 MYO, 3 LV) with the input's affine and header. A run trained
    on M&Ms writes M&Ms' values (1 LV, 2 MYO, 3 RV) instead, and says so. A file that fails is
    reported and the others go on.

    Every volume is quality-controlled (README, "Quality control"): per slice its anatomical
    validity and SDNet's out-of-distribution scores, per volume a status, ok or review, in
    qc.json. The thresholds are calibrated on the run's validation patients the first time
    (kept in RUN/qc-calibration.json); without the run's data, validity only.
    """
    from sdnet_infer.io import check_output_location
    from sdnet_infer.predict import predict_files, qc_report, summarise
    from sdnet_infer.qc import QualityControl, partial_model_skip
    from sdnet_tf.data.arrays import DataError
    from sdnet_infer.labels import SDNET_CHANNELS
    from sdnet_infer.labels import CONVENTION_NAMES
    from sdnet_tf.inference import KerasRuntime, load_run, run_label_convention, run_orientation
    from sdnet_tf.apps.quality import run_calibration

    try:
        check_output_location(output)  # before a first calibration, which takes a while
        if data is not None and not Path(data).expanduser().is_dir():
            raise DataError(f"{data}: --data is not a folder (the run's cohort, for the quality-control calibration)")
        model, cfg = load_run(run_dir)
        network = KerasRuntime(model, cfg.data.spacing, run_orientation(run_dir), batch_size)
        convention = run_label_convention(run_dir)
        if convention != "acdc":
            click.echo(f"labels written in {CONVENTION_NAMES[convention]} convention, the run's training data's")
        quality = None
        skipped = partial_model_skip(SDNET_CHANNELS[:model.num_classes])  # the precursor: MYO only
        if qc and skipped:
            click.echo(skipped)
        elif qc:
            calibration, note = run_calibration(run_dir, network, data=data, log=click.echo)
            quality = QualityControl(network, calibration, note=note)
            if quality.note:
                click.echo(f"quality control: {quality.note}")
        draw = _progress_report("predict", quiet)
        records = predict_files(source, output, network.segment, network.size, network.spacing,
                                lambda index, total, record: draw(index, total, None, record["error"]),
                                orientation=network.orientation, quality=quality,
                                model={"run": str(run_dir)}, labels=convention, started=draw.start,
                                slicing=slice_axis)
    except DataError as error:
        raise UserError(str(error)) from error
    report_path = qc_report(output, quality)
    qc_file = "" if report_path is None else f", quality control in {report_path}"
    click.echo(f"{summarise(records)} to {output} (list in {output / 'predictions.json'}{qc_file})")
    if any(r["error"] for r in records):
        sys.exit(1)


def _volumes(count):
    return f"{count} volume{'' if count == 1 else 's'}"


def _progress_report(desc, quiet):
    """A ``report(index, total, name, error)`` callback drawing one tqdm bar; errors are printed.
    ``report.start(total)`` shows the bar before the first case is done (otherwise the first
    report does)."""
    from tqdm.auto import tqdm

    state = {}

    def start(total):
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, unit="volume", disable=quiet)

    def report(index, total, name, error):
        start(total)
        state["bar"].update(1)
        if error:
            tqdm.write(f"FAILED {error}", file=sys.stderr)
        if index == total:
            state.pop("bar").close()

    report.start = start  # ``start(total)``: show the bar before the first case ends
    return report


@main.command()
@click.option("-p", "--predictions", type=FOLDER, default=None,
              help="Folder of <case>_pred.nii.gz files (as 'predict' writes them).")
@click.option("-r", "--references", type=FOLDER, default=None,
              help="Folder holding <case>_gt.nii.gz references (e.g. an ACDC training folder).")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), default=None,
              help="Instead: a trained run; its split's patients are predicted, then scored.")
@click.option("--data", default=None, help="With --run: the cohort folder, if it moved since training.")
@click.option("--split", type=click.IntRange(0, 2), default=None, help="With --run: the split (default: the run's).")
@click.option("--subset", type=click.Choice(["test", "validation", "training"]), default="test", show_default=True,
              help="With --run: which patients of the split.")
@click.option("-o", "--output", type=FOLDER, default=None,
              help="Where the tables go (default: the predictions folder; required with --run).")
@click.option("--label-map", default=None, metavar="mnms|acdc|A:B,...",
              help="References in another label convention, mapped to ACDC's (1 RV, 2 MYO, 3 LV): 'mnms' "
                   "(1 LV, 2 MYO, 3 RV) or explicit pairs STORED:ACDC such as 1:3,2:2,3:1.")
@click.option("--prediction-labels", type=click.Choice(["acdc", "mnms"], case_sensitive=False), default=None,
              help="The predictions' label convention: 'acdc' (1 RV, 2 MYO, 3 LV) or 'mnms' (1 LV, 2 MYO, 3 RV). "
                   "Default: the one their predictions.json records (predict writes M&Ms' for a run trained on "
                   "M&Ms), else acdc; a predictions.json that records another is an error.")
@click.option("--slice-axis", "slice_axis", type=SLICE_AXIS, default="auto", show_default=True,
              help="With --predictions/--references: the slice axis of both files of every case, auto (from the "
                   "header) or a stored axis 0, 1 or 2, for files whose slice axis the header cannot tell.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def evaluate(predictions, references, run_dir, data, split, subset, output, label_map, prediction_labels, slice_axis,
             quiet):
    """Score segmentations: ACDC challenge metrics, distances, per-slice Dice, validity, clinical indices.

    Writes acdc_metrics.csv (the challenge's columns), cases.csv, slices.csv, clinical.csv and
    summary.json (mean and standard deviation per class and phase). A prediction whose shape,
    voxel size or affine differs from its reference's is refused (both files named), the other
    cases are scored, and the exit code is 1. Predictions in M&Ms' labels (predictions.json
    says so, or --prediction-labels mnms) are converted to ACDC's before scoring, references
    by --label-map; summary.json's labels records both conventions.

    A run trained on M&Ms (sdnet-tf train mnms) is scored on its test patients of the vendors
    it saw and every patient of its held-out vendors (the ED and ES frames of their 4-D files),
    with a table per vendor (vendors.csv, summary.json's per_vendor); its predictions are
    written in M&Ms' labels (1 LV, 2 MYO, 3 RV).
    """
    from sdnet_infer.io import parse_label_map
    from sdnet_infer.labels import CONVENTION_NAMES
    from sdnet_tf.data.arrays import DataError
    from sdnet_tf.apps.evaluation import evaluate_folder, evaluate_run

    report = _progress_report("evaluate", quiet)
    try:
        if run_dir is not None:
            if predictions or references:
                raise UserError("give either --run or --predictions/--references, not both")
            if output is None:
                raise UserError("--run needs -o/--output for the predictions and tables")
            if label_map or prediction_labels:
                raise UserError(f"{'--label-map' if label_map else '--prediction-labels'} is for --predictions/"
                                "--references in another convention, not --run")
            if slice_axis != "auto":
                raise UserError("--slice-axis is for --predictions/--references; a run's cohort is read as in "
                                "training")
            summary = evaluate_run(run_dir, output, data=data, split=split, subset=subset,
                                   report=_progress_report("predict", quiet))
        else:
            if not (predictions and references):
                raise UserError("give --predictions and --references, or --run")
            summary = evaluate_folder(predictions, references, output, report=report,
                                      label_map=parse_label_map(label_map), prediction_labels=prediction_labels,
                                      slicing=slice_axis)
            output = output or predictions
            labels = summary["labels"]
            if labels["predictions"] != "acdc":
                source = {"given": "--prediction-labels"}.get(labels["predictions_from"], labels["predictions_from"])
                click.echo(f"predictions read in {CONVENTION_NAMES[labels['predictions']]} convention ({source})")
            elif labels["predictions_from"] == "default" and not quiet:
                click.echo(f"predictions read in {CONVENTION_NAMES['acdc']} convention: no predictions.json records "
                           "theirs (--prediction-labels mnms for M&Ms-valued files)")
    except DataError as error:
        raise UserError(str(error)) from error
    if "structures" in summary:
        # a model of fewer structures (the MICCAI 2018 precursor): its own figures only
        figures = "; ".join(f"{c}: per-slice Dice {v['slice_dice']['mean']:.3f}, 3-D Dice {v['Dice']['mean']:.3f}, "
                            f"HD95 {v['HD95']['mean']:.1f} mm" for c, v in summary["segmented"].items())
        click.echo(f"{_volumes(summary['cases'])} scored; the model segments {', '.join(summary['structures'])} "
                   f"only: {figures}; tables and summary.json in {output}")
    else:
        dice = summary["dice_mean_3d"]["mean"]
        per_class = ", ".join(f"{c} {g['all']['Dice']['mean']:.3f}" for c, g in summary["per_class"].items()
                              if g["all"]["Dice"]["mean"] is not None)
        # None when no scored case has a structure in its reference or its prediction (Dice 0 / 0)
        dice = "undefined (no structure in any reference or prediction)" if dice is None else f"{dice:.3f}"
        click.echo(f"{_volumes(summary['cases'])} scored: mean 3-D Dice {dice}" + (f" ({per_class})" if per_class else "")
                   + f"; tables and summary.json in {output}")
    if "per_vendor" in summary:  # a run trained on M&Ms: its vendors' test and held-out patients
        from sdnet_tf.apps.mnms_cases import vendor_table

        click.echo(vendor_table(summary["per_vendor"]))
        click.echo(f"(3-D Dice per structure and mean over them, HD95 mean over them; per vendor in "
                   f"{output / 'vendors.csv'}; predictions in M&Ms' labels, 1 LV, 2 MYO, 3 RV)")
    if "lv_volume_head" in summary:
        error = summary["lv_volume_head"]["absolute_error_ml"]
        click.echo(f"LV-volume head: mean absolute LV volume error {error['mean']:.1f} ml (sd {error['std']:.1f}) "
                   "against the references (lv_volume_head.csv)")
    if summary["errors"]:
        count = len(summary["errors"])
        what = (f"{count} patient{'' if count == 1 else 's'} or frame{'' if count == 1 else 's'}"
                if "per_vendor" in summary else _volumes(count))  # M&Ms: a patient fails as a whole
        click.echo(f"{what} could not be scored (listed in summary.json)", err=True)
        sys.exit(1)


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=FOLDER)
@click.option("-i", "--image", "images", multiple=True, metavar="NIFTI[:SLICE]",
              help="An image (repeatable; the middle slice unless one is named). Default: two held-out patients "
                   "(for a run trained on MR and CT, one held-out slice of each).")
@click.option("--only", multiple=True, help="Draw only these figures (repeatable).")
def figures(run_dir, output, images, only):
    """Draw the paper's figures for a trained run: anatomy, reconstructions, z traversal, swaps, arithmetic."""
    from sdnet_tf.data.arrays import DataError
    from sdnet_tf.apps.figures import FIGURES, make_figures

    try:
        written = make_figures(run_dir, output, images=list(images) or None, which=list(only) or FIGURES)
    except DataError as error:
        raise UserError(str(error)) from error
    click.echo(f"{len(written)} figures in {output}: {', '.join(p.name for p in written.values())}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=FOLDER)
@click.option("--data", default=None, help="The cohort folder, if it moved since training.")
def latent(run_dir, output, data):
    """z capacity per dimension and a held-out classifier of scanner style (or pathology) from z."""
    from sdnet_tf.data.arrays import DataError
    from sdnet_tf.apps.latent import analyse_run

    try:
        results = analyse_run(run_dir, output, data=data)
    except DataError as error:
        raise UserError(str(error)) from error
    c = results["classifier"]
    click.echo(f"{results['capacity']['dimensions_used']} of {results['nz']} z dimensions used; {c['label']} "
               f"from z: {c['accuracy']:.3f} held-out accuracy (chance {c['chance']:.3f}); {output}/latent.json")


@main.command("modality-classifier")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=FOLDER,
              help="Folder for modality_classifier.json and modality_classifier.csv.")
@click.option("--data", default=None, help="The cohort folder, if it moved since training.")
@click.option("--permutations", type=click.IntRange(1), default=100, show_default=True,
              help="Shuffles of the training labels averaged by the control.")
def modality_classifier_command(run_dir, output, data, permutations):
    """Classify MR / CT from z for a run trained on two modalities (train mmwhs).

    A logistic regression from each slice's z (the modality encoder's mean) to its modality,
    fitted on the split's training cases and scored on its held-out ones, against the same
    classifier fitted on shuffled labels (paper, Section 5.4).
    """
    from sdnet_tf.data.arrays import DataError
    from sdnet_tf.apps.modality import classify_modality

    try:
        r = classify_modality(run_dir, output, data=data, permutations=permutations)
    except DataError as error:
        raise UserError(str(error)) from error
    s = r["shuffled"]
    click.echo(f"modality from z: {r['accuracy']:.3f} held-out accuracy on {r['test_images']} slices (shuffled "
               f"labels: {s['accuracy_mean']:.3f} +- {s['accuracy_std']:.3f} over {s['permutations']} "
               f"permutations; majority class {r['chance']:.3f}); {output}/modality_classifier.json")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=FOLDER)
@click.option("--data", default=None, help="The cohort folder, if it moved since training.")
@click.option("-i", "--image", "images", multiple=True, metavar="NIFTI[:SLICE]", help="Images for the figures.")
@click.option("--refresh", is_flag=True, help="Recompute evaluation, figures and latent analysis.")
def report(run_dir, output, data, images, refresh):
    """One page (report.md and a self-contained report.html) with a run's metrics, figures and z analysis."""
    from sdnet_tf.data.arrays import DataError
    from sdnet_tf.apps.report import build_report

    try:
        md, page = build_report(run_dir, output, data=data, images=list(images) or None, refresh=refresh)
    except DataError as error:
        raise UserError(str(error)) from error
    click.echo(f"report: {md} and {page}")


@main.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=FOLDER,
              help="Export folder: segment/anatomy/modality/decoder.onnx, their float32 weights in "
                   "<name>.onnx.data beside each, and sdnet-export.json (copy the whole folder).")
@click.option("--opset", type=click.IntRange(*ONNX_OPSETS), default=17, show_default=True,
              help=f"ONNX opset, {ONNX_OPSETS[0]} to {ONNX_OPSETS[1]} (tf2onnx's newest); the one written is recorded.")
@click.option("--layout", type=click.Choice(["NHWC", "NCHW"]), default="NCHW", show_default=True,
              help="Layout of the image inputs (anatomy maps stay NHWC); both run at the same speed.")
@click.option("--precision", type=click.Choice(["fp32", "int8", "fp16"]), default="fp32", show_default=True,
              help="Numeric precision of the segmentation model: int8 (static QDQ quantisation, for CPUs with "
                   "8-bit dot products), fp16 (for the CUDA provider) or fp32. Reduced precisions are gated on the "
                   "run's validation patients.")
@click.option("--max-dice-drop", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="int8/fp16: refuse the export when the mean 3-D Dice on the validation patients falls by more "
                   "than this below the fp32 model's.")
@click.option("--calibration-slices", type=click.IntRange(1), default=32, show_default=True,
              help="int8: labelled training slices (seeded random draw) that set the activation ranges.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="int8/fp16: the run's cohort folder, when it moved since training.")
def export_command(run_dir, output, opset, layout, precision, max_dice_drop, calibration_slices, data):
    """Export a trained run to ONNX for the TensorFlow-free runtime (sdnet-infer)."""
    from sdnet_tf.runtime import select_backend

    try:
        select_backend("tensorflow")  # tf2onnx converts TensorFlow functions, whatever backend trained the run
    except (ValueError, RuntimeError) as error:
        raise UserError(str(error)) from error
    from export.onnx_export import export_run
    from export.precision import AccuracyGateError
    from sdnet_tf.data.arrays import DataError

    try:
        meta = export_run(run_dir, output, opset=opset, layout=layout, log=click.echo, precision=precision,
                          max_dice_drop=max_dice_drop, calibration_slices=calibration_slices, data=data)
    except (DataError, AccuracyGateError) as error:
        raise UserError(str(error)) from error
    gate = meta.get("reduced_precision", {}).get("accuracy")
    if gate:
        click.echo(f"{precision} segmentation model: mean 3-D Dice {gate['dice_vs_reference']:.4f} on "
                   f"{gate['frames']} validation frames (fp32 {gate['fp32_dice_vs_reference']:.4f}, agreement with "
                   f"fp32's labels {gate['dice_vs_fp32']:.4f})")
    click.echo(f"exported {len(meta['models'])} models (opset {meta['opset']}, {layout}, {precision}) to {output}; "
               f"run them with: sdnet-infer -i IMAGES -o OUT --model {output}")


if __name__ == "__main__":
    sys.exit(main())
