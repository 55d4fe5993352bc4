"""Exchange with other toolkits: lhotse manifests (icefall) and Kaldi nnet3 dense targets.

lhotse (``export_lhotse`` / ``import_lhotse``): one utterance of a data dir is one recording
(id = utterance id, the wav.scp file), one supervision (id = utterance id, the whole recording,
channel 0, ``text``, ``speaker``) and one cut (id = utterance id). Soft targets travel as two
temporal arrays attached to each cut by utterance id, as icefall attaches its distillation
codebook indexes: ``soft_target_ids`` (T, K) int32 and ``soft_target_probs`` (T, K + 1)
float32, stored as .npy files (lhotse's NumpyFilesWriter), frame shift 10 ms. The last column of
``soft_target_probs`` is the *rest*: the mass of the pdfs outside the K ids (it has no id), so
each row sums to one; ``soft_targets`` renormalises the stored row (float16 probabilities) so
that it does to float32 rounding.

Frame counts: the arrays hold asrkd's frames, T = 1 + (N - 400) // 160 for N samples at 16 kHz
(Kaldi's snip_edges framing, frame i centred at 12.5 + 10 i ms; ``featconf.num_frames``), and
their ``shape`` says so: they are neither padded nor trimmed. lhotse's own count for the same
duration and 10 ms shift (``lhotse.utils.compute_num_frames``, round(N / 160), what its Fbank
with snip_edges=False gives) is exactly 2 frames more (N >= 400); lhotse's validator only warns
about the difference (silenced here, ``_quiet_frame_count_warnings``). A consumer that pairs
the targets with lhotse-computed features has to align the two (asrkd frame i, centred at
12.5 + 10 i ms, is nearest lhotse's frame i + 1, centred at 15 + 10 i ms).

Feature scale: asrkd's fbank (Kaldi's, on waveforms in int16 units) is lhotse's ``Fbank`` (on
waveforms in [-1, 1]) plus a constant 2 ln(32768) = 20.794 in every log-mel bin, for the same
options: power spectra scale by 32768 ** 2. (lhotse's defaults are not asrkd's: it needs
``FbankConfig(num_filters=40, snip_edges=True, dither=0, high_freq=0)``; with those, on a demo
test utterance, the difference was 20.794416 +- 2e-6.) The exception is a bin whose energy is
under lhotse's floor (float32 eps, log -15.9, on its [-1, 1] scale; near-digital silence, 7.6%
of a clean synthetic test utterance's bins): lhotse reads -15.9 there and the difference is
smaller. Models trained on one do not take the other's features without that offset (mean
CMVN removes it; asrkd's default meanvar does).

Where we deviate from lhotse recipes: a cut must cover a whole single-file recording, since an
asrkd data dir has no segments file; other cuts are refused with the reason.

Kaldi (``export_soft_targets``): per utterance a dense float32 (T, num_pdfs) matrix (the stored
top-k probabilities, the rest mass spread evenly over the other pdfs; rows sum to one) in an
ark + scp, what nnet3's ``--use-dense-targets true --targets-scp`` reads (e.g.
steps/nnet3/train_raw_dnn.py).
"""

import logging
import os
import sys

import numpy as np
import soundfile
from tqdm import tqdm

from asrkd.data import validate_data_dir, write_data_dir
from asrkd.softtargets import SoftTargetStore
from asrkd.errors import UserError, reading
from asrkd.table import ArkWriter

MANIFESTS = ("recordings.jsonl.gz", "supervisions.jsonl.gz", "cuts.jsonl.gz")
SOFT_FIELDS = ("soft_target_ids", "soft_target_probs")
FRAME_SHIFT = 0.01


def soft_targets(store, utt):
    """``store[utt]`` as exported: (ids (T, K) int64, probs (T, K) float32, rest (T,) float32),
    jointly rescaled so that ``probs.sum(1) + rest`` is one to float32 rounding (the store keeps
    float16 probabilities, whose row sums are within 1e-2 of one)."""
    ids, probs = store[utt]
    rest = store.rest(utt).astype(np.float64)
    total = probs.astype(np.float64).sum(axis=1) + rest  # (T,)
    return (ids, (probs / total[:, None]).astype(np.float32),
            (rest / total).astype(np.float32))


