"""lhotse manifests in and out (lhotse's own validation, a byte-identical round trip, soft
targets on cuts) and Kaldi dense targets that kaldiio reads back."""

import filecmp
import os

import kaldiio
import numpy as np
import pytest

from asrkd.cli import main
from asrkd.softtargets import SoftTargetStore, save_soft_targets
from asrkd.errors import UserError
from asrkd.interop import export_lhotse, export_soft_targets, import_lhotse

TABLES = ("wav.scp", "text", "utt2spk", "spk2utt", "utt2dur")


@pytest.fixture(scope="module")
def soft(tiny_data, tmp_path_factory):
    """Soft targets (top-5 of 30 pdfs) for every utterance of tiny test, frame counts real."""
    from asrkd.data import DataDir

    rng = np.random.default_rng(0)
    frames = DataDir(tiny_data["test"]).utt2num_frames
    probs = {u: rng.dirichlet(np.full(30, 0.2), size=n) for u, n in frames.items()}
    out = str(tmp_path_factory.mktemp("soft"))
    save_soft_targets(out, probs, temperature=1.0, topk=5)
    return out


def test_lhotse_round_trip_is_byte_identical(tiny_data, tmp_path):
    from lhotse import CutSet, RecordingSet, SupervisionSet
    from lhotse.qa import validate, validate_recordings_and_supervisions

    man = str(tmp_path / "manifests")
    assert main(["export-lhotse", tiny_data["test"], man]) == 0
    recs = RecordingSet.from_file(os.path.join(man, "recordings.jsonl.gz"))
    sups = SupervisionSet.from_file(os.path.join(man, "supervisions.jsonl.gz"))
    cuts = CutSet.from_file(os.path.join(man, "cuts.jsonl.gz"))
    validate_recordings_and_supervisions(recs, sups)
    validate(cuts, read_data=True)  # loads every cut's audio
    back = str(tmp_path / "back")
    assert main(["import-lhotse", os.path.join(man, "cuts.jsonl.gz"), back]) == 0
    for t in TABLES:
        assert filecmp.cmp(os.path.join(tiny_data["test"], t), os.path.join(back, t),
                           shallow=False), t


def test_import_of_lhotse_style_cuts(tiny_data, tmp_path):
    """Cuts as a lhotse recipe writes them (ids without the speaker prefix, mixed-case text):
    ids get the speaker prefix, text is upper-cased; a partial cut is refused."""
    from lhotse import CutSet, Recording, SupervisionSegment
    from lhotse.cut import MonoCut

    from asrkd.data import DataDir, validate_data_dir

    d = DataDir(tiny_data["test"])
    utt, path = sorted(d.wav.items())[0]
    rec = Recording.from_file(path, recording_id="rec1")
    sup = SupervisionSegment(id="seg1", recording_id="rec1", start=0, duration=rec.duration,
                             text="Hello  there", speaker="spkA")
    cut = MonoCut(id="c1", start=0, duration=rec.duration, channel=0, recording=rec,
                  supervisions=[sup])
    CutSet.from_cuts([cut]).to_file(str(tmp_path / "c.jsonl.gz"))
    import_lhotse(str(tmp_path / "c.jsonl.gz"), str(tmp_path / "dd"))
    dd = validate_data_dir(str(tmp_path / "dd"))
    assert dd.text == {"spkA-seg1": "HELLO THERE"} and dd.utt2spk == {"spkA-seg1": "spkA"}
    CutSet.from_cuts([cut.truncate(duration=rec.duration / 2)]).to_file(
        str(tmp_path / "p.jsonl.gz"))
    with pytest.raises(UserError, match="covers"):
        import_lhotse(str(tmp_path / "p.jsonl.gz"), str(tmp_path / "dp"))


def _raw_row_sums(store, utt):
    ids, probs = store[utt]
    return probs.astype(np.float64).sum(axis=1) + store.rest(utt)


def test_soft_targets_on_cuts(tiny_data, soft, tmp_path):
    """The cuts' soft targets keep the rest mass (a last column: rows sum to one), and their
    frame count is asrkd's, exactly 2 below lhotse's compute_num_frames for the duration."""
    from lhotse import CutSet
    from lhotse.qa import validate
    from lhotse.utils import compute_num_frames

    from asrkd.data import DataDir
    from asrkd.featconf import FbankConfig, num_frames

    cuts = export_lhotse(tiny_data["test"], str(tmp_path / "m"), soft_dir=soft)
    loaded = CutSet.from_file(str(tmp_path / "m" / "cuts.jsonl.gz"))
    # (read_data=True compares a list with a tuple for temporal arrays in lhotse 1.33: the
    # arrays are read and compared below instead)
    validate(loaded)
    store = SoftTargetStore(soft)
    assert sorted(loaded.ids) == sorted(store) == sorted(cuts.ids)
    utt2num_frames = DataDir(tiny_data["test"]).utt2num_frames
    raw_off = 0.0
    for cut in loaded:
        ids, probs = store[cut.id]
        got_ids, got = cut.load_custom("soft_target_ids"), cut.load_custom("soft_target_probs")
        assert np.array_equal(got_ids, ids)
        assert got.shape == (len(ids), ids.shape[1] + 1) and got.dtype == np.float32
        assert np.abs(got.astype(np.float64).sum(axis=1) - 1).max() < 1e-5
        np.testing.assert_allclose(got[:, :-1], probs, rtol=1e-2)  # float16 rows renormalised
        np.testing.assert_allclose(got[:, -1], store.rest(cut.id), rtol=1e-2, atol=1e-6)
        raw_off = max(raw_off, np.abs(_raw_row_sums(store, cut.id) - 1).max())
        # frame counts: the manifest's shape is what asrkd computed (Kaldi snip-edges) ...
        n = cut.recording.num_samples
        t = cut.custom["soft_target_probs"].shape[0]
        assert t == len(ids) == utt2num_frames[cut.id] == num_frames(n, FbankConfig())
        # ... which is lhotse's count for the same duration and shift, less 2
        assert compute_num_frames(cut.duration, 0.01, cut.sampling_rate) == t + 2
    assert raw_off > 1e-5  # the stored float16 rows alone would not sum to one


