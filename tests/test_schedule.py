"""Schedules of the training loop: Newbob and BestEpoch."""

from asrkd.schedule import BestEpoch, Newbob
from asrkd.train import TrainConfig


def test_newbob_halves_then_stops():
    tc = TrainConfig(epochs=10, min_epochs=2, lr=0.1, start_halving_impr=0.1,
                     end_halving_impr=0.01)
    s = Newbob(tc)
    assert s.update(1, 1.0, 0.5) and s.lr == 0.1  # the first epoch is always accepted
    assert s.update(2, 0.95, 0.55) and s.lr == 0.05 and not s.done  # 5% < 10%: halving
    assert not s.update(3, 0.96, 0.5)  # worse: rejected; halving and no gain: stop
    assert s.done and s.best_epoch == 2 and s.reload_rejected and s.epoch == 3


def test_best_loss_accepts_only_a_lower_validation_loss():
    s = BestEpoch(0.01, 3)
    assert not s.done and s.lr == 0.01 and s.epoch == 0 and not s.reload_rejected
    assert s.update(1, 0.5, 0.8)
    assert not s.update(2, 0.6, 0.9)  # a better accuracy does not count
    assert s.update(3, 0.4, 0.85)
    assert s.done and s.best_epoch == 3 and s.lr == 0.01
    assert (s.state["best_loss"], s.state["best_acc"]) == (0.4, 0.85)


def test_best_loss_starting_model_competes_as_epoch_0():
    s = BestEpoch(0.01, 2, best_loss=0.3, best_acc=0.9)
    assert not s.update(1, 0.35, 0.95)
    assert not s.update(2, 0.3, 0.95)  # as good is not better
    assert s.done and s.best_epoch == 0 and s.state["best_acc"] == 0.9


def test_best_by_accuracy_accepts_only_a_higher_validation_accuracy():
    # the same figures as above, chosen by accuracy: epoch 2 (higher loss, higher accuracy) wins
    s = BestEpoch(0.01, 3, by="acc")
    assert s.update(1, 0.5, 0.8)
    assert s.update(2, 0.6, 0.9)
    assert not s.update(3, 0.4, 0.85)
    assert s.best_epoch == 2 and (s.state["best_loss"], s.state["best_acc"]) == (0.6, 0.9)
    # the starting model competes as epoch 0; as good is not better
    s = BestEpoch(0.01, 2, best_loss=0.3, best_acc=0.9, by="acc")
    assert not s.update(1, 0.2, 0.9) and s.update(2, 0.35, 0.95) and s.best_epoch == 2
