"""The one check of numeric options: decoder, training and store options of every verb.

``check_options(**values)`` refuses a value outside its range with one clear line; the CLI
applies it to every verb's parsed arguments (``check_args``) and the library functions that
take these options (decoding, transcription) call it too, so one verb cannot accept what
another refuses. Options given as None (not set, a default taken elsewhere) are not checked.
"""

import math

from asrkd.errors import UserError

MIN_ACTIVE = 200  # LatticeFasterDecoderConfig's default min_active, which we do not change

# option -> (smallest allowed value, whether the smallest is excluded); counts are ints >= 1
_POSITIVE, _COUNT, _NON_NEGATIVE = (0, True), (1, False), (0, False)
RANGES = {
    "acwt": _POSITIVE, "temperature": _POSITIVE, "lr": _POSITIVE,
    "num_iters": _COUNT, "num_gauss": _COUNT, "num_leaves": _COUNT, "num_models": _COUNT,
    "num_sets": _COUNT, "epochs": _COUNT, "top_n": _COUNT, "nj": _COUNT,
    "num_utts": _COUNT, "topk": _NON_NEGATIVE, "n": _COUNT, "lmwt": _POSITIVE,
    "max_segment": (1.0, False),  # seconds of audio decoded as one utterance by transcribe
}


def check_options(**values):
    """UserError naming the first option of ``values`` outside its range (see RANGES, and
    the decoder's beams: ``beam``/``lattice_beam`` positive, ``max_active`` >= MIN_ACTIVE)."""
    if "lattice_beam" in values:
        check_decoder_options(values.get("beam"), values.get("lattice_beam"),
                              values.get("max_active"))
    for name, value in values.items():
        if value is None or name not in RANGES:
            continue
        if name == "acwt" and isinstance(value, (list, tuple)):
            check_acwts(value)
            continue
        low, strict = RANGES[name]
        ok = isinstance(value, (int, float)) and not math.isnan(value) and (
            value > low if strict else value >= low)
        if not ok:
            flag = "--" + name.replace("_", "-")
            what = "positive" if strict else f">= {low}"
            raise UserError(f"{flag} must be {what}, got {value}")


def check_acwts(grid):
    """UserError unless every acoustic scale of ``grid`` is positive (NaN is not)."""
    if not grid or not all(a > 0 for a in grid):
        raise UserError(f"acoustic scales must be positive, got {list(grid)}")


def check_decoder_options(beam, lattice_beam, max_active):
    """UserError for options the C++ decoder would reject with a bare assertion."""
    if any(v is not None and not v > 0 for v in (beam, lattice_beam)):
        raise UserError(f"--beam and --lattice-beam must be positive, got {beam} and "
                        f"{lattice_beam}")
    if max_active is not None and max_active < MIN_ACTIVE:
        raise UserError(f"--max-active must be at least the decoder's min-active {MIN_ACTIVE}, "
                        f"got {max_active}")


def check_args(args):
    """check_options over a verb's parsed arguments (an argparse Namespace)."""
    values = vars(args)
    names = set(RANGES) | ({"beam", "lattice_beam", "max_active"} if "lattice_beam" in values
                           else set())
    check_options(**{k: v for k, v in values.items() if k in names})
    grid = values.get("acwt_grid")
    if grid is not None and values.get("acwt") is None:
        check_acwts(grid)
