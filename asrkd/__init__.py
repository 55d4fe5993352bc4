"""asrkd: knowledge distillation of hybrid DNN-HMM speech acoustic models.

A reference implementation of Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a
Neural Network", for speech: Kaldi-compatible features, a GMM-HMM system whose tied states are
the DNN targets, an ensemble of DNN acoustic models, and distillation of the ensemble into one
deployable model, scored by WFST decoding.

The acoustic model classes and the recognizer are importable from the top level::

    from asrkd import DNNAcousticModel, Recognizer
"""

__version__ = "0.1.0"

_LAZY = {
    "DNNAcousticModel": "asrkd.models",
    "TDNNAcousticModel": "asrkd.models",
    "ModelConfig": "asrkd.models",
    "load_model": "asrkd.models",
    "Recognizer": "asrkd.recognizer",
    "Result": "asrkd.recognizer",
}


def __getattr__(name):
    # Lazy so that `import asrkd` (and the CLI start-up) does not pay for importing torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'asrkd' has no attribute {name!r}")


def __dir__():
    # The lazy names are attributes too (tab completion, help(asrkd), dir()).
    return sorted(set(globals()) | set(_LAZY))
