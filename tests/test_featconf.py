"""Feature configs: the YAML files, feat_config.yaml of a data dir, Kaldi's frame count."""

import os

import pytest

from asrkd.errors import UserError
from asrkd.featconf import (FEATURE_CONFIG, FbankConfig, MfccConfig, config_from_dict,
                            feature_config, feature_dim, load_feature_config, num_frames,
                            write_feature_config)

CONF = os.path.join(os.path.dirname(__file__), "..", "conf")


def test_recipe_configs():
    assert load_feature_config(os.path.join(CONF, "fbank.yaml")) == FbankConfig()
    assert load_feature_config(os.path.join(CONF, "mfcc.yaml")).use_energy is False
    assert FbankConfig().dim == 40 and FbankConfig(use_energy=True).dim == 41
    assert MfccConfig().dim == 13


def test_bad_config_is_user_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("type: fbank\nnum_mel_bin: 40\n")
    with pytest.raises(UserError, match="num_mel_bin"):
        load_feature_config(p)
    p.write_text("type: plp\n")
    with pytest.raises(UserError, match="plp"):
        load_feature_config(p)
    p.write_text("- a list\n")
    with pytest.raises(UserError, match="expected a mapping"):
        load_feature_config(p)
    with pytest.raises(UserError, match="no-such.yaml"):
        load_feature_config(tmp_path / "no-such.yaml")


def test_frame_count_formula():
    cfg = FbankConfig()
    for n, expect in ((399, 0), (400, 1), (559, 1), (560, 2), (16000, 98), (16001, 98)):
        assert num_frames(n, cfg) == expect
    # snip_edges false: one frame per shift, rounded
    assert num_frames(16000, FbankConfig(snip_edges=False)) == 100
    assert num_frames(79, FbankConfig(snip_edges=False)) == 0


def test_data_dir_config_round_trip(tmp_path):
    assert feature_config(str(tmp_path)) is None
    write_feature_config(str(tmp_path), MfccConfig(use_energy=False))
    d = feature_config(str(tmp_path))
    assert list(d)[0] == "type" and d["type"] == "mfcc" and d["use_energy"] is False
    assert config_from_dict(d) == MfccConfig(use_energy=False)
    assert feature_dim(d) == 13 and feature_dim({"type": "fbank", "num_mel_bins": 30}) == 30
    (tmp_path / FEATURE_CONFIG).write_text("type: fbank\nbogus: 1\n")
    with pytest.raises(UserError, match=r"feat_config.yaml: unknown fbank option\(s\) \['bogus'\]"):
        feature_config(str(tmp_path))
    (tmp_path / FEATURE_CONFIG).write_text("- a list\n")
    with pytest.raises(UserError, match="not a feature config"):
        feature_config(str(tmp_path))
