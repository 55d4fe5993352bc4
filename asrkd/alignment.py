"""The alignment dir: one reader for what ``asrkd align`` writes (Kaldi's ``exp/tri_ali``).

Layout: ``ali.scp`` (utt -> int32 transition-ids), ``pdf.scp`` (utt -> pdf ids, the DNN's hard
targets), ``pdf_counts`` (frames per pdf over the aligned utterances: the DNN's priors),
``num_pdfs``, ``final.mdl`` + ``tree`` (the GMM that aligned, whose tree id names the pdfs) and
``failed``. Training, distillation, specialists and triphone training all read it through
``AlignmentDir``; ``asrkd.align`` writes it.
"""

import os

import numpy as np

from asrkd.errors import UserError
from asrkd.identity import tree_id
from asrkd.table import read_scp

ALI_FILES = ("pdf.scp", "pdf_counts", "num_pdfs")


class AlignmentDir:
    """An alignment dir, read lazily; a missing or inconsistent file is one UserError.

    ``pdf_scp``: utt -> (T,) pdf ids (a lazy kaldiio mapping); ``pdf_counts``: (P,) int64;
    ``num_pdfs``: P; ``tree_id``: the aligning model's tree id (None without final.mdl).
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self._pdf_scp = self._counts = None

    def __repr__(self):
        return f"AlignmentDir({self.path!r})"

    def _need(self, name, hint="is it an alignment dir?"):
        p = os.path.join(self.path, name)
        if not os.path.isfile(p):
            raise UserError(f"{self.path}: missing {name}; {hint}")
        return p

    def check(self):
        """UserError unless pdf.scp, pdf_counts and num_pdfs are there and agree; returns self."""
        for name in ALI_FILES:
            self._need(name)
        if len(self.pdf_counts) != self.num_pdfs:
            raise UserError(f"{self.path}: pdf_counts has {len(self.pdf_counts)} entries, "
                            f"num_pdfs {self.num_pdfs}")
        return self

    @property
    def has_num_pdfs(self):
        return os.path.isfile(os.path.join(self.path, "num_pdfs"))

    @property
    def num_pdfs(self):
        with open(self._need("num_pdfs")) as f:
            return int(f.read().split()[0])

    @property
    def pdf_counts(self):
        if self._counts is None:
            with open(self._need("pdf_counts")) as f:
                self._counts = np.array([int(x) for x in f.read().split()], dtype=np.int64)
        return self._counts

    @property
    def pdf_scp(self):
        if self._pdf_scp is None:
            self._pdf_scp = read_scp(self._need("pdf.scp"))
        return self._pdf_scp

    @property
    def tree_id(self):
        return tree_id(self.path)

    def transition_ids(self, utts=None):
        """utt -> int32 transition-ids from ali.scp (only those of ``utts`` that it holds)."""
        scp = read_scp(self._need("ali.scp", "run `asrkd align` first"))
        keys = scp.keys() if utts is None else [u for u in utts if u in scp]
        return {u: np.asarray(scp[u], dtype=np.int32) for u in keys}
