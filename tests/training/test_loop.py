"""The one training loop and its run files, with a task that needs no network: resume,
the fallback past a damaged checkpoint, and the refusals."""

import json

import keras
import numpy as np
import pytest

from sdnet_tf.data.arrays import DataError
from sdnet_tf.training.loop import Loop, Task
from sdnet_tf.training.run_files import RunFiles


class Counting(Task):
    """A weight that adds each step's input; validation scores the weight itself."""

    name = "counting"
    score = ("value", "max")

    def __init__(self, size=3):
        self.weight = keras.Variable(np.zeros(size, "float32"), name="weight")

    def variables(self):
        return {"counting/0000": self.weight}

    def best_variables(self):
        return self.variables()

    def batches(self, epoch, start, stop):
        return range(start, stop)

    def step(self, inputs, step):
        self.weight.assign(self.weight.value + float(inputs))
        return {"total": float(inputs)}

    def validate(self):
        return {"value": float(np.asarray(self.weight.value)[0])}


def _loop(run_dir, size=3):
    return Loop(Counting(size), RunFiles(run_dir, keep=3), steps_per_epoch=2, total_steps=6, log_every=1,
                progress=False)


def test_a_resumed_loop_ends_where_an_uninterrupted_one_does(tmp_path):
    straight = _loop(tmp_path / "straight")
    straight.run()
    killed = _loop(tmp_path / "killed")
    killed.run(stop_at=3)  # stopped mid-epoch: a checkpoint at step 3, no validation there
    resumed = _loop(tmp_path / "killed")
    assert resumed.resume() == 3
    resumed.run()
    np.testing.assert_array_equal(np.asarray(resumed.task.weight.value), np.asarray(straight.task.weight.value))
    assert resumed.state["best"] == straight.state["best"] == 15.0  # 0 + 1 + ... + 5
    history = (tmp_path / "killed" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,step,seconds,val_value,train_total") and len(history) == 4
    best = json.loads((tmp_path / "killed" / "best.json").read_text())
    assert best == {"epoch": 3, "step": 6, "value": 15.0}
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "scalars.jsonl").read_text().splitlines()]
    assert steps[:3] == [1, 2, 2] and max(steps) == 6


def test_a_resumed_run_asked_for_fewer_steps_than_done_says_so_and_trains_nothing(tmp_path, caplog):
    _loop(tmp_path / "run").run()
    shorter = Loop(Counting(), RunFiles(tmp_path / "run", keep=3), steps_per_epoch=2, total_steps=4, progress=False)
    assert shorter.resume() == 6
    with caplog.at_level("INFO", logger="sdnet_tf.train"):
        shorter.run()
    assert "6 steps (epoch 3) done already, at or past the 4 asked for; nothing to train" in caplog.text
    assert shorter.state["step"] == 6 and float(np.asarray(shorter.task.weight.value)[0]) == 15.0


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    first = _loop(tmp_path / "run")
    first.run(stop_at=4)  # checkpoints at steps 2 and 4
    newest = tmp_path / "run" / "checkpoints" / "ckpt-4.npz"
    newest.write_bytes(newest.read_bytes()[:10])
    again = _loop(tmp_path / "run")
    with caplog.at_level("WARNING", logger="sdnet_tf.train"):
        assert again.resume() == 2
    assert "ckpt-4.npz: not a readable .npz file" in caplog.text
    np.testing.assert_array_equal(np.asarray(again.task.weight.value), [1.0, 1.0, 1.0])  # 0 + 1


def test_no_readable_checkpoint_and_another_model_are_errors(tmp_path):
    _loop(tmp_path / "run").run(stop_at=4)
    with pytest.raises(DataError, match="ckpt-4.npz: counting/0000 .* has shape"):
        _loop(tmp_path / "run", size=5).resume()  # another model: refused, not skipped
    for path in (tmp_path / "run" / "checkpoints").glob("ckpt-*.npz"):
        path.write_bytes(b"damaged")
    with pytest.raises(DataError, match="no readable checkpoint \\(2 damaged\\)"):
        _loop(tmp_path / "run").resume()


def test_the_first_step_says_it_compiles_and_how_long_it_took(tmp_path, caplog):
    loop = _loop(tmp_path / "run")
    with caplog.at_level("INFO", logger="sdnet_tf.train"):
        loop.run(stop_at=3)
        loop.run()  # the same process: its updates are compiled already
    lines = [r.getMessage() for r in caplog.records if "first step" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("counting: first step in ") and "tracing and compiling" in lines[0]
