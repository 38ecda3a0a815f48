"""Schemathesis hooks (loaded by ``schemathesis.toml``): image files for image form parts.

An OpenAPI schema can say that a form's ``file`` part is binary and which media types it
takes (``encoding.contentType``), but not that its bytes must be an image, so schemathesis
would send any bytes as a schema-valid upload. Registering a strategy per image type makes
the valid uploads it generates real images of that type; invalid ones are still generated.
"""

from __future__ import annotations

import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image

FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF"}


def _encode(fmt: str, size: tuple[int, int], mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, fmt)
    return buffer.getvalue()


for media_type, fmt in FORMATS.items():
    samples = [
        _encode(fmt, size, mode) for size in ((1, 1), (28, 28), (40, 30)) for mode in ("L", "RGB")
    ]
    schemathesis.openapi.media_type(media_type, st.sampled_from(samples))
