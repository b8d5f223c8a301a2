"""G.711 μ-law and A-law encoding of 16-bit linear PCM (ITU-T G.711).

Tables are built once (64 KiB each) so encoding a 20 ms frame is a C-level lookup.
"""

from __future__ import annotations

import functools
from array import array

_SEG_END = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)  # 14-bit segment ends


def _ulaw(sample: int) -> int:
    """μ-law of a 16-bit sample, as the reference G.711 code computes it (14-bit input)."""
    pcm = sample >> 2
    if pcm < 0:
        pcm, mask = -pcm, 0x7F
    else:
        mask = 0xFF
    pcm = min(pcm, 8159) + 0x21  # clip, then add the bias (0x84 >> 2)
    seg = 0
    while seg < 8 and pcm > _SEG_END[seg]:
        seg += 1
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((pcm >> (seg + 1)) & 0x0F)) ^ mask


def _alaw(sample: int) -> int:
    sign = 0x00 if sample < 0 else 0x80
    if sample < 0:
        sample = -sample - 1 if sample > -32768 else 32767
    sample = min(sample, 32767)
    if sample >= 256:
        exponent = 7
        mask = 0x4000
        while exponent > 1 and not sample & mask:
            exponent -= 1
            mask >>= 1
        mantissa = (sample >> (exponent + 3)) & 0x0F
        value = (exponent << 4) | mantissa
    else:
        value = sample >> 4
    return (sign | value) ^ 0x55


@functools.cache
def _table(law: int) -> bytes:
    fn = _ulaw if law == 0 else _alaw
    # index: the sample as an unsigned 16-bit value
    return bytes(fn(i - 65536 if i >= 32768 else i) for i in range(65536))


def encode(samples: array, payload_type: int) -> bytes:  # type: ignore[type-arg]
    """Encode signed 16-bit samples for PT 0 (PCMU) or 8 (PCMA)."""
    table = _table(payload_type)
    unsigned = array("H", samples.tobytes())
    return bytes(map(table.__getitem__, unsigned))
