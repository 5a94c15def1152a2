"""What decoding and re-encoding a reference image costs the instance (a script, not a test).

    python tests/bench/bench_reference_images.py

Times instance.images.decode_reference (base64, Pillow decode, re-encode) on about 1 MB images: the noise PNG
that tests/bench/bench_instance.py sends, a photo-like PNG and a photo-like JPEG. CPU ms per image, so other
load on the machine counts less.
"""

from __future__ import annotations

import base64
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from PIL import Image  # noqa: E402

from instance.images import decode_reference  # noqa: E402
from tests.bench.bench_instance import noise_png  # noqa: E402


def photo_like(size: tuple[int, int]) -> Image.Image:
    """A gradient with grain: compresses like a photograph, unlike pure noise."""
    grain = Image.effect_noise(size, 30).convert("RGB")
    return Image.blend(Image.linear_gradient("L").resize(size).convert("RGB"), grain, 0.35)


def encoded(img: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **options)
    return out.getvalue()


def main() -> None:
    samples = {
        "noise PNG (bench_instance's)": noise_png(1_000_000),
        "photo-like PNG": encoded(photo_like((760, 570)), "PNG"),
        "photo-like JPEG": encoded(photo_like((1600, 1200)), "JPEG", quality=90),
    }
    print(f"{'reference':<30}{'bytes':>10}{'pixels':>10}{'cpu ms p50':>12}{'wall ms p50':>12}{'out bytes':>11}")
    for name, data in samples.items():
        text = base64.b64encode(data).decode()
        cpu, wall = [], []
        for _ in range(7):
            c, w = time.process_time(), time.perf_counter()
            out = decode_reference(text, 0, 8 * 1024 * 1024, 40_000_000)
            cpu.append((time.process_time() - c) * 1000)
            wall.append((time.perf_counter() - w) * 1000)
        pixels = Image.open(io.BytesIO(data)).size
        print(f"{name:<30}{len(data):>10}{pixels[0] * pixels[1]:>10}{statistics.median(cpu):>12.0f}"
              f"{statistics.median(wall):>12.0f}{len(out.data):>11}")


if __name__ == "__main__":
    main()
