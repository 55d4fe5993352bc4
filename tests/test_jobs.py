"""Ensemble members as a job array through submitit (its local executor: the CI stand-in for
Slurm): the same outputs as local jobs, finished members skipped, a failed one named and alone
resubmitted."""

import os

import pytest
import torch

from asrkd.errors import UserError
from asrkd.jobs import parse_launcher
from test_distill import make_learnable_data


def test_parse_launcher():
    assert parse_launcher("local") == ("local", {})
    assert parse_launcher("slurm:partition=gpu,gpus_per_node=1,mem_gb=8") == (
        "slurm", {"slurm_partition": "gpu", "gpus_per_node": 1, "mem_gb": 8})
    with pytest.raises(UserError, match="unknown launcher"):
        parse_launcher("pbs")
    with pytest.raises(UserError, match="key=value"):
        parse_launcher("slurm:gpu")


def test_ensemble_as_submitit_job_array(tmp_path):
    pytest.importorskip("submitit")
    from asrkd.models import ModelConfig
    from asrkd.teachers import train_ensemble
    from asrkd.train import TrainConfig, is_finished

    data, ali = make_learnable_data(tmp_path, num_spk=3, utts_per_spk=4, num_pdfs=5, dim=6)
    mc = ModelConfig(left_context=1, right_context=1, hidden_dims=[16])
    tc = TrainConfig(epochs=1, min_epochs=1, batch_size=32, tensorboard=False, num_threads=1)
    exp = tmp_path / "teachers"
    # member 2 starts from a corrupt checkpoint: its task fails, the others finish
    (exp / "model2").mkdir(parents=True)
    (exp / "model2" / "epoch1.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError) as err:
        train_ensemble(str(data), str(ali), str(exp), mc, tc, num_models=3,
                       launcher="submitit-local")
    msg = str(err.value)
    assert "1 of 3 train tasks failed" in msg and str(exp / "log" / "train.2.log") in msg
    assert "train.1.log" not in msg and "resubmits only" in msg
    assert "not a torch checkpoint" in (exp / "log" / "train.2.log").read_text()  # named
    assert is_finished(exp / "model1") and is_finished(exp / "model3")
    assert not is_finished(exp / "model2")
    done = {m: os.stat(exp / m / "final.pt").st_mtime_ns for m in ("model1", "model3")}
    submitted = len(list((exp / "log" / "submitit").glob("*_submitted.pkl")))

    (exp / "model2" / "epoch1.pt").unlink()  # fixed; the rerun submits member 2 alone
    paths = train_ensemble(str(data), str(ali), str(exp), mc, tc, num_models=3,
                           launcher="submitit-local")
    assert paths == [str(exp / f"model{i}" / "final.pt") for i in (1, 2, 3)]
    assert all(is_finished(exp / f"model{i}") for i in (1, 2, 3))
    assert {m: os.stat(exp / m / "final.pt").st_mtime_ns for m in done} == done
    assert len(list((exp / "log" / "submitit").glob("*_submitted.pkl"))) == submitted + 1

    # the task ran the local code path: local jobs give the same weights for the same seed
    local = train_ensemble(str(data), str(ali), str(tmp_path / "local"), mc, tc, num_models=2)
    for a, b in zip(local, paths):
        wa = torch.load(a, weights_only=True)["state_dict"]
        wb = torch.load(b, weights_only=True)["state_dict"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