def export_soft_targets(soft_dir, out_dir):
    """`asrkd export-soft-targets`: OUT_DIR/targets.ark + targets.scp (absolute paths) of dense
    (T, num_pdfs) float32 soft targets, and OUT_DIR/num_targets. Returns the frame count.

    The store keeps the top k and the mass of the other pdfs as one number; a dense target has
    to put that mass somewhere, so it is spread evenly over the other pdfs (each row sums to
    one, as nnet3's cross-entropy on dense targets expects; ``soft_targets``)."""
    store = SoftTargetStore(soft_dir)
    out_dir = os.path.abspath(os.fspath(out_dir))
    os.makedirs(out_dir, exist_ok=True)
    num_pdfs, frames = int(store.num_pdfs), 0
    with ArkWriter(os.path.join(out_dir, "targets.ark"),
                   os.path.join(out_dir, "targets.scp")) as w:
        for utt in tqdm(sorted(store), desc="export-soft-targets", unit="utt", disable=None):
            ids, probs, rest = soft_targets(store, utt)
            others = max(num_pdfs - ids.shape[1], 1)
            dense = np.repeat((rest / others)[:, None], num_pdfs, axis=1)  # (T, P) float32
            np.put_along_axis(dense, ids, probs, axis=1)  # (T, P)
            w[utt] = dense
            frames += ids.shape[0]
    with open(os.path.join(out_dir, "num_targets"), "w") as f:
        f.write(f"{num_pdfs}\n")
    print(f"export-soft-targets: {len(store)} utterances, {frames} frames x {num_pdfs} targets "
          f"-> {out_dir}/targets.scp", file=sys.stderr)
    return frames


class _quiet_frame_count_warnings:
    """Drop lhotse's per-cut warning that T * 10 ms falls short of the cut's duration: with
    Kaldi's framing it always does (by 15 to 25 ms), and it would print twice per cut."""

    def filter(self, record):
        return "possibly mismatched duration" not in record.getMessage()

    def __enter__(self):
        logging.getLogger().addFilter(self)

    def __exit__(self, *exc):
        logging.getLogger().removeFilter(self)


def export_lhotse(data_dir, out_dir, soft_dir=None):
    """`asrkd export-lhotse`: OUT_DIR/{recordings,supervisions,cuts}.jsonl.gz for DATA_DIR, checked
    with lhotse's own validators; with ``soft_dir`` the cuts carry the soft targets (arrays under
    OUT_DIR/soft_targets). Returns the CutSet."""
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse.features.io import NumpyFilesWriter
    from lhotse.qa import validate, validate_recordings_and_supervisions

    d = validate_data_dir(data_dir, need=("wav.scp", "utt2spk", "spk2utt"))
    text = d.text if d.has("text") else {}
    recs, sups = [], []
    for utt, path in d.wav.items():
        rec = Recording.from_file(path, recording_id=utt)
        recs.append(rec)
        sups.append(SupervisionSegment(id=utt, recording_id=utt, start=0.0,
                                       duration=rec.duration, channel=0, text=text.get(utt),
                                       speaker=d.utt2spk[utt]))
    recordings, supervisions = RecordingSet.from_recordings(recs), SupervisionSet.from_segments(sups)
    validate_recordings_and_supervisions(recordings, supervisions)
    cuts = CutSet.from_cuts(
        c.with_id(c.supervisions[0].id)
        for c in CutSet.from_manifests(recordings=recordings, supervisions=supervisions))
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    if soft_dir is not None:
        store = SoftTargetStore(soft_dir)
        missing = [u for u in cuts.ids if u not in store]
        if missing:
            raise UserError(f"{soft_dir}: no soft targets for {len(missing)} utterance(s) of "
                            f"{data_dir}, e.g. {missing[0]}")
        attached = []
        with NumpyFilesWriter(os.path.join(out_dir, "soft_targets")) as writer:
            for cut in cuts:
                ids, probs, rest = soft_targets(store, cut.id)
                probs = np.concatenate([probs, rest[:, None]], axis=1)  # (T, K + 1): rest last
                cut = cut.with_custom(SOFT_FIELDS[0], writer.store_array(
                    f"{cut.id}_ids", ids.astype(np.int32), frame_shift=FRAME_SHIFT,
                    temporal_dim=0))
                cut = cut.with_custom(SOFT_FIELDS[1], writer.store_array(
                    f"{cut.id}_probs", probs.astype(np.float32), frame_shift=FRAME_SHIFT,
                    temporal_dim=0))
                attached.append(cut)
        cuts = CutSet.from_cuts(attached)
    with _quiet_frame_count_warnings():
        validate(cuts)
    for name, manifest in zip(MANIFESTS, (recordings, supervisions, cuts)):
        manifest.to_file(os.path.join(out_dir, name))
    print(f"export-lhotse: {len(cuts)} cuts -> {out_dir}" +
          (f" (with soft targets of {soft_dir})" if soft_dir else ""), file=sys.stderr)
    return cuts


