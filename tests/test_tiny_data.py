"""The shared tiny corpus fixture is a complete, valid set of data dirs."""


def test_tiny_data_fixture_is_complete(tiny_data):
    from asrkd.data import validate_data_dir

    for s in ("train", "dev", "test", "train_mfcc"):
        validate_data_dir(tiny_data[s], need=("feats.scp", "cmvn.scp", "text"))
