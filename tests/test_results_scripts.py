"""The results scripts refuse arguments they cannot use, in one argparse line, before loading
anything (results/shape-priors/fsd_breakdown.py once crashed on ``--samples 0`` inside the
covariance)."""

from pathlib import Path

import numpy as np
import pytest

from support.helpers import ROOT
from support.helpers import load_script as load


@pytest.mark.parametrize("option,value,phrase", [("--samples", "0", "at least 2 samples"),
                                                 ("--samples", "1", "at least 2 samples"),
                                                 ("--temperature", "0", "above 0"),
                                                 ("--temperature", "-1", "above 0")])
def test_fsd_breakdown_refuses_unusable_sample_counts_and_temperatures(tmp_path, capsys, option, value, phrase):
    fsd_breakdown = load(ROOT / "results" / "shape-priors" / "fsd_breakdown.py")
    with pytest.raises(SystemExit) as stop:
        fsd_breakdown.main([str(tmp_path), option, value])
    assert stop.value.code == 2
    assert phrase in capsys.readouterr().err


def test_a_finished_acdc_ablation_is_skipped_not_scored_again(tmp_path, monkeypatch, capsys):
    # it was evaluated again on every start of the queue, and its JSON's training time
    # replaced by that invocation's (seconds of evaluation)
    run_py = load(ROOT / "results" / "acdc" / "run.py")
    monkeypatch.setattr(run_py, "HERE", tmp_path)
    (tmp_path / "ablations").mkdir()
    finished = tmp_path / "ablations" / "sdnet-split0-100pct-float32.json"
    finished.write_text('{"train_seconds_this_invocation": 4019.6}')
    called = []
    monkeypatch.setattr(run_py, "run", lambda *args, **kwargs: called.append(args))
    run_py.ablation("float32", tmp_path / "data", tmp_path / "runs")
    assert called == []
    assert finished.read_text() == '{"train_seconds_this_invocation": 4019.6}'
    assert "skipped" in capsys.readouterr().out