def test_kaldi_dense_targets(soft, tmp_path):
    out = str(tmp_path / "dense")
    assert main(["export-soft-targets", soft, out]) == 0
    store = SoftTargetStore(soft)
    mats = dict(kaldiio.load_scp(os.path.join(out, "targets.scp")))
    assert sorted(mats) == sorted(store)
    assert open(os.path.join(out, "num_targets")).read() == "30\n"
    for utt, (ids, probs) in store.items():
        m = mats[utt]
        assert m.dtype == np.float32 and m.shape == (len(ids), 30)
        assert np.abs(m.astype(np.float64).sum(axis=1) - 1).max() < 1e-5
        np.testing.assert_allclose(np.take_along_axis(m, ids, axis=1), probs, rtol=1e-2)
        # the rest mass spread evenly over the other 30 - k pdfs
        outside = np.ones_like(m, dtype=bool)
        np.put_along_axis(outside, ids, False, axis=1)
        k = ids.shape[1]
        spread = m[outside].reshape(len(ids), 30 - k)
        assert np.array_equal(spread, np.repeat(spread[:, :1], 30 - k, axis=1))
        np.testing.assert_allclose(spread[:, 0] * (30 - k), store.rest(utt), rtol=1e-2,
                                   atol=1e-6)
    # Kaldi's binary matrix header: the archive is "<utt> \0BFM "
    with open(os.path.join(out, "targets.ark"), "rb") as f:
        head = f.read(64)
    assert b"\0BFM " in head
    assert export_soft_targets(soft, str(tmp_path / "again")) == sum(len(v[0]) for v in store.values())


def test_import_of_cuts_whose_duration_disagrees_with_the_audio(tiny_data, tmp_path):
    """A manifest whose recording duration is not its file's (edited, or the file replaced)
    was imported as it stood: now refused, naming the cut and both durations."""
    from lhotse import CutSet, Recording, SupervisionSegment
    from lhotse.cut import MonoCut

    from asrkd.data import DataDir

    utt, path = sorted(DataDir(tiny_data["test"]).wav.items())[0]
    real = Recording.from_file(path, recording_id="rec1")
    rec = Recording(id="rec1", sources=real.sources, sampling_rate=real.sampling_rate,
                    num_samples=real.num_samples * 2, duration=real.duration * 2)
    sup = SupervisionSegment(id="seg1", recording_id="rec1", start=0, duration=rec.duration,
                             text="hello", speaker="spkA")
    cut = MonoCut(id="c1", start=0, duration=rec.duration, channel=0, recording=rec,
                  supervisions=[sup])
    CutSet.from_cuts([cut]).to_file(str(tmp_path / "c.jsonl.gz"))
    with pytest.raises(UserError, match=rf"cut c1: the manifest gives {rec.duration:g} s but "
                                        rf".* holds {real.duration:g} s of audio"):
        import_lhotse(str(tmp_path / "c.jsonl.gz"), str(tmp_path / "dd"))
    assert not os.path.exists(tmp_path / "dd" / "wav.scp")


def test_fbank_is_lhotses_plus_int16_scale(tiny_data):
    """asrkd's fbank = lhotse's Fbank with the same options + 2 ln(32768) in every bin whose
    energy is above lhotse's floor (float32 eps, applied on its [-1, 1] scale)."""
    import soundfile
    from lhotse import Fbank, FbankConfig

    from asrkd.data import DataDir

    d = DataDir(tiny_data["test"])
    utt, path = sorted(d.wav.items())[0]
    x, sr = soundfile.read(path, dtype="float32")
    ours = dict(kaldiio.load_scp(os.path.join(tiny_data["test"], "feats.scp")))[utt]
    theirs = Fbank(FbankConfig(num_filters=40, snip_edges=True, dither=0.0,
                               high_freq=0.0)).extract(x, sr)
    assert ours.shape == theirs.shape
    above = theirs > np.log(np.finfo(np.float32).eps) + 0.01  # clean synthetic speech has
    assert above.mean() > 0.8                                  # near-silent bins (7.6% here)
    np.testing.assert_allclose((ours - theirs)[above], 2 * np.log(32768), atol=1e-3)
    assert (ours - theirs)[~above].max() < 2 * np.log(32768)  # lhotse floored: less
