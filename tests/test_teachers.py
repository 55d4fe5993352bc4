"""The teacher ensemble: members with distinct seeds in parallel jobs, one shared frame cache,
finished members skipped."""

import os

from asrkd.score import frame_accuracy
from asrkd.teachers import train_ensemble
from asrkd.train import TrainConfig
from test_train import MC, TC, _same, _weights, make_corpus


def test_train_ensemble_skips_finished_models(tmp_path):
    data, ali = make_corpus(str(tmp_path / "c"), num_spk=4, utts_per_spk=2)
    tc = TrainConfig(**{**TC.to_dict(), "epochs": 1, "min_epochs": 1, "num_threads": 0})
    exp = str(tmp_path / "ens")
    paths = train_ensemble(data, ali, exp, MC, tc, num_models=2, nj=2)
    assert paths == [os.path.join(exp, f"model{i}", "final.pt") for i in (1, 2)]
    assert not _same(_weights(paths[0]), _weights(paths[1]))
    assert os.path.isfile(os.path.join(exp, "log", "train.2.log"))
    assert len(os.listdir(os.path.join(exp, "frames"))) == 1  # one shared cache
    assert not os.path.exists(os.path.join(exp, "model1", "frames"))
    # Ensemble frame accuracy through paths and through a scorer agree.
    from asrkd.features import FeatureReader
    from asrkd.scorer import make_scorer

    acc = frame_accuracy(paths, data, ali)
    assert acc > 0.5
    assert acc == frame_accuracy(make_scorer(paths, feats=FeatureReader(data, cmvn="meanvar")), data, ali)
    mtime = os.path.getmtime(paths[0])
    train_ensemble(data, ali, exp, MC, tc, num_models=2, nj=1)
    assert os.path.getmtime(paths[0]) == mtime
