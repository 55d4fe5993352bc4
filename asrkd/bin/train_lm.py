"""asrkd train-lm: interpolated modified Kneser-Ney n-gram LM to ARPA, dev perplexity."""

from asrkd.lm import train_lm


def add_arguments(parser):
    parser.add_argument("texts", nargs="+", metavar="TEXT",
                        help="training text file(s), one sentence per line")
    parser.add_argument("arpa", help="output ARPA file (the last positional argument)")
    parser.add_argument("--order", type=int, default=3, help="n-gram order")
    parser.add_argument("--dev-text", default=None,
                        help="Kaldi text file (utt WORDS..., e.g. data/dev/text) to report "
                             "perplexity and OOV rate on")
    parser.add_argument("--dev-plain", action="store_true",
                        help="--dev-text has no utterance ids (plain sentences)")
    parser.add_argument("--vocab", default=None,
                        help="words.txt of the lang dir: words outside it map to --unk")
    parser.add_argument("--unk", default="<UNK>", help="OOV word of the vocabulary")
    parser.add_argument("--prune", type=float, default=0.0,
                        help="entropy (Stolcke) pruning threshold: drop n-grams whose removal "
                             "raises perplexity by less than this fraction (e.g. 1e-7, as "
                             "LibriSpeech's 3-gram.pruned.1e-7; 0: no pruning)")
    parser.add_argument("--utt-ids", action="store_true",
                        help="training texts start each line with an utterance id (dropped), "
                             "as Kaldi text files and LibriSpeech's transcript lists do")


def main(args):
    train_lm(args.texts, args.arpa, order=args.order, dev_text=args.dev_text,
             vocab_path=args.vocab, utt_ids=args.utt_ids, unk=args.unk,
             dev_utt_ids=not args.dev_plain, prune=args.prune)
