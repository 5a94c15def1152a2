"""Reference images from requests: base64 (with or without a data-URL prefix) → validated bytes."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

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


def decode_reference(encoded: str, index: int, max_bytes: int) -> ReferenceImage:
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
    mime, ext = kind
    return ReferenceImage(name=f"reference-{index + 1}.{ext}", mime=mime, data=data)


def to_png(data: bytes) -> bytes:
    """Generated images are answered as PNG; AI Studio mostly serves PNG already, so convert rarely."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    from PIL import Image  # imported only when needed: keeps idle memory low

    out = io.BytesIO()
    with Image.open(io.BytesIO(data)) as img:
        img.save(out, format="PNG")
    return out.getvalue()
