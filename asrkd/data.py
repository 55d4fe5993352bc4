"""Kaldi data directories.

A data dir holds one utterance per line in each of: ``wav.scp`` (utt -> audio file path),
``text`` (utt -> upper-case words), ``utt2spk``, ``spk2utt``, ``utt2dur`` (seconds), and after
the feature stage ``feats.scp``, ``utt2num_frames`` and ``cmvn.scp`` (per speaker). All files
are sorted by key (byte order, as Kaldi's ``LC_ALL=C sort``).

Deviation from Kaldi: ``wav.scp`` holds plain file paths (FLAC or WAV, read with soundfile),
never shell pipelines.
"""

import os
import shutil

from asrkd.errors import DataDirError
from asrkd.table import read_table, write_table

# Files that describe utterances (copied by copy_data_dir); features are per-directory.
META_FILES = ("wav.scp", "text", "utt2spk", "spk2utt", "utt2dur")


class DataDir:
    """Read access to a Kaldi data dir. Tables are loaded on first use."""

    def __init__(self, path):
        self.path = os.fspath(path)
        if not os.path.isdir(self.path):
            raise DataDirError(f"{self.path}: not a directory")
        self._cache = {}

    def file(self, name):
        return os.path.join(self.path, name)

    def has(self, name):
        return os.path.isfile(self.file(name))

    def table(self, name, multi=False):
        key = (name, multi)
        if key not in self._cache:
            if not self.has(name):
                raise DataDirError(f"{self.path}: missing {name}")
            try:
                self._cache[key] = read_table(self.file(name), multi=multi)
            except ValueError as e:
                raise DataDirError(str(e)) from None
        return self._cache[key]

    @property
    def utts(self):
        """Utterance ids in sorted order (from utt2spk)."""
        return list(self.table("utt2spk"))

    @property
    def text(self):
        return self.table("text")

    @property
    def utt2spk(self):
        return self.table("utt2spk")

    @property
    def spk2utt(self):
        return self.table("spk2utt", multi=True)

    @property
    def wav(self):
        return self.table("wav.scp")

    @property
    def utt2dur(self):
        return {k: float(v) for k, v in self.table("utt2dur").items()}

    @property
    def utt2num_frames(self):
        return {k: int(v) for k, v in self.table("utt2num_frames").items()}

    def __len__(self):
        return len(self.utt2spk)

    def __repr__(self):
        return f"DataDir({self.path!r})"


def spk2utt_from_utt2spk(utt2spk):
    spk2utt = {}
    for utt, spk in sorted(utt2spk.items()):
        spk2utt.setdefault(spk, []).append(utt)
    return spk2utt


def write_data_dir(path, wav, text, utt2spk, utt2dur=None):
    """Write a data dir's metadata tables (sorted; spk2utt derived from utt2spk)."""
    os.makedirs(path, exist_ok=True)
    write_table(os.path.join(path, "wav.scp"), wav)
    write_table(os.path.join(path, "text"), text)
    write_table(os.path.join(path, "utt2spk"), utt2spk)
    write_table(os.path.join(path, "spk2utt"), spk2utt_from_utt2spk(utt2spk))
    if utt2dur is not None:
        write_table(os.path.join(path, "utt2dur"), {k: f"{v:.3f}" for k, v in utt2dur.items()})


def copy_data_dir(src, dst):
    """Copy a data dir's utterance metadata (not features or CMVN) to ``dst``."""
    os.makedirs(dst, exist_ok=True)
    for name in META_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
