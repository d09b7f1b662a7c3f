"""The sdnet-tf command line."""

import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli import main
from sdnet_tf.runtime import select_backend


def test_summary_prints_the_original_parameter_counts():
    result = CliRunner().invoke(main, ["summary"])
    assert result.exit_code == 0, result.output
    for line, count in [("anatomy_encoder", "34,540,040"), ("modality_encoder", "95,744"), ("decoder", "6,409"),
                        ("segmentor", "42,372"), ("discriminator", "11,346,881")]:
        assert any(l.startswith(line) and count in l for l in result.output.splitlines()), line


def test_summary_with_a_config_and_override():
    result = CliRunner().invoke(main, ["summary", "-c", "synthetic-quick", "--set", "model.nz=4"])
    assert result.exit_code == 0, result.output
    assert "64x64" in result.output and "nz=4" in result.output


# slow: two CLI trainings (about 30 s); the loop's resume is in the default suite
# (tests/training/test_loop.py, tests/training/test_engine.py) and the CLI's one-line errors too
@pytest.mark.slow
def test_train_synthetic_writes_a_run_and_resumes(tmp_path):
    run = tmp_path / "run"

    def args(epochs):
        return ["train", "synthetic", "-c", "synthetic-quick", "-o", str(run), "--quiet", "--epochs", str(epochs),
                "--set", "train.iterations_per_epoch=2", "--set", "model.unet_depth=2",
                "--set", "data.synthetic_images=16", "--set", "data.synthetic_validation=4"]

    result = CliRunner().invoke(main, args(1))
    assert result.exit_code == 0, result.output
    assert "best validation Dice" in result.output
    assert (run / "config.yaml").is_file() and (run / "model.keras").is_file()
    assert "epoch 1: val Dice" in (run / "train.log").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iteration"] == 2
    # a second call continues from the checkpoint: one more epoch
    result = CliRunner().invoke(main, args(2))
    assert result.exit_code == 0, result.output
    assert json.loads((run / "summary.json").read_text())["iteration"] == 4
    refused = CliRunner().invoke(main, args(3) + ["--restart"])
    assert refused.exit_code != 0 and "already holds checkpoints" in refused.output


def test_train_bad_override_is_a_clean_error():
    result = CliRunner().invoke(main, ["train", "synthetic", "--set", "train.epoch=3"])
    assert result.exit_code != 0
    assert "unknown key 'epoch'" in result.output
    assert "Traceback" not in result.output


def test_train_help_lists_the_switches():
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0
    for option in ("--config", "--set", "--run-dir", "--xla", "--precision", "--backend", "--resume",
                   "--labelled-fraction"):
        assert option in result.output


@pytest.mark.parametrize("command", ["train", "prior train", "baseline train"])
def test_the_readme_shows_each_training_command_s_help_as_it_is(command):
    # README's copy of 'sdnet-tf train --help' had lost the mnms dataset and its --data text
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    shown = readme.split(f"$ sdnet-tf {command} --help\n", 1)[1]
    shown = re.split(r"\n(?:```|\$ sdnet-tf )", shown, maxsplit=1)[0].rstrip("\n")
    result = CliRunner().invoke(main, [*command.split(), "--help"], prog_name="sdnet-tf", terminal_width=78)
    assert result.exit_code == 0, result.output
    assert shown == result.output.rstrip("\n")


