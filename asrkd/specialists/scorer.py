"""A generalist + specialists dir as one MODEL for ``asrkd decode`` and frame accuracy.

``SpecialistScorer`` runs the generalist on every frame, the specialists its top-n pdfs make
active, and the KL combination (asrkd.specialists.combine); the decoder divides the combined
posteriors by the generalist's priors. The dir (written by asrkd.specialists.train) holds
``specialists.json`` (sets, corrections, inference settings), ``generalist.pt`` and
``spec{m}/final.pt``.
"""

import json
import os

import numpy as np
import torch

from asrkd.features import FeatureReader
from asrkd.ensemble import Scorer
from asrkd.models import load_model
from asrkd.specialists.combine import (active_specialists, combine, corrected_logits,
                                       membership, specialist_logits)


def is_specialists_dir(path):
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "specialists.json"))


class SpecialistScorer(Scorer):
    """utt -> (T, P) hybrid scores of a generalist + specialists dir: log q - log prior, q the
    KL combination; ``log_posteriors(utt)`` gives log q (frame accuracy), ``frame_stats(feats)``
    also the generalist's posteriors and the active specialists."""

    def __init__(self, spec_dir, feature_reader, device="cpu"):
        with open(os.path.join(spec_dir, "specialists.json")) as f:
            self.manifest = json.load(f)
        self.generalist = load_model(os.path.join(spec_dir, self.manifest["generalist"]))
        super().__init__([self.generalist], feature_reader)
        self.device = device
        self.specialists = [load_model(os.path.join(spec_dir, s["dir"], "final.pt")).to(device)
                            for s in self.manifest["specialists"]]
        self.generalist.to(device)
        self.sets = [s["set"] for s in self.manifest["specialists"]]
        self.corrections = [s["log_correction"] for s in self.manifest["specialists"]]
        self.member = membership(self.sets, self.generalist.config.num_pdfs, device)
        self.top_n = self.manifest["top_n"]
        self.steps, self.lr = self.manifest["gd_steps"], self.manifest["gd_lr"]
        self.method = self.manifest.get("combine_method", "gd")
        self.pooled = self.manifest["config"].get("pooled_dustbin", False)

    @torch.no_grad()
    def frame_stats(self, feats, chunk=2048):
        """feats (T, D) -> {"log_q" (T, P), "p_g" (T, P), "active" (T, K) bool}."""
        feats = torch.as_tensor(np.ascontiguousarray(feats), dtype=torch.float32,
                                device=self.device)
        windows = self.generalist.splice(feats)  # (T, C, D): every model shares the context
        out = {"log_q": [], "p_g": [], "active": []}
        for s in range(0, windows.shape[0], chunk):
            x = windows[s:s + chunk]
            p_g = torch.softmax(self.generalist(x), 1)
            active = active_specialists(p_g, self.member, self.top_n)
            probs = []
            for m, model in enumerate(self.specialists):
                idx = active[:, m].nonzero().squeeze(1)
                if len(idx) == 0:
                    probs.append(None)
                    continue
                p = p_g.new_zeros(len(x), len(self.sets[m]) + 1)
                z = specialist_logits(model, x[idx], self.sets[m], self.pooled)
                p[idx] = torch.softmax(corrected_logits(z, self.corrections[m]), 1)
                probs.append(p)
            out["log_q"].append(combine(p_g, probs, self.sets, active, self.steps, self.lr,
                                          method=self.method))
            out["p_g"].append(p_g)
            out["active"].append(active)
        return {k: torch.cat(v).cpu() if v else torch.zeros(0) for k, v in out.items()}

    def log_posteriors(self, utt):
        return self.frame_stats(self.reader[utt])["log_q"].numpy()


def make_scorer(spec_dir, data_dir, feats=None, device="cpu"):
    """SpecialistScorer of a specialists dir on data_dir's fbank features."""
    if feats is None:
        with open(os.path.join(spec_dir, "specialists.json")) as f:
            gname = json.load(f)["generalist"]
        cmvn = load_model(os.path.join(spec_dir, gname)).config.cmvn
        feats = FeatureReader(data_dir, cmvn=cmvn)
    return SpecialistScorer(spec_dir, feats, device)
