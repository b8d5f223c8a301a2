"""What ``call.play()`` plays: a WAV file, a tone or silence, as 20 ms frames.

``"tone:440"`` (one second), ``"tone:440/2000"`` (Hz/ms), ``"tone:350+440/1000"`` (two
frequencies, like a dial tone), ``"silence:500"`` (ms), or a path to a WAV file with 8 kHz
mono 16-bit PCM (the telephony format every IVR prompt tool exports).
"""

from __future__ import annotations

import math
import wave
from array import array
from collections.abc import Iterator
from pathlib import Path

RATE = 8000
FRAME = 160  # samples per 20 ms at 8 kHz
AMPLITUDE = 8000  # about -12 dBFS per tone


class MediaError(ValueError):
    """A prompt that cannot be played; the message says why."""


def frames(spec: str) -> Iterator[array]:  # type: ignore[type-arg]
    if spec.startswith("tone:"):
        return _tone(spec[5:])
    if spec.startswith("silence:"):
        ms = _ms(spec[8:], spec)
        return (array("h", bytes(FRAME * 2)) for _ in range(ms // 20))
    return _wav(Path(spec))


def _ms(text: str, spec: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise MediaError(f"{spec!r}: duration must be a positive number of milliseconds")
    return int(text)


def _tone(arg: str) -> Iterator[array]:  # type: ignore[type-arg]
    freqs_text, _, ms_text = arg.partition("/")
    try:
        freqs = [float(f) for f in freqs_text.split("+")]
    except ValueError:
        raise MediaError(f"tone:{arg}: frequencies must be numbers, e.g. tone:440/1000") from None
    if not all(0 < f < RATE / 2 for f in freqs):
        raise MediaError(f"tone:{arg}: frequencies must be between 0 and 4000 Hz")
    ms = _ms(ms_text, f"tone:{arg}") if ms_text else 1000
    amp = AMPLITUDE / len(freqs)
    n = 0
    for _ in range(ms // 20):
        frame = array(
            "h",
            (
                int(sum(amp * math.sin(2 * math.pi * f * (n + i) / RATE) for f in freqs))
                for i in range(FRAME)
            ),
        )
        n += FRAME
        yield frame


def _wav(path: Path) -> Iterator[array]:  # type: ignore[type-arg]
    try:
        with wave.open(str(path), "rb") as w:
            if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (RATE, 1, 2):
                raise MediaError(
                    f"{path}: need 8 kHz mono 16-bit PCM, got {w.getframerate()} Hz, "
                    f"{w.getnchannels()} channel(s), {8 * w.getsampwidth()}-bit"
                )
            data = w.readframes(w.getnframes())
    except (OSError, wave.Error, EOFError) as exc:
        raise MediaError(f"{path}: cannot open as WAV: {exc}") from None
    for i in range(0, len(data), FRAME * 2):
        chunk = data[i : i + FRAME * 2]
        if len(chunk) < FRAME * 2:
            chunk += bytes(FRAME * 2 - len(chunk))
        yield array("h", chunk)