@pytest.mark.parametrize("command", ["figures", "latent", "report", "modality-classifier", "export"])
def test_commands_that_read_sdnet_s_factors_refuse_a_shape_prior_run_in_one_line_leaving_nothing(tmp_path, command):
    # report stopped on a KeyError traceback; figures and latent named commands they are not and
    # left an empty output folder
    from sdnet_tf.config import PriorConfig, save_config

    run = tmp_path / "acnn"
    run.mkdir()
    config = PriorConfig()
    config.model.kind = "acnn"
    save_config(config, run / "config.yaml")
    result = CliRunner().invoke(main, [command, str(run), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {run}: a shape-prior run (acnn); {command} takes SDNet")
    assert "shape-eval takes this one" in lines[0] and not (tmp_path / "out").exists()


def test_report_refuses_an_m_and_ms_run_before_writing_anything(tmp_path):
    from sdnet_tf.config import load_config, save_config

    run = tmp_path / "mnms"
    run.mkdir()
    save_config(load_config("sdnet-mnms-phantom-quick"), run / "config.yaml")
    (run / "data.json").write_text(json.dumps({"dataset": "mnms", "data": str(tmp_path)}))
    result = CliRunner().invoke(main, ["report", str(run), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert f"{run}: trained on M&Ms data; report takes runs of ACDC-layout cohorts" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command,old", [(["prior", "train", "nvae"], ["train", "nvae"]),
                                         (["prior", "train", "acnn"], ["train", "acnn"]),
                                         (["baseline", "train", "unet"], ["train", "unet"])])
def test_priors_and_baselines_have_their_own_commands_and_the_old_spelling_still_works(tmp_path, command, old):
    missing = ["--data", str(tmp_path / "missing"), "-o", str(tmp_path / "run")]
    runner = CliRunner()
    new = runner.invoke(main, command + missing)
    assert new.exit_code == 1 and "does not exist" in new.output and "deprecated" not in new.output, new.output
    legacy = runner.invoke(main, old + missing)
    assert legacy.exit_code == 1 and "does not exist" in legacy.output
    assert f"'sdnet-tf train {command[2]}' is deprecated" in legacy.output
    assert f"use 'sdnet-tf {' '.join(command)}'" in legacy.output


def test_only_the_baseline_takes_a_shape_prior():
    runner = CliRunner()
    assert "--shape-prior" in runner.invoke(main, ["baseline", "train", "--help"]).output
    result = runner.invoke(main, ["prior", "train", "nvae", "--shape-prior", "x"])
    assert result.exit_code == 2 and "No such option '--shape-prior'" in result.output
    result = runner.invoke(main, ["prior", "train", "unet"])
    assert result.exit_code == 2 and "'unet' is not one of 'nvae', 'acnn'" in result.output


def test_train_on_a_backend_other_than_the_loaded_one_is_a_clean_error(tmp_path):
    # this process imported Keras on TensorFlow; JAX would need a fresh one
    result = CliRunner().invoke(main, ["train", "synthetic", "--backend", "jax", "-o", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "already imported on the 'tensorflow' backend" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


@pytest.fixture
def fresh_process(monkeypatch):
    """As in a new sdnet-tf process: Keras not imported yet, no KERAS_BACKEND set."""
    monkeypatch.delitem(sys.modules, "keras")
    for name in ("KERAS_BACKEND", "JAX_THREEFRY_PARTITIONABLE"):
        # set first so that the undo removes what select_backend writes: a bare delenv of an
        # absent variable records nothing, and the test's value would leak into later tests
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return monkeypatch


def test_select_backend_sets_keras_backend_before_keras_loads(fresh_process):
    fresh_process.setattr(importlib.util, "find_spec", lambda name: object())  # jax "installed"
    select_backend("jax")
    assert os.environ["KERAS_BACKEND"] == "jax" and os.environ["JAX_THREEFRY_PARTITIONABLE"] == "0"


@pytest.mark.parametrize("backend,environment,error,message", [
    ("jax", None, ImportError, "pip install 'sdnet-tf[jax]'"),
    ("tensorflow", "jax", ValueError, "KERAS_BACKEND=jax is set in the environment"),
    ("torch", None, ValueError, "expected one of tensorflow, jax"),
])
def test_select_backend_refuses_with_the_reason(fresh_process, backend, environment, error, message):
    fresh_process.setattr(importlib.util, "find_spec", lambda name: None)  # jax not installed
    if environment:
        fresh_process.setenv("KERAS_BACKEND", environment)
    with pytest.raises(error, match=re.escape(message)):
        select_backend(backend)


# slow: five short trainings through the CLI (about 45 s); the loop's fallback and refusals are
# in the default suite (tests/training/test_loop.py)
@pytest.mark.slow
def test_damaged_files_of_a_run_are_one_line_and_a_refused_resume_keeps_its_config(tmp_path):
    run = tmp_path / "run"
    small = ["--set", "train.iterations_per_epoch=2", "--set", "model.unet_depth=2", "--set", "model.input_size=32",
             "--set", "data.synthetic_images=16", "--set", "data.synthetic_validation=4",
             "--set", "train.image_summaries=0", "--set", "train.keep_checkpoints=2"]

    def train(epochs, *extra):
        return CliRunner().invoke(main, ["train", "synthetic", "-c", "synthetic-quick", "-o", str(run), "--quiet",
                                         "--epochs", str(epochs), *small, *extra])

    assert train(2).exit_code == 0
    newest = run / "checkpoints" / "ckpt-4.npz"
    # a truncated newest checkpoint: the run resumes from the one before it, with a warning
    newest.write_bytes(newest.read_bytes()[:10])
    result = train(3)
    assert result.exit_code == 0, result.output
    assert json.loads((run / "summary.json").read_text())["iteration"] == 6
    assert "resumed sdnet from" in (run / "train.log").read_text() and "ckpt-2.npz" in (run / "train.log").read_text()
    # every checkpoint damaged: one line naming the folder, no traceback
    for path in (run / "checkpoints").glob("ckpt-*.npz"):
        path.write_bytes(b"damaged")
    result = train(4)
    assert result.exit_code == 1 and "no readable checkpoint" in result.output
    assert "Traceback" not in result.output
    # a resume refused for another model leaves config.yaml as it was
    shutil.rmtree(run)
    assert train(1).exit_code == 0
    before = (run / "config.yaml").read_text()
    refused = train(2, "--set", "model.decoder=adain")
    assert refused.exit_code == 1 and "ckpt-2.npz" in refused.output and "expected" in refused.output
    assert (run / "config.yaml").read_text() == before
    # a damaged model.keras is one line for evaluate, predict and export alike
    (run / "model.keras").write_bytes(b"damaged")
    result = CliRunner().invoke(main, ["export", str(run), "-o", str(tmp_path / "export")])
    assert result.exit_code != 0 and "not a readable Keras model" in result.output
    assert "Traceback" not in result.output


def test_an_unknown_allocator_setting_is_one_line_and_exit_1():
    import subprocess

    env = dict(os.environ, SDNET_TF_ALLOCATOR="fast")
    done = subprocess.run([sys.executable, "-c", "import cli"], cwd=Path(__file__).resolve().parent.parent,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip() == "Error: SDNET_TF_ALLOCATOR='fast': use one of auto, tuned, default"


# ------------------------------------------------------------------ an option given twice
def _commands(group, path=()):
    """(command words, command) of every command under ``group``."""
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, path + (name,))
        else:
            yield path + (name,), command


COMMANDS = list(_commands(main))
SINGLE_VALUED = [(words, max(param.opts, key=len)) for words, command in COMMANDS for param in command.params
                 if isinstance(param, click.Option) and not (param.multiple or param.count or param.is_flag
                                                             or param.is_eager)]
ON_OFF = [(words, param.opts[0], param.secondary_opts[0]) for words, command in COMMANDS for param in command.params
          if isinstance(param, click.Option) and param.is_flag and param.secondary_opts]


def _one_usage_error(result, *expected):
    """The refusal: exit code 2, no traceback, one Error line holding ``expected``."""
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and all(text in errors[0] for text in expected), result.output
    assert "Traceback" not in result.output
    return errors[0]


def test_every_command_refuses_a_repeated_option():
    # the refusal is the group's, so a command added later has it too
    assert len(COMMANDS) > 10 and len(SINGLE_VALUED) > 40
    for words, command in COMMANDS:
        assert type(command).parse_args is not click.Command.parse_args, words


def test_predict_with_two_inputs_is_refused_with_a_hint_at_folders(tmp_path):
    # click kept the last: B was segmented, A silently not
    result = CliRunner().invoke(main, ["predict", "-i", "A.nii.gz", "-i", "B.nii.gz", "-o", str(tmp_path / "out"),
                                       "--run", str(tmp_path / "run")])
    line = _one_usage_error(result, "-i/--input given 2 times", "it takes one value", "give a folder")
    assert line == ("Error: -i/--input given 2 times; it takes one value (to segment several images, "
                    "give a folder of them)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("words,option", SINGLE_VALUED, ids=[f"{' '.join(w)} {o}" for w, o in SINGLE_VALUED])
def test_a_single_valued_option_given_twice_is_a_usage_error(words, option, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the values name paths here, were a command ever to run
    result = CliRunner().invoke(main, [*words, option, "1", "positional", option, "2"])
    _one_usage_error(result, f"{option} given 2 times; it takes one value")


@pytest.mark.parametrize("words,on,off", ON_OFF, ids=[f"{' '.join(w)} {on}" for w, on, _ in ON_OFF])
def test_an_on_off_pair_is_given_once(words, on, off, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # --qc --no-qc contradicts itself; one of the pair once is the rule, so --qc --qc is refused too
    for given in ([on, off], [off, on], [on, on], [off, off]):
        result = CliRunner().invoke(main, [*words, "positional", *given])  # a command that ran would stop there
        _one_usage_error(result, f"{on}/{off} given 2 times; give {on} or {off} once")


def test_repeatable_options_and_a_repeated_plain_flag_are_accepted(tmp_path):
    # --temperature is repeatable and --quiet means the same each time: the command's own check
    # (after the options are read) is what refuses this line
    result = CliRunner().invoke(main, ["shape-eval", "run", "-o", str(tmp_path / "out"), "--temperature", "1",
                                       "--temperature", "0.5", "--frds-epochs", "1", "--quiet", "--quiet"])
    assert result.exit_code == 1 and "--frds-epochs goes with --frds" in result.output, result.output
    result = CliRunner().invoke(main, ["evaluate", "--quiet", "--quiet"])
    assert result.exit_code == 1 and "give --predictions and --references, or --run" in result.output


def test_a_value_that_looks_like_an_option_is_a_value_and_help_goes_first(tmp_path):
    # '-o --run' names an output folder '--run'; then --run once
    result = CliRunner().invoke(main, ["predict", "-i", str(tmp_path / "missing.nii.gz"), "-o", "--run", "--run",
                                       str(tmp_path / "run"), "-h"])
    assert result.exit_code == 0 and "Segment NIfTI volumes" in result.output
    result = CliRunner().invoke(main, ["predict", "-i", "A", "-i", "B", "--help"])
    assert result.exit_code == 0 and "Segment NIfTI volumes" in result.output
