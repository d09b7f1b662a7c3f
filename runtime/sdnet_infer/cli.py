"""``sdnet-infer -i FILE_OR_DIR -o DIR --model EXPORT_DIR``: NIfTI in, NIfTI labels out."""

import argparse
import logging
import sys
import time


def _line(text):
    print(text, file=sys.stderr, flush=True)


def _count(minimum):
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    return parse


SLICE_AXIS_HELP = ("the slice axis of every input: auto (from the header's voxel sizes and orientation, README "
                   "'Input geometry'; default) or a stored axis 0, 1 or 2, for a file whose slice axis the header "
                   "cannot tell (the refusal says so); the orientation is still read from the header")


def slice_axis(text):
    """An argparse type: ``--slice-axis`` as ``sdnet_infer.geometry.parse_slicing`` reads it,
    "auto" or a stored axis 0, 1 or 2 ("axial" is the whole-heart data's rule, not an input's)."""
    from sdnet_infer.geometry import parse_slicing

    try:
        value = parse_slicing(text)
    except ValueError:
        value = None
    if value is None or value == "axial":
        raise argparse.ArgumentTypeError(f"{text!r}: expected auto, 0, 1 or 2")
    return value


# a hint added to the refusal of a repeated option, by its longest name (sdnet-tf's refusal too)
REPEAT_HINTS = {"--input": "to segment several images, give a folder of them"}


