"""espeak-ng through ctypes (the library and data bundled by the `espeakng-loader` wheel).

The engine keeps hidden state between calls (random jitter, voice tables), so one synthesis call
gives the same waveform for the same input only in a fresh engine. ``synthesize`` therefore
forks a child per utterance from a process that has initialised the engine but never spoken:
the child sets the voice and ``espeak_ng_SetRandSeed(seed)``, speaks, writes 16-bit samples to a
pipe and exits. Output is espeak's native 22,050 Hz.
"""

import ctypes
import os
import struct
import tempfile

import numpy as np

from asrkd.errors import UserError

ESPEAK_RATE = 22050

# espeak_PARAMETER
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
# the engine exits the whole process when its data path is longer than this
_MAX_DATA_PATH = 140

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_engine = None  # (lib, callback, chunks) once initialised in this process


def data_path():
    """The espeak-ng data dir, through a short symlink if the installed path is too long."""
    import espeakng_loader

    path = espeakng_loader.get_data_path()
    if len(path) < _MAX_DATA_PATH:
        return path
    link = os.path.join(tempfile.gettempdir(), f"asrkd-espeak-{os.getuid()}")
    if os.path.realpath(link) != os.path.realpath(path):
        tmp = f"{link}.{os.getpid()}"
        os.symlink(path, tmp)
        os.replace(tmp, link)
    return link


def voice_variants():
    """Names of the voice variants shipped with the data (files in ``voices/!v``)."""
    return sorted(os.listdir(os.path.join(data_path(), "voices", "!v")))


def variant_gender(name):
    """'male' or 'female' as the variant file declares (male when it does not say)."""
    with open(os.path.join(data_path(), "voices", "!v", name), errors="replace") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "gender":
                return "female" if parts[1] == "female" else "male"
    return "male"


def _init():
    global _engine
    if _engine is not None:
        return _engine
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
        ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
    ]
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path().encode(), 0)
    if rate != ESPEAK_RATE:
        raise UserError(f"espeak-ng failed to initialise (returned {rate})")
    chunks = []

    def on_audio(wav, n, events):
        if n > 0:
            chunks.append(ctypes.string_at(wav, n * 2))
        return 0

    cb = _CALLBACK(on_audio)
    lib.espeak_SetSynthCallback(cb)
    _engine = (lib, cb, chunks)
    return _engine


def _speak(text, voice, pitch, pitch_range, rate, seed):
    lib, _, chunks = _init()
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise RuntimeError(f"espeak-ng has no voice {voice!r}")
    lib.espeak_SetParameter(_RATE, int(rate), 0)
    lib.espeak_SetParameter(_PITCH, int(pitch), 0)
    lib.espeak_SetParameter(_RANGE, int(pitch_range), 0)
    lib.espeak_ng_SetRandSeed(int(seed))
    data = text.encode("utf-8") + b"\0"
    buf = ctypes.create_string_buffer(data)
    rc = lib.espeak_Synth(buf, len(data), 0, 0, 0, _CHARS_UTF8, None, None)
    if rc != 0:
        raise RuntimeError(f"espeak_Synth failed ({rc})")
    lib.espeak_Synchronize()
    return b"".join(chunks)


def synthesize(text, voice="en", pitch=50, pitch_range=50, rate=175, seed=0):
    """Speak ``text`` (lower case with punctuation) in a fresh engine; float32 at 22,050 Hz.

    ``voice`` is ``accent[+variant]`` (e.g. ``en-us+m3``); ``pitch`` and ``pitch_range`` are
    espeak's 0..100 scales, ``rate`` words per minute.
    """
    _init()  # initialise before forking so each child starts from the same unspoken engine
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the caller's stack
        code = 0
        try:
            os.close(r)
            pcm = _speak(text, voice, pitch, pitch_range, rate, seed)
            out = struct.pack("<q", len(pcm)) + pcm
            view = memoryview(out)
            while view:
                view = view[os.write(w, view):]
        except BaseException:  # noqa: BLE001 - reported to the parent by the exit code
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        payload = f.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or len(payload) < 8:
        raise RuntimeError(f"espeak-ng child failed for voice {voice!r} and text {text!r}")
    (n,) = struct.unpack("<q", payload[:8])
    pcm = np.frombuffer(payload[8:8 + n], dtype="<i2")
    return pcm.astype(np.float32) / 32768.0

