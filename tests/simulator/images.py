"""The 'generated' images: solid-colour PNGs at the requested aspect ratio."""

from __future__ import annotations

import hashlib
import io

from PIL import Image

RATIOS = ("Auto", "1:1", "9:16", "16:9", "3:4", "4:3", "3:2", "2:3", "5:4", "4:5", "21:9", "1:4", "4:1", "1:8", "8:1")
LONG_SIDE = 512
# The long side per output size; no size (models without the setting) keeps LONG_SIDE.
SIZE_LONG_SIDES = {"512": 512, "1K": 1024, "2K": 2048, "4K": 4096}


def image_size(aspect_ratio: str, output_size: str | None = None) -> tuple[int, int]:
    """(width, height) with the long side LONG_SIDE (or the output size's); "Auto" gives a square."""
    if aspect_ratio not in RATIOS:
        raise ValueError(f"unknown aspect ratio {aspect_ratio!r}")
    if output_size is not None and output_size not in SIZE_LONG_SIDES:
        raise ValueError(f"unknown image size {output_size!r}")
    long_side = SIZE_LONG_SIDES[output_size] if output_size else LONG_SIDE
    if aspect_ratio == "Auto":
        return long_side, long_side
    width, height = (int(part) for part in aspect_ratio.split(":"))
    if width >= height:
        return long_side, round(long_side * height / width)
    return round(long_side * width / height), long_side


def prompt_color(prompt: str, index: int = 0) -> tuple[int, int, int]:
    """A colour tests can predict: the first 3 bytes of sha256(prompt), salted by index after the first image."""
    seed = prompt if index == 0 else f"{prompt}#{index}"
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    return digest[0], digest[1], digest[2]


def make_png(prompt: str, aspect_ratio: str, index: int = 0, output_size: str | None = None) -> bytes:
    image = Image.new("RGB", image_size(aspect_ratio, output_size), prompt_color(prompt, index))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
