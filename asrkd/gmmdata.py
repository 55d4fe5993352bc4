"""What a GMM-HMM trains on and aligns: features and transcripts by utterance (TrainData).

A data dir is read as MFCC + deltas + per-speaker mean CMVN (asrkd.features); tests and library
callers may pass the two mappings directly.
"""

import os
import sys

from asrkd.data import DataDir
from asrkd.features import FeatureReader
from asrkd.lang import Lang


class TrainData:
    """Features (utt -> (T, D) float32) and transcripts (utt -> word string) of a training set.

    ``from_dir`` reads MFCC + deltas(2) + per-speaker mean CMVN through asrkd.features.
    """

    def __init__(self, feats, text, path=None):
        self.feats, self.text, self.path = feats, text, path

    @classmethod
    def from_dir(cls, data_dir, deltas=2, cmvn="mean"):
        d = DataDir(data_dir)
        return cls(FeatureReader(data_dir, cmvn=cmvn, deltas=deltas), d.text, data_dir)

    @property
    def utts(self):
        return sorted(u for u in self.text if u in self.feats)

    def report_unusable(self, what):
        """Print (never silently drop) utterances lacking features or a transcript."""
        no_feats = sorted(u for u in self.text if u not in self.feats)
        no_text = sorted(u for u in self.feats if u not in self.text)
        for n, why in ((no_feats, "features"), (no_text, "a transcript")):
            if n:
                print(f"{what}: {len(n)} utterances have no {why} and are skipped (first: {n[0]})",
                      file=sys.stderr)


def as_data(data):
    """A TrainData as it is, a data dir (path) read with TrainData.from_dir."""
    return data if isinstance(data, TrainData) else TrainData.from_dir(data)


def as_lang(lang):
    """A lang dir (path) as a Lang; a Lang-like object as it is."""
    if isinstance(lang, (str, os.PathLike)):
        return Lang(lang)
    return lang
