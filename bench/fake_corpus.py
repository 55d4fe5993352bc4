"""A feature-level stand-in corpus for the scaling benchmarks: a Kaldi data dir of random fbank
features (feats.scp, cmvn.scp, utt2num_frames, ...) and an alignment dir of the right shape
(pdf.scp, pdf_counts, num_pdfs), of any size, written in seconds.

The features are noise and the alignment runs of random pdfs (what a forced alignment looks
like, not what it says): the benchmarks measure speed and memory, never accuracy, so neither
audio nor a GMM is needed for them.
"""

import os

import numpy as np

from asrkd.data import write_data_dir
from asrkd.features import compute_cmvn
from asrkd.table import ArkWriter, write_table

FRAMES_PER_HOUR = 360_000  # 10 ms frames


def make_fake_corpus(root, frames, num_pdfs=1000, dim=40, num_spk=20, utt_frames=800, seed=0):
    """Write ROOT/data and ROOT/ali with about ``frames`` frames; return (data_dir, ali_dir)."""
    rng = np.random.default_rng(seed)
    data, ali = os.path.join(root, "data"), os.path.join(root, "ali")
    os.makedirs(data, exist_ok=True)
    os.makedirs(ali, exist_ok=True)
    n_utts = max(num_spk, int(round(frames / utt_frames)))
    wav, text, utt2spk, nf = {}, {}, {}, {}
    counts = np.zeros(num_pdfs, dtype=np.int64)
    with ArkWriter(os.path.join(root, "feats.ark"), os.path.join(data, "feats.scp")) as fw, \
            ArkWriter(os.path.join(ali, "pdf.ark"), os.path.join(ali, "pdf.scp")) as aw:
        for i in range(n_utts):
            spk = f"{1000 + i * num_spk // n_utts}"  # speakers in blocks: ids stay sorted
            utt = f"{spk}-1-{i:06d}"
            t = int(rng.integers(utt_frames // 2, utt_frames * 3 // 2))
            fw[utt] = rng.normal(size=(t, dim)).astype(np.float32)
            runs = rng.integers(3, 12, size=t // 3 + 1)
            pdf = np.repeat(rng.integers(0, num_pdfs, size=len(runs)), runs)[:t]
            aw[utt] = pdf.astype(np.int32)
            counts += np.bincount(pdf, minlength=num_pdfs)
            wav[utt], text[utt], utt2spk[utt], nf[utt] = f"/dev/null/{utt}.flac", "A", spk, str(t)
    write_data_dir(data, wav, text, utt2spk)
    write_table(os.path.join(data, "utt2num_frames"), nf)
    compute_cmvn(data)
    with open(os.path.join(ali, "pdf_counts"), "w") as f:
        f.write(" ".join(map(str, counts)) + "\n")
    with open(os.path.join(ali, "num_pdfs"), "w") as f:
        f.write(f"{num_pdfs}\n")
    return data, ali