class _Once(argparse.Action):
    """Store an option's one value and count how often it is given (``refuse_repeats`` then
    refuses two or more: argparse keeps the last without a word, so ``-i A -i B`` would segment
    B alone). ``hint``: a few words added to the refusal."""

    def __init__(self, option_strings, dest, hint=None, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.hint = hint
        self.times = 0  # a parser is built per main() call, so per command line

    def __call__(self, parser, namespace, values, option_string=None):
        self.times += 1
        setattr(namespace, self.dest, values)


def refuse_repeats(parser, actions):
    """``parser.error`` (usage, one ``error:`` line naming the option, exit code 2) for the first
    of ``actions`` (``_Once``) given more than once."""
    for action in actions:
        if action.times > 1:
            hint = f" ({action.hint})" if action.hint else ""
            parser.error(f"argument {'/'.join(action.option_strings)}: given {action.times} times; "
                         f"it takes one value{hint}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="sdnet-infer",
        description="Segment cardiac MRI NIfTI volumes with an exported SDNet (onnxruntime, no TensorFlow). "
                    "Each image's voxel size, slice axis and orientation are read from its header (README, "
                    "'Input geometry'), it is brought into the model's training orientation, preprocessed as in "
                    "training, segmented slice by slice and written back on its own grid as <name>_pred.nii.gz "
                    "(uint8; 0 background, 1 RV, 2 MYO, 3 LV, or M&Ms' 1 LV, 2 MYO, 3 RV for a model trained on M&Ms, "
                    "as its sidecar's label_convention says) with the input's affine and header. Every volume is "
                    "quality-controlled (anatomical validity and out-of-distribution scores per slice, a status ok or "
                    "review; qc.json, README 'Quality control'). In a folder, *_gt and *_4d files are skipped; a file "
                    "that fails is reported and the others go on.")
    # the options of one value are given once (_Once); --provider is repeatable, and a flag repeated means itself
    once = [
        parser.add_argument("-i", "--input", required=True, action=_Once,
                            hint=REPEAT_HINTS["--input"],
                            help="a NIfTI file (3-D frame or 4-D cine) or a folder"),
        parser.add_argument("-o", "--output", required=True, action=_Once,
                            help="output folder (created; inputs are never overwritten)"),
        parser.add_argument("-m", "--model", required=True, action=_Once,
                            help="export folder written by 'sdnet-tf export'"),
    ]
    parser.add_argument("--provider", action="append", default=None,
                        help="onnxruntime execution provider (repeatable); default CUDA if available, else CPU")
    once += [
        parser.add_argument("--threads", type=_count(0), default=0, action=_Once,
                            help="intra-op threads (0: onnxruntime's default)"),
        parser.add_argument("--batch-size", type=_count(1), default=None, action=_Once,
                            help="slices per inference call (default 16 on CUDA, 1 on the CPU: lowest memory, "
                                 "no slower)"),
        parser.add_argument("--slice-axis", type=slice_axis, default="auto", action=_Once, metavar="{auto,0,1,2}",
                            help=SLICE_AXIS_HELP),
    ]
    parser.add_argument("--no-qc", action="store_true",
                        help="skip the quality control (anatomical validity and out-of-distribution scores of every "
                             "slice, qc.json); it adds the modality encoder and the decoder (the anatomy factor comes "
                             "from the segmentation pass) and the validity checks of every slice")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the summary")
    parser.add_argument("-v", "--verbose", action="store_true", help="also print onnxruntime's log messages")
    args = parser.parse_args(argv)
    refuse_repeats(parser, once)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)

    from sdnet_infer.io import DataError, describe_os_error, folder_problem
    from sdnet_infer.labels import CONVENTION_NAMES, SDNET_CHANNELS
    from sdnet_infer.model import ExportError, SDNetRuntime
    from sdnet_infer.predict import predict_files, qc_report, summarise
    from sdnet_infer.qc import QualityControl, describe, partial_model_skip

    problem = folder_problem(args.output)
    if problem:  # before the model loads
        _line(f"Error: {args.output}: {problem} (--output takes a folder)")
        return 1
    try:
        if not args.verbose:
            import onnxruntime

            onnxruntime.set_default_logger_severity(3)  # errors only
        runtime = SDNetRuntime(args.model, providers=args.provider, threads=args.threads,
                               batch_size=args.batch_size)
        skipped = partial_model_skip(runtime.meta.get("probability_channels", SDNET_CHANNELS))
        quality = None if args.no_qc or skipped else QualityControl(runtime, runtime.meta.get("qc"))
        if not args.quiet:
            _line(f"sdnet-infer: {args.model} ({runtime.precision}) on {runtime.provider}")
            if runtime.label_convention != "acdc":
                _line(f"labels written in {CONVENTION_NAMES[runtime.label_convention]} convention, the model's "
                      "training data's")
            if skipped and not args.no_qc:
                _line(skipped)
            if quality is not None and quality.note:
                _line(f"quality control: {quality.note}")

        def report(index, total, record):
            if record["error"]:
                _line(f"[{index}/{total}] FAILED {record['error']}")
            elif not args.quiet:
                qc = ""
                if "qc" in record:
                    reasons = [describe(r) for r in quality.volumes[-1]["reasons"]]
                    qc = f", qc {record['qc']}" + (f": {'; '.join(reasons)}" if reasons else "")
                _line(f"[{index}/{total}] {record['input']} -> {record['output']} ({record['seconds']:.2f} s{qc})")

        start = time.perf_counter()
        records = predict_files(args.input, args.output, runtime.segment, runtime.size, runtime.spacing, report,
                                orientation=runtime.orientation, quality=quality,
                                model={"export": str(args.model), "precision": runtime.precision},
                                labels=runtime.label_convention, slicing=args.slice_axis)
    except (DataError, ExportError) as error:  # exit code 1, as sdnet-tf; 2 is argparse's, for usage errors
        _line(f"Error: {error}")
        return 1
    except OSError as error:
        _line(f"Error: {describe_os_error(error)}")
        return 1
    except KeyboardInterrupt as error:
        _line(f"Interrupted: {error}" if str(error) else "Interrupted")
        return 130
    report_path = qc_report(args.output, quality)
    qc = "" if report_path is None else f", quality control in {report_path}"
    _line(f"{summarise(records)} in {time.perf_counter() - start:.1f} s; list in {args.output}/predictions.json{qc}")
    return 1 if any(r["error"] for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
