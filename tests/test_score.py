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


def test_frame_accuracy_counts_the_utterances_it_cannot_score(tmp_path, capsys):
    """Utterances without an alignment (failed forced alignment) are left out of the fraction,
    as before, but counted: a log line and decode_dir/frame_acc_unscored."""
    import numpy as np
    import torch

    from asrkd.decode import measure_frame_accuracy
    from asrkd.models import ModelConfig, build_model
    from asrkd.score import frame_accuracy
    from asrkd.table import ArkWriter, read_scp
    from test_distill import make_learnable_data

    data, ali = make_learnable_data(tmp_path, num_spk=2, utts_per_spk=3, num_pdfs=6, dim=8)
    torch.manual_seed(0)
    model = build_model(ModelConfig(feat_dim=8, num_pdfs=6, hidden_dims=[8], cmvn="mean"))
    model.pdf_counts.fill_(1)
    model.save(str(tmp_path / "m.pt"))
    full_acc, full = frame_accuracy(str(tmp_path / "m.pt"), str(data), str(ali), per_utt=True)
    part = tmp_path / "ali_part"  # the alignment of two utterances failed
    part.mkdir()
    pdfs = read_scp(ali / "pdf.scp")
    lost = sorted(pdfs)[1:3]
    with ArkWriter(part / "pdf.ark", part / "pdf.scp") as w:
        for utt in sorted(pdfs):
            if utt not in lost:
                w[utt] = np.asarray(pdfs[utt])
    for name in ("pdf_counts", "num_pdfs"):
        (part / name).write_text((ali / name).read_text())
    capsys.readouterr()
    acc = measure_frame_accuracy(str(tmp_path / "m.pt"), str(data), str(part), str(tmp_path / "fa"))
    err = capsys.readouterr().err
    assert f"2 of 6 utterances of {data} have no alignment in {part}" in err
    assert "(4 utterances; 2 without alignment not scored)" in err
    kept = {u: c for u, c in full.items() if u not in lost}
    assert acc == sum(c for c, _ in kept.values()) / sum(n for _, n in kept.values())
    assert acc != full_acc
    per_utt = (tmp_path / "fa" / "frame_acc_per_utt").read_text().splitlines()
    assert per_utt[0] == "# utt correct frames" and len(per_utt) == 5  # as before: scored only
    assert (tmp_path / "fa" / "frame_acc_unscored").read_text().splitlines() == [
        "# 2 utterances without alignment, not in frame_acc", *lost]
