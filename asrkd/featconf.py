"""Feature configs: the options of Kaldi's ``compute-fbank-feats`` / ``compute-mfcc-feats``.

``FbankConfig`` and ``MfccConfig`` are dataclasses read from a YAML file (``conf/fbank.yaml``:
``type: fbank|mfcc`` plus non-default values) and turned into plain dicts (``to_dict``, with
``type`` first) for checkpoints, ONNX metadata and the job arguments of compute-feats. A data
dir's features record their config in ``DATA_DIR/feat_config.yaml`` (written by compute-feats,
read by ``feature_config``): what a model trained on them, and every later consumer, compare
(asrkd.identity). Computing the features from a config is asrkd.features.

Where we deviate from Kaldi:
- ``dither`` defaults to 0.0 (Kaldi: 1.0) so features are reproducible bit for bit across runs
  and backends; set ``dither: 1.0`` in the YAML to get Kaldi's behaviour.
- ``FbankConfig.num_mel_bins`` defaults to 40 (Kaldi: 23), the paper's setting.
"""

import dataclasses
import os

import yaml

from asrkd.errors import UserError, reading
from asrkd.table import atomic_path

FEATURE_CONFIG = "feat_config.yaml"


@dataclasses.dataclass
class _FrameOptions:
    """Framing, window and energy options that fbank and MFCC share (Kaldi's
    FrameExtractionOptions and MelBanksOptions' frequency range)."""

    sample_rate: int = 16000
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    dither: float = 0.0
    preemphasis: float = 0.97
    remove_dc_offset: bool = True
    window_type: str = "povey"
    round_to_power_of_two: bool = True
    snip_edges: bool = True
    low_freq: float = 20.0
    high_freq: float = 0.0
    energy_floor: float = 0.0
    raw_energy: bool = True

    def to_dict(self):
        return {"type": self.kind, **dataclasses.asdict(self)}


@dataclasses.dataclass
class FbankConfig(_FrameOptions):
    """Kaldi ``compute-fbank-feats`` options (Kaldi's defaults except dither and num_mel_bins)."""

    num_mel_bins: int = 40
    use_energy: bool = False
    use_log_fbank: bool = True
    use_power: bool = True

    kind = "fbank"

    @property
    def dim(self):
        return self.num_mel_bins + (1 if self.use_energy else 0)


@dataclasses.dataclass
class MfccConfig(_FrameOptions):
    """Kaldi ``compute-mfcc-feats`` options (Kaldi's defaults except dither)."""

    num_mel_bins: int = 23
    num_ceps: int = 13
    cepstral_lifter: float = 22.0
    use_energy: bool = True

    kind = "mfcc"

    @property
    def dim(self):
        return self.num_ceps


CONFIGS = {"fbank": FbankConfig, "mfcc": MfccConfig}


def config_from_dict(d):
    d = dict(d or {})
    kind = d.pop("type", "fbank")
    if kind not in CONFIGS:
        raise UserError(f"feature type {kind!r} unknown; use one of {sorted(CONFIGS)}")
    cls = CONFIGS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise UserError(f"unknown {kind} option(s) {unknown}; known: {sorted(names)}")
    return cls(**d)


def load_feature_config(yaml_path):
    """FbankConfig or MfccConfig from a YAML file (``type: fbank|mfcc`` plus non-default values)."""
    try:
        with open(yaml_path, encoding="utf-8") as f, \
                reading(yaml_path, "not valid YAML", (yaml.YAMLError,)):
            d = yaml.safe_load(f)
    except OSError as e:
        raise UserError(f"{yaml_path}: {e.strerror}") from None
    if d is not None and not isinstance(d, dict):
        raise UserError(f"{yaml_path}: expected a mapping of option: value")
    return config_from_dict(d)


def num_frames(num_samples, config):
    """Kaldi's frame count (feature-window.cc NumFrames)."""
    shift = int(config.sample_rate * config.frame_shift_ms / 1000)
    length = int(config.sample_rate * config.frame_length_ms / 1000)
    if config.snip_edges:
        return 0 if num_samples < length else 1 + (num_samples - length) // shift
    return (num_samples + shift // 2) // shift


# --------------------------------------------------------------------------------------------
# A data dir's feat_config.yaml

def write_feature_config(data_dir, config):
    """Write ``data_dir/feat_config.yaml`` (a FbankConfig / MfccConfig) atomically."""
    with atomic_path(os.path.join(data_dir, FEATURE_CONFIG)) as tmp, open(tmp, "w") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)


def feature_config(data_dir):
    """The feature config dict of a data dir's features, or None if it records none."""
    path = os.path.join(data_dir, FEATURE_CONFIG)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            d = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: unreadable feature config ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: not a feature config (expected option: value lines)")
    try:
        feature_dim(d)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return d


def feature_dim(config_dict):
    """Dimension of the features a config dict describes."""
    return config_from_dict(config_dict).dim
