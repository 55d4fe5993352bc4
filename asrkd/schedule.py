"""Learning-rate schedules of the training loop (asrkd.train.train_epochs): ``Newbob``, the
default, and ``BestEpoch``, the specialists' (asrkd.specialists.train).

A schedule has ``lr`` (of the next epoch), ``epoch`` (the last one done), ``best_epoch``,
``done``, ``reload_rejected`` and ``update(epoch, valid_loss, valid_acc) -> accepted``; its
``state`` dict (with ``epoch`` and ``stop``) is what an epoch checkpoint keeps as "schedule". The
loop writes an accepted epoch as ``final.pt``; after one that is not, it puts the best epoch's
weights and optimizer state back if ``reload_rejected``, else it trains on from the epoch.

Newbob: as in Kaldi nnet1's train_scheduler.sh, by default on the relative fall of the
validation cross-entropy (``newbob_metric="acc"``: absolute gain in validation frame accuracy):
an epoch that does not improve is rejected (weights and optimizer state go back to the best
epoch); the learning rate is halved from the first epoch whose gain is below
``start_halving_impr``; training stops once halving and the gain is below ``end_halving_impr``
(after ``min_epochs``), or at ``epochs``. ``halving_from_epoch`` replaces this with a fixed
schedule (full rate, then halving every epoch). ``final.pt`` is the best epoch (the last one with
``reject_worse=False``).

BestEpoch: a fixed learning rate for a fixed number of epochs, each trained on from the one
before; ``final.pt`` is the epoch with the lowest validation loss (or the highest accuracy).
"""


class Newbob:
    """Kaldi nnet1's newbob schedule, or the fixed one of ``halving_from_epoch`` (module
    docstring), with the settings of a TrainConfig (asrkd.train)."""

    def __init__(self, train_config):
        self.tc = train_config
        self.state = {"epoch": 0, "lr": train_config.lr, "halving": False, "best_acc": 0.0,
                      "best_loss": 0.0, "best_score": 0.0, "best_epoch": 0, "stop": False}

    lr = property(lambda self: self.state["lr"])  # of the next epoch
    epoch = property(lambda self: self.state["epoch"])  # the last one done
    best_epoch = property(lambda self: self.state["best_epoch"])
    reload_rejected = property(lambda self: self.tc.reject_worse)

    @property
    def done(self):
        return self.state["stop"] or self.state["epoch"] >= self.tc.epochs

    def update(self, epoch, valid_loss, valid_acc):
        """Take epoch ``epoch``'s validation figures; return whether it is accepted."""
        tc, state = self.tc, self.state
        # Improvement: relative fall of validation CE (Kaldi nnet1) or gain in accuracy.
        if tc.newbob_metric == "loss":
            score = -valid_loss
            impr = ((state["best_loss"] - valid_loss) / max(state["best_loss"], 1e-12)
                    if state["best_epoch"] else 1.0)
        else:
            score = valid_acc
            impr = valid_acc - state["best_acc"] if state["best_epoch"] else 1.0
        accepted = (not state["best_epoch"] or score > state["best_score"]
                    or not tc.reject_worse)
        if accepted:
            state.update(best_acc=valid_acc, best_loss=valid_loss, best_score=score,
                         best_epoch=epoch)
        if tc.halving_from_epoch > 0:
            state["halving"] = epoch >= tc.halving_from_epoch
        else:  # newbob
            if state["halving"] and impr < tc.end_halving_impr and epoch >= tc.min_epochs:
                state["stop"] = True
            if impr < tc.start_halving_impr:
                state["halving"] = True
        if state["halving"]:
            state["lr"] *= tc.halving_factor
        state["epoch"] = epoch
        return accepted


class BestEpoch:
    """Learning rate ``lr`` for ``epochs`` epochs, every one trained on from the last; an epoch
    is accepted (is final.pt) when its validation loss is below the best so far (``by="acc"``:
    its validation accuracy above the best so far). ``best_loss`` and ``best_acc``: the
    starting model's figures, when it competes as epoch 0 (its final.pt written by the caller);
    ``state`` ends with the best epoch's."""

    reload_rejected = False

    def __init__(self, lr, epochs, best_loss=float("inf"), best_acc=0.0, by="loss"):
        if by not in ("loss", "acc"):
            raise ValueError(f"by must be 'loss' or 'acc', got {by!r}")
        self.epochs, self.by = epochs, by
        self.state = {"epoch": 0, "lr": lr, "best_loss": best_loss, "best_acc": best_acc,
                      "best_epoch": 0, "stop": False}

    lr = property(lambda self: self.state["lr"])
    epoch = property(lambda self: self.state["epoch"])
    best_epoch = property(lambda self: self.state["best_epoch"])
    done = property(lambda self: self.state["epoch"] >= self.epochs)

    def update(self, epoch, valid_loss, valid_acc):
        """Take epoch ``epoch``'s validation figures; return whether it is the best so far."""
        if self.by == "acc":
            accepted = valid_acc > self.state["best_acc"]
        else:
            accepted = valid_loss < self.state["best_loss"]
        if accepted:
            self.state.update(best_loss=valid_loss, best_acc=valid_acc, best_epoch=epoch)
        self.state["epoch"] = epoch
        return accepted
