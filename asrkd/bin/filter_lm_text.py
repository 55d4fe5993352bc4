"""asrkd filter-lm-text TEXT OUT --held-out DATA...: LM text without the test sets' chapters."""

from asrkd.lm import filter_lm_text


def add_arguments(parser):
    parser.add_argument("text", help="LM text, each line `UTT-ID WORDS...` with LibriSpeech ids "
                        "SPK-CHAPTER-UTT (e.g. train-clean-100's transcripts)")
    parser.add_argument("out", help="the filtered text (same format)")
    parser.add_argument("--held-out", nargs="+", required=True, metavar="DATA",
                        help="data dirs (test sets) whose chapters are removed: every line of a "
                        "(speaker, chapter) of theirs goes, and every line whose words are one "
                        "of their transcripts")


def main(args):
    r = filter_lm_text(args.text, args.out, args.held_out)
    print(f"filter-lm-text: {args.out}: kept {r['kept']} lines; dropped {r['dropped_chapter']} "
          f"of the {r['chapters']} held-out chapters and {r['dropped_sentence']} more that are "
          "held-out sentences")
