"""The sdnet-tf command line."""

import json

from click.testing import CliRunner

from cli import main


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
    for option in ("--config", "--set", "--run-dir", "--xla", "--precision", "--resume", "--labelled-fraction"):
        assert option in result.output