def _check_audio_duration(cut_id, path, duration):
    """UserError unless the audio file holds the ``duration`` (s) the manifest gives for it."""
    try:
        info = soundfile.info(path)
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types
        raise UserError(f"cut {cut_id}: {path}: cannot read audio "
                        f"({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    actual = info.frames / info.samplerate
    if abs(actual - duration) > 0.01:
        raise UserError(f"cut {cut_id}: the manifest gives {duration:g} s but {path} holds "
                        f"{actual:g} s of audio: the manifest does not describe this file")


def import_lhotse(cuts_path, data_dir):
    """`asrkd import-lhotse`: a lhotse cuts manifest (jsonl or jsonl.gz) -> a Kaldi data dir
    (wav.scp, text if the supervisions have text, utt2spk, spk2utt, utt2dur).

    Utterance id: the supervision's id, prefixed with its speaker and '-' unless it starts with
    it already (asrkd keeps speakers contiguous in sorted order). Text is upper-cased."""
    from lhotse import CutSet
    from lhotse.cut import MonoCut

    if not os.path.isfile(cuts_path):
        raise UserError(f"{cuts_path}: no such cuts manifest")
    try:
        cuts = CutSet.from_file(cuts_path)
    except Exception as e:  # lhotse raises many kinds on a malformed manifest
        raise UserError(f"{cuts_path}: not a lhotse cuts manifest ({e})") from None
    wav, text, utt2spk, utt2dur = {}, {}, {}, {}
    # a manifest whose fields have the wrong types fails in lhotse or below: one line
    with reading(cuts_path, "not a lhotse cuts manifest", (Exception,)):
        for cut in cuts:
            if not isinstance(cut, MonoCut) or not cut.has_recording:
                raise UserError(f"cut {cut.id}: only single-recording cuts with audio can be "
                                "imported")
            rec = cut.recording
            if len(rec.sources) != 1 or rec.sources[0].type != "file":
                raise UserError(f"cut {cut.id}: recording {rec.id} is not one audio file "
                                "(asrkd's wav.scp holds plain paths)")
            if cut.start > 1e-3 or abs(cut.duration - rec.duration) > 1e-3:
                raise UserError(f"cut {cut.id} covers {cut.start:.2f}-{cut.end:.2f} s of a "
                                f"{rec.duration:.2f} s recording; a data dir holds whole files "
                                "(cut the audio into files first)")
            if len(cut.supervisions) > 1:
                raise UserError(f"cut {cut.id}: {len(cut.supervisions)} supervisions; one per "
                                "utterance expected (trim_to_supervisions first)")
            sup = cut.supervisions[0] if cut.supervisions else None
            spk = (sup.speaker if sup is not None and sup.speaker else None) or cut.id
            utt = sup.id if sup is not None else cut.id
            if not utt.startswith(spk):
                utt = f"{spk}-{utt}"
            if utt in wav:
                raise UserError(f"{cuts_path}: utterance {utt} appears twice")
            wav[utt] = os.path.abspath(rec.sources[0].source)
            _check_audio_duration(cut.id, wav[utt], rec.duration)
            utt2spk[utt] = spk
            utt2dur[utt] = rec.duration
            if sup is not None and sup.text is not None:
                text[utt] = " ".join(sup.text.upper().split())
    if not wav:
        raise UserError(f"{cuts_path}: no cuts")
    if text and len(text) != len(wav):
        raise UserError(f"{cuts_path}: {len(wav) - len(text)} of {len(wav)} cuts have no text")
    os.makedirs(data_dir, exist_ok=True)
    write_data_dir(data_dir, wav, text, utt2spk, utt2dur)
    print(f"import-lhotse: {len(wav)} utterances, {len(set(utt2spk.values()))} speakers -> "
          f"{data_dir}", file=sys.stderr)
    return len(wav)
