"""The 'generated' images: solid-colour PNGs at the requested aspect ratio."""

from __future__ import annotations

import hashlib
import io

from PIL import Image

RATIOS = ("Auto", "1:1", "9:16", "16:9", "3:4", "4:3", "3:2", "2:3", "5:4", "4:5", "21:9")
LONG_SIDE = 512


def image_size(aspect_ratio: str) -> tuple[int, int]:
    """(width, height) with the long side LONG_SIDE; "Auto" gives a square."""
    if aspect_ratio not in RATIOS:
        raise ValueError(f"unknown aspect ratio {aspect_ratio!r}")
    if aspect_ratio == "Auto":
        return LONG_SIDE, LONG_SIDE
    width, height = (int(part) for part in aspect_ratio.split(":"))
    if width >= height:
        return LONG_SIDE, round(LONG_SIDE * height / width)
    return round(LONG_SIDE * width / height), LONG_SIDE


def prompt_color(prompt: str, index: int = 0) -> tuple[int, int, int]:
    """A colour tests can predict: the first 3 bytes of sha256(prompt), salted by index after the first image."""
    seed = prompt if index == 0 else f"{prompt}#{index}"
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    return digest[0], digest[1], digest[2]


def make_png(prompt: str, aspect_ratio: str, index: int = 0) -> bytes:
    image = Image.new("RGB", image_size(aspect_ratio), prompt_color(prompt, index))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
