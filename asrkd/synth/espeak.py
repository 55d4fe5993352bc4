"""espeak-ng through ctypes (the library and data bundled by the `espeakng-loader` wheel).

The engine keeps hidden state between calls (random jitter, voice tables), so a synthesis call
gives the same waveform for the same input only in a fresh engine. Each calling process
therefore starts one small server (this file run as a script: a fresh interpreter with ctypes and
the engine, ~10 MB) that initialises the engine without speaking and then forks a child per
request; the child sets the voice, parameters and ``espeak_ng_SetRandSeed(seed)``, speaks and
exits. Forking the small server rather than the caller keeps fork and copy-on-write costs out of
the way (they were a third of the time when forking a corpus-sized process). Output is
espeak's native 22,050 Hz.

This file must stay importable without numpy or the asrkd package: the server runs it directly.
"""

import ctypes
import json
import os
import struct
import subprocess
import sys
import tempfile

import espeakng_loader

ESPEAK_RATE = 22050

# espeak_PARAMETER
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
# the engine exits the whole process when its data path is longer than about this
_MAX_DATA_PATH = 140

_HEADER = struct.Struct("<q")  # byte count of the 16-bit samples that follow; -1 = failure


def data_path():
    """The espeak-ng data dir, through a short symlink if the installed path is too long."""
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


# ---------------------------------------------------------------- server side (script)

_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def _init_engine():
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
        raise RuntimeError(f"espeak-ng failed to initialise (returned {rate})")
    chunks = []

    def on_audio(wav, n, events):
        if n > 0:
            chunks.append(ctypes.string_at(wav, n * 2))
        return 0

    cb = _CALLBACK(on_audio)
    lib.espeak_SetSynthCallback(cb)
    return lib, cb, chunks


def _speak(engine, req):
    lib, _, chunks = engine
    if lib.espeak_SetVoiceByName(req["voice"].encode()) != 0:
        raise RuntimeError(f"espeak-ng has no voice {req['voice']!r}")
    lib.espeak_SetParameter(_RATE, int(req["rate"]), 0)
    lib.espeak_SetParameter(_PITCH, int(req["pitch"]), 0)
    lib.espeak_SetParameter(_RANGE, int(req["pitch_range"]), 0)
    lib.espeak_ng_SetRandSeed(int(req["seed"]))
    data = req["text"].encode("utf-8") + b"\0"
    buf = ctypes.create_string_buffer(data)
    if lib.espeak_Synth(buf, len(data), 0, 0, 0, _CHARS_UTF8, None, None) != 0:
        raise RuntimeError("espeak_Synth failed")
    lib.espeak_Synchronize()
    return b"".join(chunks)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _spawn_speaker(engine):
    """Fork a child that waits for one request, speaks it and exits; returns its pipes."""
    req_r, req_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: speak once in the unspoken engine, then vanish
        code = 0
        try:
            os.close(req_w)
            os.close(out_r)
            with os.fdopen(req_r, "rb") as f:
                line = f.read()
            if not line:  # the server went away before asking
                os._exit(0)
            req = json.loads(line)
            pcm = _speak(engine, req)
            _write_all(out_w, _HEADER.pack(len(pcm)) + pcm)
        except BaseException as e:  # noqa: BLE001 - reported as a failed reply
            print(f"espeak child: {e}", file=sys.stderr)
            code = 1
        finally:
            os._exit(code)
    os.close(req_r)
    os.close(out_w)
    return pid, req_w, out_r


def serve():
    """Answer requests (one JSON line each on stdin) with header + PCM on stdout, until EOF.

    The next child is forked while the current one speaks, which takes fork latency (several ms
    on sandboxed kernels) off the critical path.
    """
    out = os.dup(1)
    os.dup2(2, 1)  # anything the library prints must not corrupt the reply stream
    engine = _init_engine()
    ready = _spawn_speaker(engine)
    for line in sys.stdin.buffer:
        pid, req_w, out_r = ready
        _write_all(req_w, line)
        os.close(req_w)
        ready = _spawn_speaker(engine)
        with os.fdopen(out_r, "rb") as f:
            payload = f.read()
        if len(payload) < _HEADER.size:
            payload = _HEADER.pack(-1)
        _write_all(out, payload)
        os.waitpid(pid, 0)
    os.kill(ready[0], 9)
    os.waitpid(ready[0], 0)


# ---------------------------------------------------------------- client side

_server = None  # (pid of the owning process, Popen)


def _get_server():
    global _server
    if _server is None or _server[0] != os.getpid():  # a forked caller needs its own server
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
        )
        _server = (os.getpid(), proc)
    return _server[1]


def _read_exact(f, n):
    parts, got = [], 0
    while got < n:
        b = f.read(n - got)
        if not b:
            raise RuntimeError("espeak-ng server exited")
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def synthesize(text, voice="en", pitch=50, pitch_range=50, rate=175, seed=0):
    """Speak ``text`` (lower case with punctuation) in a fresh engine; float32 at 22,050 Hz.

    ``voice`` is ``accent[+variant]`` (e.g. ``en-us+m3``); ``pitch`` and ``pitch_range`` are
    espeak's 0..100 scales, ``rate`` words per minute.
    """
    import numpy as np

    global _server
    proc = _get_server()
    req = {"text": text, "voice": voice, "pitch": int(pitch), "pitch_range": int(pitch_range),
           "rate": int(rate), "seed": int(seed)}
    try:
        proc.stdin.write(json.dumps(req).encode() + b"\n")
        (n,) = _HEADER.unpack(_read_exact(proc.stdout, _HEADER.size))
        pcm = _read_exact(proc.stdout, max(n, 0))
    except (OSError, RuntimeError):
        _server = None  # a dead server: the next call starts a new one
        raise
    if n < 0:
        raise RuntimeError(f"espeak-ng failed for voice {voice!r} and text {text!r}")
    pcm = np.frombuffer(pcm, dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    serve()
