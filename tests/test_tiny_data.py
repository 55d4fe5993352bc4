"""The shared tiny corpus fixture is a complete, valid set of data dirs."""


def test_tiny_data_fixture_is_complete(tiny_data):
    from asrkd.data import validate_data_dir

    for s in ("train", "dev", "test", "train_mfcc"):
        validate_data_dir(tiny_data[s], need=("feats.scp", "cmvn.scp", "text"))


def test_subset_by_speaker_keeps_features_and_cmvn(tiny_data, tmp_path):
    """A speaker split of a featurized dir is usable at once: same features, same CMVN."""
    import numpy as np

    from asrkd.data import subset_data_dir, validate_data_dir
    from asrkd.features import FeatureReader

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    sa, sb = subset_data_dir(tiny_data["train"], a, b, num_speakers=2)
    full = FeatureReader(tiny_data["train"], cmvn="meanvar")
    for sub, spks in ((a, sa), (b, sb)):
        d = validate_data_dir(sub, need=("feats.scp", "cmvn.scp", "utt2num_frames"))
        assert sorted(d.table("cmvn.scp")) == spks
        part = FeatureReader(sub, cmvn="meanvar")
        utt = d.utts[0]
        np.testing.assert_array_equal(part[utt], full[utt])
