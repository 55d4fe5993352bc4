"""Training options for scale: bf16 autocast (the CPU path), and memory-bounded frame storage."""

import numpy as np
import pytest
import torch

from asrkd.errors import UserError
from test_distill import make_learnable_data


def test_bf16_autocast_trains_on_cpu(tmp_path):
    from asrkd.models import ModelConfig, load_checkpoint
    from asrkd.train import TrainConfig, train_model

    data, ali = make_learnable_data(tmp_path, num_spk=3, utts_per_spk=6, num_pdfs=5, dim=6)
    mc = ModelConfig(left_context=1, right_context=1, hidden_dims=[32])
    runs = {}
    for prec in ("fp32", "bf16"):
        tc = TrainConfig(epochs=3, min_epochs=3, batch_size=32, lr=0.01, tensorboard=False,
                         num_threads=1, reject_worse=False, precision=prec)
        ckpt = load_checkpoint(train_model(str(data), str(ali), str(tmp_path / prec), mc, tc,
                                           seed=1))
        runs[prec] = ckpt
        assert all(v.dtype != torch.bfloat16 for v in ckpt["state_dict"].values())
    h32, h16 = runs["fp32"]["valid_acc"], runs["bf16"]["valid_acc"]
    assert h16 > 0.6 and abs(h16 - h32) < 0.1  # learns the task about as well as float32
    w32, w16 = runs["fp32"]["state_dict"], runs["bf16"]["state_dict"]
    assert any(not torch.equal(w32[k], w16[k]) for k in w32)  # bfloat16 did run
    with pytest.raises(UserError, match="precision"):
        TrainConfig(precision="fp16")
