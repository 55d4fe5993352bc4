"""A model's decoding setup: ``MODEL_DIR/decode.json``, so that a model carries how to decode it.

`asrkd decode` writes it when it chooses an acoustic scale on a dev grid for a model dir: the
beam, max-active and lattice beam it searched with, the scale it chose, the priors it divided
by and the graph dir it was tuned with. `asrkd transcribe` and asrkd.recognizer.Recognizer use
it by default (an explicit option wins), so they decode as the recipe did: the recipe's narrow
beams give its WER many times faster than decode's wide defaults.
"""

import json
import os
from dataclasses import asdict, dataclass, fields

from asrkd.errors import UserError
from asrkd.options import check_options
from asrkd.table import write_json

CONFIG_FILE = "decode.json"
# decode's own defaults (asrkd.decode.make_decoder): what a model without decode.json gets
DEFAULT_BEAM, DEFAULT_LATTICE_BEAM, DEFAULT_MAX_ACTIVE = 16.0, 8.0, 7000


@dataclass
class DecodeConfig:
    """How a model was decoded on its dev set.

    ``acwt``: the dev-chosen acoustic scale; ``priors``: "counts" or "posterior" (None: a GMM);
    ``graph_dir``: absolute path of the graph dir; ``tuned_on``: the dev decode dir (absolute).
    """

    acwt: float
    beam: float = DEFAULT_BEAM
    lattice_beam: float = DEFAULT_LATTICE_BEAM
    max_active: int = DEFAULT_MAX_ACTIVE
    priors: str | None = None
    graph_dir: str | None = None
    tuned_on: str | None = None

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d, where="decode config"):
        """A DecodeConfig from a dict (keys it does not know are ignored); UserError if a value
        is missing or out of range."""
        known = {f.name for f in fields(cls)}
        try:
            cfg = cls(**{k: v for k, v in d.items() if k in known})
            cfg.acwt, cfg.beam = float(cfg.acwt), float(cfg.beam)
            cfg.lattice_beam, cfg.max_active = float(cfg.lattice_beam), int(cfg.max_active)
        except (TypeError, ValueError) as e:
            raise UserError(f"{where}: not a decode config ({e})") from None
        check_options(acwt=cfg.acwt, beam=cfg.beam, lattice_beam=cfg.lattice_beam,
                      max_active=cfg.max_active)
        if cfg.priors not in (None, "counts", "posterior"):
            raise UserError(f"{where}: priors {cfg.priors!r}: not counts or posterior")
        return cfg


def config_path(model):
    """Where MODEL's decode.json lives: MODEL if it is a dir, the dir of a ``final.pt``; None
    for anything else (another checkpoint of the dir, a list of checkpoints, an ONNX file)."""
    if not isinstance(model, (str, os.PathLike)):
        return None
    model = os.fspath(model)
    if os.path.isdir(model):
        return os.path.join(model, CONFIG_FILE)
    if os.path.basename(model) == "final.pt":
        return os.path.join(os.path.dirname(os.path.abspath(model)), CONFIG_FILE)
    return None


def read_decode_config(model):
    """MODEL's DecodeConfig, or None where it has none. A relative graph_dir is taken relative
    to the model dir."""
    path = config_path(model)
    if path is None or not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            d = json.load(f)
    except ValueError as e:
        raise UserError(f"{path}: not JSON ({e}); decode the dev set again") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: not a decode config")
    cfg = DecodeConfig.from_dict(d, where=path)
    if cfg.graph_dir and not os.path.isabs(cfg.graph_dir):
        cfg.graph_dir = os.path.join(os.path.dirname(path), cfg.graph_dir)
    return cfg


def write_decode_config(model, cfg):
    """Write ``cfg`` to MODEL's decode.json (atomically); returns the path (None: MODEL is not
    a model dir, nothing written)."""
    path = config_path(model)
    if path is None:
        return None
    write_json(path, cfg.to_dict())
    return path


def record_dev_decode(model, graph_dir, decode_dir, acwt, beam, lattice_beam, max_active):
    """After `asrkd decode` chose ``acwt`` on a grid in ``decode_dir``: write MODEL's
    decode.json (the priors are those decode_dir/priors names, written for hybrid models)."""
    priors = None
    p = os.path.join(decode_dir, "priors")
    if os.path.isfile(p):
        with open(p) as f:
            priors = f.read().strip() or None
    cfg = DecodeConfig(acwt=float(acwt), beam=float(beam), lattice_beam=float(lattice_beam),
                       max_active=int(max_active), priors=priors,
                       graph_dir=os.path.abspath(graph_dir),
                       tuned_on=os.path.abspath(decode_dir))
    return write_decode_config(model, cfg)
