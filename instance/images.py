"""Reference images from requests: base64 (with or without a data-URL prefix) → decoded, checked and
re-encoded bytes, so that Chromium only ever renders an image Pillow has rebuilt from its pixels."""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from instance.errors import BadInput

# Magic numbers of the formats AI Studio's upload accepts; anything else is not an image to us.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png", "png"),
    (b"\xff\xd8\xff", "image/jpeg", "jpg"),
    (b"GIF87a", "image/gif", "gif"),
    (b"GIF89a", "image/gif", "gif"),
)


@dataclass(frozen=True)
class ReferenceImage:
    name: str
    mime: str
    data: bytes


def sniff_mime(data: bytes) -> tuple[str, str] | None:
    for magic, mime, ext in _SIGNATURES:
        if data.startswith(magic):
            return mime, ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", "webp"
    return None


def decode_reference(encoded: str, index: int, max_bytes: int, max_pixels: int) -> ReferenceImage:
    if not isinstance(encoded, str) or not encoded.strip():
        raise BadInput(f"reference image #{index + 1} is empty")
    payload = encoded.strip()
    if payload.startswith("data:"):
        header, sep, payload = payload.partition(",")
        if not sep or ";base64" not in header:
            raise BadInput(f"reference image #{index + 1}: a data URL must be base64-encoded")
    # Upper bound before decoding, so a huge string is refused without allocating its bytes.
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise BadInput(f"reference image #{index + 1} is larger than {max_bytes} bytes", 413)
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"reference image #{index + 1} is not valid base64") from None
    if len(data) > max_bytes:
        raise BadInput(f"reference image #{index + 1} is larger than {max_bytes} bytes", 413)
    kind = sniff_mime(data)
    if kind is None:
        raise BadInput(f"reference image #{index + 1} is not a PNG, JPEG, GIF or WebP image")
    return reencode(data, index, max_pixels)


# Pillow's names of the formats sniff_mime lets through; Image.open tries no other decoder.
_PIL_FORMATS = ("PNG", "JPEG", "GIF", "WEBP")


def reencode(data: bytes, index: int, max_pixels: int) -> ReferenceImage:
    """Decode every pixel (the first frame of an animation) and encode them afresh: JPEG stays JPEG, the rest
    become PNG; metadata is dropped, EXIF orientation applied. Undecodable or oversized images are BadInput."""
    from PIL import Image, ImageOps  # imported only when needed: keeps idle memory low

    label = f"reference image #{index + 1}"
    try:
        with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as img:
            width, height = img.size
            # The header's size, checked before any pixel is decoded: a small file may expand to gigabytes.
            if width * height > max_pixels:
                raise BadInput(f"{label} is {width}x{height} pixels, more than {max_pixels}")
            is_jpeg = img.format == "JPEG"
            img.load()
            frame = _plain_mode(ImageOps.exif_transpose(img))
            out = io.BytesIO()
            if is_jpeg:
                frame.save(out, format="JPEG", quality=95)
            else:
                frame.save(out, format="PNG", compress_level=1)  # fast: the page uploads it once
    except BadInput:
        raise
    except Image.DecompressionBombError:  # Pillow's own limit, met first when max_pixels is set above it
        raise BadInput(f"{label} has more than {max_pixels} pixels") from None
    except Image.UnidentifiedImageError:
        raise BadInput(f"{label} is not a readable PNG, JPEG, GIF or WebP image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Truncated data, a broken chunk, a header with nothing valid behind it.
        raise BadInput(f"{label} could not be decoded: {str(exc)[:200] or type(exc).__name__}") from None
    mime, ext = ("image/jpeg", "jpg") if is_jpeg else ("image/png", "png")
    return ReferenceImage(name=f"reference-{index + 1}.{ext}", mime=mime, data=out.getvalue())


def _plain_mode(img):
    """RGB, RGBA or L, which PNG and JPEG both take (CMYK, 16-bit, palette, float modes are converted)."""
    if img.mode in ("RGB", "L"):
        return img
    has_alpha = "A" in img.mode or "transparency" in img.info
    if has_alpha:
        return img.convert("RGBA")
    return img.convert("RGB")


def to_png(data: bytes) -> bytes:
    """Generated images are answered as PNG; AI Studio mostly serves PNG already, so convert rarely."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    from PIL import Image  # imported only when needed: keeps idle memory low

    out = io.BytesIO()
    with Image.open(io.BytesIO(data)) as img:
        img.save(out, format="PNG")
    return out.getvalue()


@contextlib.contextmanager
def reference_files(images: Sequence[ReferenceImage]) -> Iterator[list[Path]]:
    """The task's references as files in a private temporary folder, removed when the task ends.

    A file path lets Chromium read the bytes itself; a buffer would cross Playwright's pipe as base64 and be
    rebuilt in the page (about 200 ms for 1 MB). The files outlive the upload: a page may read them again at Run."""
    if not images:
        yield []
        return
    with tempfile.TemporaryDirectory(prefix="fleet-refs-") as folder:  # mode 0700
        paths = []
        for image in images:
            path = Path(folder) / image.name
            path.write_bytes(image.data)
            paths.append(path)
        yield paths
