"""Home-screen icons drawn in the brand's colour, so "add to home screen" needs no asset.

Chromium installs a web app only with PNG icons of 192 and 512 pixels in the manifest; a
deployment's logo may be an SVG or any size, so the icons are drawn here: a rounded square
of the primary colour holding a white payment card. Plain zlib + struct, no imaging library.
"""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def _inside_rounded(x: int, y: int, box: tuple[int, int, int, int], r: int) -> bool:
    x0, y0, x1, y1 = box
    if not (x0 <= x < x1 and y0 <= y < y1):
        return False
    cx = x0 + r if x < x0 + r else x1 - r - 1 if x >= x1 - r else x
    cy = y0 + r if y < y0 + r else y1 - r - 1 if y >= y1 - r else y
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


@lru_cache(maxsize=8)
def icon_png(size: int, colour: str) -> bytes:
    """An RGBA PNG of `size` pixels: the card on a rounded square of `colour`."""
    background = (*_rgb(colour), 255)
    white, clear = (255, 255, 255, 255), (0, 0, 0, 0)
    stripe = (*(max(0, c - 40) for c in _rgb(colour)), 255)
    s = size
    card = (s * 18 // 100, s * 30 // 100, s * 82 // 100, s * 70 // 100)
    band = (card[1] + (card[3] - card[1]) * 22 // 100, card[1] + (card[3] - card[1]) * 40 // 100)
    chip = (card[0] + s * 8 // 100, card[1] + (card[3] - card[1]) * 55 // 100,
            card[0] + s * 20 // 100, card[1] + (card[3] - card[1]) * 80 // 100)
    rows = bytearray()
    for y in range(s):
        rows.append(0)
        for x in range(s):
            pixel = clear
            if _inside_rounded(x, y, (0, 0, s, s), s // 6):
                pixel = background
                if _inside_rounded(x, y, card, s // 30):
                    pixel = white
                    if band[0] <= y < band[1] or (chip[0] <= x < chip[2]
                                                  and chip[1] <= y < chip[3]):
                        pixel = stripe
            rows.extend(pixel)
    header = struct.pack(">IIBBBBB", s, s, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(bytes(rows), 9)) + _chunk(b"IEND", b""))
