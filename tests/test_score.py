import os

import pytest

from asrkd.errors import UserError
from asrkd.score import score


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_hand_computed_wer(tmp_path):
    ref = _write(tmp_path / "ref", ["a-1-1 THE CAT SAT ON THE MAT", "a-1-2 HELLO WORLD",
                                    "a-1-3 NO HYPOTHESIS HERE"])
    # a-1-1: CAT->HAT (sub), ON deleted, EXTRA inserted -> 3 errors; a-1-2 correct;
    # a-1-3 missing -> 3 deletions
    hyp = _write(tmp_path / "hyp", ["a-1-1 THE HAT SAT THE MAT EXTRA", "a-1-2 HELLO WORLD"])
    res = score(ref, hyp, str(tmp_path / "out"))
    assert res["words"] == 11 and res["sents"] == 3
    assert (res["sub"], res["del"], res["ins"]) == (1, 4, 1)
    assert res["wer"] == pytest.approx(100 * 6 / 11)
    assert res["missing"] == 1 and res["sent_errors"] == 2
    out = tmp_path / "out"
    assert (out / "wer").read_text().startswith("%WER 54.55 [ 6 / 11, 1 ins, 4 del, 1 sub ]")
    assert (out / "missing").read_text() == "a-1-3\n"
    per_utt = (out / "per_utt").read_text().splitlines()
    assert "a-1-1 6 1 1 1" in per_utt and "a-1-3 3 0 3 0 MISSING" in per_utt
    errors = (out / "errors").read_text()
    assert "a-1-1 ref: THE CAT SAT ON  THE MAT ***\n" in errors
    assert "a-1-1 hyp: THE HAT SAT *** THE MAT EXTRA\n" in errors
    assert "a-1-3 hyp: *** ***        ***\n" in errors


def test_all_correct_and_bad_input(tmp_path):
    ref = _write(tmp_path / "ref", ["u-1-1 A B"])
    res = score(ref, ref, str(tmp_path / "o"))
    assert res["wer"] == 0.0 and res["missing"] == 0
    assert not os.path.exists(tmp_path / "o" / "missing")
    extra = _write(tmp_path / "hyp", ["u-1-1 A B", "u-1-9 C"])
    with pytest.raises(UserError):
        score(ref, extra, str(tmp_path / "o2"))
    with pytest.raises(UserError):
        score(str(tmp_path / "nope"), ref, str(tmp_path / "o3"))