@pytest.mark.parametrize("argv,phrase", [
    (["--partial", "--only", "sdnet-split0-100pct", "DATA"], "the ACDC training folder is required, before --only"),
    (["DATA", "--partial"], "--partial scores one run: name it with --only NAME, or give --ablation"),
    (["DATA", "--partial", "--only", "sdnet-split0-100pct", "--ablation", "bfloat16"], "--partial scores one run"),
    (["DATA", "--partial", "--only", "sdnet-split9-100pct"], "--only sdnet-split9-100pct: not a planned run"),
    (["DATA", "--partial", "--only", "sdnet-split0-100pct"], "has no validated epoch yet (best.json)"),
])
def test_acdc_partial_scoring_names_what_is_missing(tmp_path, monkeypatch, capsys, argv, phrase):
    run = load(ROOT / "results" / "acdc" / "run.py")
    monkeypatch.setattr("sys.argv", ["run.py", *argv, "--runs", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        run.main()
    assert stop.value.code == 2
    assert phrase in capsys.readouterr().err


def test_a_retrained_prior_is_scored_beside_the_first_run_not_over_it(tmp_path, monkeypatch):
    # the NVAE's run folder was lost and trained again: the networks after it use the new
    # weights, and both the first run's figures and the new run's must stay readable
    import json

    shapes = load(ROOT / "results" / "shape-priors" / "acdc.py")
    out, runs = tmp_path / "acdc", tmp_path / "runs"
    out.mkdir()
    monkeypatch.setattr(shapes, "OUT", out)
    first = {"best": {"epoch": 93}, "summary": {"epochs": 100}, "reconstruction_dice_frames":
             {"RV": 0.954, "MYO": 0.946, "LV": 0.956, "mean": 0.952}, "reconstruction_dice_slices": {"mean": 0.911},
             "valid_reconstructions": 0.996, "samples": {}, "frechet_shape_distance_training_vs_test": 2.3}
    (out / "nvae-acdc-thesis.json").write_text(json.dumps(first))

    def fake_run(command, log):  # what the training and shape-eval commands leave behind
        folder = Path(command[command.index("-o") + 1])
        folder.mkdir(parents=True, exist_ok=True)
        if command[1] == "shape-eval":
            again = dict(first, best={"epoch": 97}, reconstruction_dice_frames=dict(
                first["reconstruction_dice_frames"], mean=0.948))
            (folder / "nvae-acdc-thesis.json").write_text(json.dumps(again))
        else:
            (folder / "history.csv").write_text("epoch,val_dice_mean\n1,0.5\n2,0.7\n")
            (folder / "best.json").write_text('{"epoch": 97, "loss": 900.0}')

    monkeypatch.setattr(shapes, "run", fake_run)
    monkeypatch.setattr("sys.argv", ["acdc.py", str(tmp_path), "--runs", str(runs), "--retrain", "nvae-acdc-thesis"])
    shapes.main()
    assert json.loads((out / "nvae-acdc-thesis.json").read_text()) == first
    again = json.loads((out / "retrained" / "nvae-acdc-thesis.json").read_text())
    assert again["retrained"] is True and again["best"] == {"epoch": 97}
    assert (out / "retrained" / "nvae-acdc-thesis-history.csv").is_file()
    table = (out / "table.md").read_text()
    assert "| nvae-acdc-thesis | spacing | 93 (best) of 100 |" in table
    assert "| nvae-acdc-thesis, retrained | spacing | 97 (best) of 100 |" in table and "**0.948**" in table


def test_frds_scores_the_priors_in_sdnets_frame_only(tmp_path, monkeypatch):
    # a heart-framed NVAE would need a SimCLR embedder of its own, whose distances compare
    # with no other run; the spacing-framed NVAEs share one
    import json

    shapes = load(ROOT / "results" / "shape-priors" / "acdc.py")
    out, runs = tmp_path / "acdc", tmp_path / "runs"
    monkeypatch.setattr(shapes, "OUT", out)
    evaluated = {}
    result = {"best": {"epoch": 3}, "summary": {"epochs": 3}, "reconstruction_dice_frames":
              {"RV": 0.9, "MYO": 0.9, "LV": 0.9, "mean": 0.9}, "reconstruction_dice_slices": {"mean": 0.9},
              "valid_reconstructions": 1.0, "samples": {}, "frechet_shape_distance_training_vs_test": 2.0}

    def fake_run(command, log):
        folder = Path(command[command.index("-o") + 1])
        folder.mkdir(parents=True, exist_ok=True)
        if command[1] == "shape-eval":
            name = Path(command[2]).name
            evaluated[name] = command
            (folder / f"{name}.json").write_text(json.dumps(result))
        else:
            (folder / "history.csv").write_text("epoch,val_dice_mean\n1,0.5\n")

    monkeypatch.setattr(shapes, "run", fake_run)
    for name in ("nvae-acdc-heart", "nvae-acdc-kl10"):
        shapes.train_prior(name, tmp_path, runs)
    assert "--frds" not in evaluated["nvae-acdc-heart"] and "--frds" in evaluated["nvae-acdc-kl10"]


def test_a_network_trained_with_another_seed_is_set_against_the_baseline_with_that_seed(tmp_path, monkeypatch):
    # the seed-2 replicate of a network with a prior is compared with the seed-2 replicate of the
    # network without one when that exists (else the ACDC table's run), and the baseline's
    # replicates get rows of their own
    import json

    shapes = load(ROOT / "results" / "shape-priors" / "acdc.py")
    out, table_runs, replicates = tmp_path / "acdc", tmp_path / "table", tmp_path / "replicates"
    for folder in (out / "replicates", table_runs, replicates):
        folder.mkdir(parents=True)
    monkeypatch.setattr(shapes, "OUT", out)
    monkeypatch.setattr(shapes, "BASELINES", table_runs)
    monkeypatch.setattr(shapes, "BASELINE_REPLICATES", replicates)

    def scores(dice, valid, **extra):
        return dict({"dice_3d": {"mean": dice, "LV": dice, "RV": dice, "MYO": dice}, "slice_dice": {"mean": dice},
                     "hd95_mm": {"LV": 9.0, "RV": 9.0, "MYO": 9.0}, "labelled_fraction": 0.015,
                     "valid_slices_percent": valid}, **extra)

    name, baseline = "sdnet-shape-projection-split0-1.5pct", "sdnet-split0-1.5pct"
    (out / f"{name}.json").write_text(json.dumps(scores(0.712, 53.5)))
    (out / "replicates" / f"{name}-seed2.json").write_text(json.dumps(scores(0.700, 30.0, seed=2)))
    (table_runs / f"{baseline}.json").write_text(json.dumps(scores(0.724, 47.8)))
    rows = "\n".join(shapes.network_rows())
    assert f"| {name}, again, seed 2 |" in rows
    assert "sdnet-split0-1.5pct: 3-D Dice -0.024, valid slices -17.8 points" in rows  # no seed-2 baseline yet
    (replicates / f"{baseline}-seed2-tensorflow-cpu.json").write_text(json.dumps(scores(0.329, 0.0, seed=2)))
    (replicates / f"{baseline}-tensorflow-cpu.json").write_text(json.dumps(scores(0.716, 40.3)))
    rows = "\n".join(shapes.network_rows())
    assert "sdnet-split0-1.5pct, seed 2: 3-D Dice +0.371, valid slices +30.0 points" in rows
    assert "sdnet-split0-1.5pct: 3-D Dice -0.012, valid slices +5.7 points" in rows  # seed 1: the table's run
    assert f"| {baseline}, same-seed rerun | 1.5% | none | 0.716" in rows
    assert f"| {baseline}, seed 2 | 1.5% | none | 0.329" in rows


def test_a_replicated_network_is_scored_beside_the_first_run_with_the_prior_weights_it_used(tmp_path, monkeypatch):
    # a second run of a network with a shape prior: its own run folder and JSON, a table row
    # beside the first run's naming the prior's epoch, the first run's figures untouched
    import json

    shapes = load(ROOT / "results" / "shape-priors" / "acdc.py")
    out, runs = tmp_path / "acdc", tmp_path / "runs"
    out.mkdir()
    monkeypatch.setattr(shapes, "OUT", out)
    monkeypatch.setattr(shapes, "BASELINE_ROWS", [False])
    scores = {"dice_3d": {"mean": 0.684, "LV": 0.774, "RV": 0.594, "MYO": 0.684}, "slice_dice": {"mean": 0.625},
              "hd95_mm": {"LV": 16.3, "RV": 30.1, "MYO": 17.4}, "labelled_fraction": 0.015}
    first = dict(scores, valid_slices_percent=21.1)
    (out / "sdnet-shape-split0-1.5pct.json").write_text(json.dumps(first))
    (runs / "nvae-acdc-thesis").mkdir(parents=True)
    (runs / "nvae-acdc-thesis" / "best.json").write_text('{"epoch": 96, "loss": 900.0}')
    trained = []

    def fake_run(command, log):
        folder = Path(command[command.index("-o") + 1])
        folder.mkdir(parents=True, exist_ok=True)
        trained.append(folder)
        (folder / "history.csv").write_text("epoch,val_dice\n1,0.5\n")

    monkeypatch.setattr(shapes, "run", fake_run)
    monkeypatch.setattr(shapes.acdc_run, "collect", lambda *args: dict(scores, valid_slices_percent=30.4))
    monkeypatch.setattr("sys.argv", ["acdc.py", str(tmp_path), "--runs", str(runs), "--replicate",
                                     "sdnet-shape-split0-1.5pct"])
    shapes.main()
    assert trained[0] == runs / "replicates" / "sdnet-shape-split0-1.5pct"
    assert json.loads((out / "sdnet-shape-split0-1.5pct.json").read_text()) == first
    again = json.loads((out / "replicates" / "sdnet-shape-split0-1.5pct.json").read_text())
    assert again["replicate_of"] == "sdnet-shape-split0-1.5pct" and again["shape_prior_best"]["epoch"] == 96
    assert (out / "replicates" / "sdnet-shape-split0-1.5pct-history.csv").is_file()
    table = (out / "table.md").read_text()
    assert "| sdnet-shape-split0-1.5pct | 1.5% | nvae-acdc-thesis | **0.684**" in table and "| 21.1% |" in table
    assert "| sdnet-shape-split0-1.5pct, again | 1.5% | nvae-acdc-thesis (epoch 96) |" in table
    assert "| 30.4% |" in table
    # another seed on the same subjects: train.seed 2, data.seed the config's own (1)
    commands = []
    monkeypatch.setattr(shapes, "run", lambda command, log: commands.append(command) or fake_run(command, log))
    monkeypatch.setattr("sys.argv", ["acdc.py", str(tmp_path), "--runs", str(runs), "--replicate",
                                     "sdnet-shape-split0-1.5pct", "--seed", "2"])
    shapes.main()
    assert trained[-2] == runs / "replicates" / "sdnet-shape-split0-1.5pct-seed2"  # then its test/ folder
    train = " ".join(commands[0])
    assert train.startswith("sdnet-tf train acdc -c sdnet-acdc-cpu") and train.endswith("--seed 2 --set data.seed=1")
    seeded = json.loads((out / "replicates" / "sdnet-shape-split0-1.5pct-seed2.json").read_text())
    assert seeded["seed"] == 2 and seeded["replicate_of"] == "sdnet-shape-split0-1.5pct"
    assert json.loads((out / "replicates" / "sdnet-shape-split0-1.5pct.json").read_text()) == again
    assert "| sdnet-shape-split0-1.5pct, again, seed 2 | 1.5% | nvae-acdc-thesis (epoch 96) |" in (
        out / "table.md").read_text()


def test_acdc_replicates_with_another_seed_keep_the_table_runs_subjects():
    run_py = load(ROOT / "results" / "acdc" / "run.py")
    for kind in ("sdnet", "unet"):
        train, _ = run_py.commands(kind, 0, 0.015, Path("/data"), Path("/runs/x"), seed=3)
        assert train[-4:] == ["--seed", "3", "--set", "data.seed=1"], train
        plain, _ = run_py.commands(kind, 0, 0.015, Path("/data"), Path("/runs/x"))
        assert "--seed" not in plain and train[:-4] == plain


def test_failed_checks_counts_each_check_over_the_invalid_slices(tmp_path):
    # a slice failing two checks counts once as invalid and once under each check; one failing
    # a Painchaud check only is invalid by Painchaud's criteria, valid by the seven
    import csv

    from sdnet_tf.apps.evaluation import SLICE_COLUMNS

    run_py = load(ROOT / "results" / "acdc" / "run.py")
    failed = ["", "holes;frontier_between_lv_and_background", "myo_concavity", "", "disconnectivity_in_rv"]
    with open(tmp_path / "slices.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SLICE_COLUMNS)
        writer.writeheader()
        for i, checks in enumerate(failed):
            # slice 2 fails a check of Painchaud's only: valid by the seven checks
            valid7 = "0" if checks and i != 2 else "1"
            writer.writerow({"Name": "patient016_frame01", "Slice": i, "Failed checks pred": checks,
                             "Valid7 pred": valid7, "ValidP pred": "0" if checks else "1"})
    assert run_py.failed_checks(tmp_path / "slices.csv") == {
        "invalid_slices": 2, "invalid_slices_painchaud": 3,
        "checks": {"holes": 1, "frontier_between_lv_and_background": 1, "myo_concavity": 1,
                   "disconnectivity_in_rv": 1}}


@pytest.mark.parametrize("script, argv, message", [
    ("shape-priors/acdc.py", ["--seed", "2"], "--seed goes with --replicate"),
    ("shape-priors/acdc.py", ["--replicate", "sdnet-shape-split0-1.5pct", "--only", "nvae-acdc-heart"],
     "without --only or --table"),
    ("shape-priors/acdc.py", ["--retrain", "nvae-acdc-thesis", "--table"], "without --only or --table"),
    ("acdc/run.py", ["--seed", "2"], "--seed goes with --replicate"),
    ("acdc/run.py", ["--replicate", "sdnet-split0-1.5pct", "--ablation", "batch-dice"],
     "without --only, --ablation or --partial"),
])
def test_replicate_options_that_would_be_ignored_are_refused(tmp_path, monkeypatch, capsys, script, argv, message):
    # each would otherwise train something other than what was asked, without a word
    module = load(ROOT / "results" / script)
    monkeypatch.setattr(module, "run", lambda *args: pytest.fail("nothing may be trained"))
    monkeypatch.setattr("sys.argv", [script, str(tmp_path), "--runs", str(tmp_path / "runs"), *argv])
    with pytest.raises(SystemExit) as stop:
        module.main()
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_check_subjects_records_whether_a_replicate_kept_the_first_runs_subjects(tmp_path, capsys):
    import json

    run_py = load(ROOT / "results" / "acdc" / "run.py")
    first = tmp_path / "first.json"
    first.write_text(json.dumps({"labelled_patients": [43]}))
    same, other, old = ({"name": "x", "labelled_patients": [43]}, {"name": "y", "labelled_patients": [71]},
                        {"name": "z", "labelled_patients": [43]})
    run_py.check_subjects(same, first)
    run_py.check_subjects(other, first)
    run_py.check_subjects(old, tmp_path / "absent.json")
    assert (same["same_subjects"], other["same_subjects"], old["same_subjects"]) == (True, False, None)
    assert "y labelled patients [71], the first run [43]" in capsys.readouterr().err


def test_recon_breakdown_splits_each_structures_shortfall_by_size_and_stack_position():
    # four slices of one volume: the LV reconstructed exactly on the two large ones, half missed
    # on a small apical one, drawn where the reference has none on the last: the small and the
    # absent slice carry the whole shortfall, the last third of the stack most of it
    breakdown = load(ROOT / "results" / "shape-priors" / "recon_breakdown.py")
    reference = np.zeros((4, 16, 16), np.uint8)
    reference[0, 2:12, 2:12] = 3   # 100 pixels
    reference[1, 2:10, 2:10] = 3   # 64
    reference[2, 4:6, 4:8] = 3     # 8: apical
    predicted = reference.copy()
    predicted[2, 4:6, 6:8] = 0     # half of it missed: Dice 2 * 4 / (4 + 8) = 2/3
    predicted[3, 0:2, 0:2] = 3     # a structure the reference does not have: Dice 0
    records = breakdown.slice_records(predicted, reference, np.full(4, 2.0), np.arange(4), np.zeros(4, int),
                                      np.zeros(4, int))
    lv = records["LV"]
    np.testing.assert_allclose(lv["dice"], [1.0, 1.0, 2 / 3, 0.0])
    np.testing.assert_allclose(lv["area_mm2"], [400.0, 256.0, 32.0, 0.0])  # 2 mm pixels
    assert lv["third"].tolist() == [0, 1, 2, 2]
    assert records["RV"]["dice"].size == 0  # neither map has an RV: no slice counts
    summary = breakdown.groups(lv)
    rows = {r["group"].split(" (")[0]: r for r in summary["rows"]}
    assert summary["slices"] == 4 and summary["mean_dice"] == pytest.approx((2 + 2 / 3) / 4)
    assert rows["area quartile 1"]["slices"] == 1 and rows["area quartile 1"]["mean_dice"] == pytest.approx(2 / 3)
    assert rows["area quartile 1"]["shortfall_share"] == pytest.approx((1 / 3) / (4 / 3))
    assert rows["absent from the reference"]["shortfall_share"] == pytest.approx(1 / (4 / 3))
    assert rows["last third"]["slices"] == 2 and rows["last third"]["shortfall_share"] == pytest.approx(1.0)
    assert summary["mean_dice_without_smallest_quartile"] == pytest.approx(1.0)
