"""The synthetic espeak-ng corpus: ``synth_corpus(out_dir, hours, condition, seed, nj)``.

Modules: ``espeak`` (ctypes engine, one forked process per utterance), ``text`` (KJV sentence
selection and normalisation), ``resample`` (22,050 -> 16,000 Hz), ``room`` (reverberation and
noise for the ``other`` condition), ``corpus`` (planning and writing the LibriSpeech layout).
"""

from asrkd.synth.corpus import SynthConfig, synth_corpus

__all__ = ["SynthConfig", "synth_corpus"]
