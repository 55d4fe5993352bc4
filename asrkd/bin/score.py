"""asrkd score: word error rate of hypotheses against reference text."""

from asrkd.score import score


def add_arguments(parser):
    parser.add_argument("ref_text", help="reference Kaldi text (utt WORDS...)")
    parser.add_argument("hyp", help="hypotheses (utt WORDS...); missing utterances count as "
                                    "all deletions")
    parser.add_argument("out_dir", help="output dir: wer, errors, per_utt, hyp.txt")


def main(args):
    res = score(args.ref_text, args.hyp, args.out_dir)
    print(f"%WER {res['wer']:.2f} [ {res['ins'] + res['del'] + res['sub']} / {res['words']}, "
          f"{res['ins']} ins, {res['del']} del, {res['sub']} sub ]")
