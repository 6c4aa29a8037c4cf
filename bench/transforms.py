"""The Python bodies of the benchmark's user-code tasks, shared by both systems.

Celery's tasks (bench/celery_app.py, bench venv) and Tandem's Python ops
(bench/user_ops.py, served by ``tandem worker``, main venv) call these very
functions, so the two systems run exactly the same code on the same inputs;
only the machinery around it differs. Pillow is imported when a thumbnail is
made (it is in both venvs, at the same pinned version).
"""

from __future__ import annotations

import hashlib
import io


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pillow_thumbnail(data: bytes, box: int = 256, fmt: str = "png") -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        # Image.thumbnail keeps the aspect ratio, lets the JPEG decoder scale
        # down in the DCT (draft mode) and resizes with a Lanczos filter:
        # what a Celery user would write.
        img.thumbnail((box, box), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        img.convert("RGB").save(out, format=fmt.upper())
    return out.getvalue()
