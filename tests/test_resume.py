"""The resume store (pipeline.resume): an interrupted training goes on from its last finished epoch and
ends as the uninterrupted run ends; a state is used only by a run with the same key."""

from __future__ import annotations

import shutil

import pytest
import torch

from pipeline import resume
from pipeline.imports import closure
from pipeline.training import Hooks, TrainState
from tests.helpers import ROOT, fit_toy, train_params


def test_an_interrupted_training_resumes_and_ends_as_an_uninterrupted_one(tmp_path):
    """The state saved after epoch 3, through the resume file, into a fresh model with other random
    draws behind it: the rest of the run is the uninterrupted run's, to the bit."""
    tp = train_params(epochs=6, patience=6, word_dropout=0.1, lr_schedule="cosine", dropout=0.3,
                      embeddings="freeze_then_finetune", freeze_epochs=2)
    full = fit_toy(tp)

    class Interrupted(Exception):
        pass

    events = [("epoch", 1, {"epoch": 1})]  # what DVCLive had logged, stored beside the state

    def save_then_stop(state: TrainState) -> None:
        resume.save(tmp_path / "resume.pt", "key-1", state, events)
        if state.epoch == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        fit_toy(tp, Hooks(on_checkpoint=save_then_stop))
    assert resume.load(tmp_path / "resume.pt", "another-run") is None  # other params or data
    state, logged = resume.load(tmp_path / "resume.pt", "key-1")
    assert state.epoch == 3 and logged == events
    resumed = fit_toy(tp, resume=state, seed=tp.seed + 1)
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in full.history]
    assert resumed.step_losses == full.step_losses
    assert resumed.best_epoch == full.best_epoch
    for key in full.best_state:
        assert torch.equal(resumed.best_state[key], full.best_state[key]), key


def test_a_damaged_resume_file_means_training_from_the_start(tmp_path, capsys):
    (tmp_path / "resume.pt").write_bytes(b"PK\x03\x04 not a whole archive")
    assert resume.load(tmp_path / "resume.pt", "key") is None
    assert "training from the start" in capsys.readouterr().err
    assert resume.load(tmp_path / "none.pt", "key") is None


def test_the_key_follows_the_settings_the_inputs_and_the_code(tmp_path, monkeypatch):
    data = tmp_path / "train.parquet"
    data.write_bytes(b"rows")
    key = resume.run_key([{"lr": 0.1}, 2], [data])
    assert resume.run_key([{"lr": 0.1}, 2], [data]) == key
    assert resume.run_key([{"lr": 0.2}, 2], [data]) != key  # a param
    assert resume.run_key([{"lr": 0.1}, 1], [data]) != key  # the thread count
    data.write_bytes(b"other rows")
    assert resume.run_key([{"lr": 0.1}, 2], [data]) != key  # the data
    data.write_bytes(b"rows")
    # The code the train stage reaches: a copy of the package, one of its modules edited.
    code = tmp_path / "checkout"
    for name in closure("pipeline.stages.train"):
        (code / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, code / name)
    monkeypatch.setattr(resume, "ROOT", code)
    assert resume.run_key([{"lr": 0.1}, 2], [data]) == key
    with open(code / "pipeline" / "training.py", "a") as f:
        f.write("\n# an edit\n")
    assert resume.run_key([{"lr": 0.1}, 2], [data]) != key


class _Planted:
    """What a hostile resume file holds: unpickling it calls open(marker, "w"), i.e. runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("container", ["torch-archive", "legacy-pickle"])
def test_a_planted_pickle_in_the_resume_file_runs_no_code(tmp_path, capsys, container):
    """models/.train-resume.pt may come from a shared folder or a copied checkout: reading it, whatever
    its key says, must never unpickle an object (the stage would run the planted code at start)."""
    marker = tmp_path / "code-ran"
    payload = {"format": resume.FORMAT, "key": "key-1", "state": _Planted(marker), "live_events": []}
    if container == "torch-archive":
        torch.save(payload, tmp_path / "resume.pt")
    else:
        import pickle
        (tmp_path / "resume.pt").write_bytes(pickle.dumps(payload))
    assert resume.load(tmp_path / "resume.pt", "key-1") is None
    assert not marker.exists()
    assert "training from the start" in capsys.readouterr().err


def test_a_resume_file_of_the_wrong_shape_is_ignored(tmp_path, capsys):
    torch.save({"format": resume.FORMAT, "key": "key-1", "state": {"epoch": 1}, "live_events": []},
               tmp_path / "resume.pt")
    assert resume.load(tmp_path / "resume.pt", "key-1") is None
    assert "training from the start" in capsys.readouterr().err
