#!/usr/bin/env python3
"""Checks testdata/vectors.json against the installed ``tandem._native``.

A stand-alone copy of what the native-module tests do, for quick checks
after a Rust change: ``.venv/bin/python compute-rs/tools/check_vectors_native.py``.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

from tandem import _native

VECTORS = Path(__file__).resolve().parents[2] / "testdata" / "vectors.json"


def main() -> int:
    doc = json.loads(VECTORS.read_text())
    failed = []
    for v in doc["vectors"]:
        data = base64.b64decode(v["input_b64"])
        try:
            out = _native.run(v["steps"], data, attempt=v.get("attempt", 0), debug_ops=v.get("debug_ops", False))
        except _native.TransformError as e:
            want = v.get("expected_error")
            ok = (
                want is not None
                and want["reason"] == e.reason
                and want["code"] == e.code
                and want.get("message", e.message) == e.message
            )
        else:
            if "expected_b64" in v:
                ok = out == base64.b64decode(v["expected_b64"])
            elif "expected_json" in v:
                ok = json.loads(out) == v["expected_json"]
            else:
                ok = False
        if not ok:
            failed.append(v["name"])
    print(f"{len(doc['vectors']) - len(failed)} passed, {len(failed)} failed")
    for name in failed:
        print("FAILED:", name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
