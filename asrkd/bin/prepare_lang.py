"""asrkd prepare-lang: lexicon, phones, topology and L.fst for a set of texts."""

from asrkd.lang import LangConfig, prepare_lang


def add_arguments(parser):
    parser.add_argument("lang_dir", help="output lang dir (e.g. data/lang)")
    parser.add_argument("--text", action="append", required=True, metavar="TEXT",
                        help="Kaldi text file (utt WORDS...) whose words form the vocabulary; "
                             "words missing from the lexicon are reported and map to <UNK> "
                             "(repeatable)")
    parser.add_argument("--vocab-text", action="append", default=[], metavar="TEXT",
                        help="plain sentence file (e.g. LM text, no utterance ids) whose "
                             "in-lexicon words are added to the vocabulary (repeatable)")
    parser.add_argument("--vocab-size", type=int, default=None, metavar="N",
                        help="add only the N most frequent in-lexicon words of the --vocab-text "
                             "files (default: all); bounds the decoding graph's size")
    parser.add_argument("--lexicon", default=None,
                        help="own lexicon file (WORD PH1 PH2 ..., stress digits stripped) "
                             "instead of CMUdict")
    parser.add_argument("--sil-prob", type=float, default=0.5,
                        help="probability of optional silence between words in L.fst")


def main(args):
    prepare_lang(args.lang_dir, args.text, lexicon_path=args.lexicon,
                 vocab_texts=args.vocab_text, vocab_size=args.vocab_size,
                 config=LangConfig(sil_prob=args.sil_prob))
