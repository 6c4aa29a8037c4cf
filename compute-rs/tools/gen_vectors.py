#!/usr/bin/env python3
"""Regenerates testdata/vectors.json, the shared transform vectors.

Inputs are made here (tiny PNG/GIF written by hand; JPEG/WebP made by the
native module from the PNG). Expected outputs come from independent Python
code where the standard library has it (sha256, gzip, crc32c below) and
otherwise from the current native module: the file then pins today's bytes so
that the Rust core, the native module and the end-to-end path stay
byte-identical. Review every diff of vectors.json by hand.

    python compute-rs/tools/gen_vectors.py [path/to/_native.so]
"""

from __future__ import annotations

import base64
import glob
import gzip
import hashlib
import importlib.util
import json
import struct
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_native(path: str | None):
    if path is None:
        from tandem import _native  # type: ignore

        return _native
    spec = importlib.util.spec_from_file_location("tandem._native", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def png(width: int, height: int, pixels: bytes | None = None, color_type: int = 2) -> bytes:
    """A PNG (8-bit RGB or RGBA) with a gradient unless pixels are given."""
    channels = {2: 3, 6: 4}[color_type]
    if pixels is None:
        rows = []
        for y in range(height):
            row = bytearray([0])
            for x in range(width):
                px = [(x * 255) // max(1, width - 1), (y * 255) // max(1, height - 1), (x * y) % 256, 200]
                row += bytes(px[:channels])
            rows.append(bytes(row))
        raw = b"".join(rows)
    else:
        raw = pixels

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height, with one tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# The classic 1x1 transparent GIF89a.
GIF_1X1 = bytes.fromhex(
    "47494638396101000100800000ffffff00000021f90401000000002c00000000010001000002024401003b"
)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def main() -> None:
    native = load_native(sys.argv[1] if len(sys.argv) > 1 else None)
    vectors: list[dict] = []

    def step(op: str, **params: object) -> dict:
        s: dict = {"op": op}
        if params:
            s["params"] = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}
        return s

    def run(steps, data, attempt=0, debug_ops=False) -> bytes:
        return native.run(steps, data, attempt=attempt, debug_ops=debug_ops)

    def ok(name, steps, data, expected: bytes | None = None, *, json_out=False, attempt=0, debug_ops=False):
        got = run(steps, data, attempt, debug_ops)
        if expected is not None and got != expected:
            raise SystemExit(f"{name}: native output differs from the independent expectation")
        v = {"name": name, "steps": steps, "input_b64": b64(data)}
        if attempt:
            v["attempt"] = attempt
        if debug_ops:
            v["debug_ops"] = True
        if json_out:
            v["expected_json"] = json.loads(got)
        else:
            v["expected_b64"] = b64(got)
        vectors.append(v)

    def err(name, steps, data, reason, code, *, attempt=0, debug_ops=False, message=True):
        try:
            run(steps, data, attempt, debug_ops)
        except native.TransformError as e:
            if e.reason != reason or e.code != code:
                raise SystemExit(f"{name}: got {e.reason}/{e.code} {e.message}, want {reason}/{code}")
            v = {"name": name, "steps": steps, "input_b64": b64(data)}
            if attempt:
                v["attempt"] = attempt
            if debug_ops:
                v["debug_ops"] = True
            v["expected_error"] = {"reason": reason, "code": code}
            if message:
                v["expected_error"]["message"] = e.message
            vectors.append(v)
            return
        raise SystemExit(f"{name}: expected an error")

    abc = b"abc"
    text = "The quick brown fox jumps over the lazy dog. The dog sleeps.\nÉté déjà vu — naïve café!\n".encode()
    blob = bytes((i * 31 + i // 7) % 256 for i in range(900)) + b"tandem compute " * 60

    # --- hashes (raw digest bytes; integers big-endian)
    ok("sha256 abc", [step("hash.sha256")], abc, hashlib.sha256(abc).digest())
    ok("sha256 empty", [step("hash.sha256")], b"", hashlib.sha256(b"").digest())
    ok("sha256 blob", [step("hash.sha256")], blob, hashlib.sha256(blob).digest())
    ok("blake3 empty", [step("hash.blake3")], b"",
       bytes.fromhex("af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"))
    ok("blake3 abc", [step("hash.blake3")], abc)
    ok("xxh3_64 empty", [step("hash.xxh3_64")], b"", bytes.fromhex("2d06800538d394c2"))
    ok("xxh3_64 abc", [step("hash.xxh3_64")], abc)
    ok("crc32c check value", [step("hash.crc32c")], b"123456789", struct.pack(">I", 0xE3069283))
    ok("crc32c blob", [step("hash.crc32c")], blob, struct.pack(">I", crc32c(blob)))

    # --- compression: decompress of independently made streams, round trips
    ok("decompress.gzip python gzip", [step("decompress.gzip")], gzip.compress(blob, mtime=0), blob)
    ok("decompress.gzip multi-member", [step("decompress.gzip")],
       gzip.compress(b"hello ", mtime=0) + gzip.compress(b"world", mtime=0), b"hello world")
    for fmt, params in (("zstd", {"level": 19}), ("gzip", {"level": 9}), ("lz4", {})):
        ok(f"{fmt} round trip", [step(f"compress.{fmt}", **params), step(f"decompress.{fmt}")], blob, blob)
        ok(f"compress.{fmt} bytes", [step(f"compress.{fmt}", **params)], blob)
        comp = run([step(f"compress.{fmt}", **params)], blob)
        ok(f"decompress.{fmt} pinned", [step(f"decompress.{fmt}")], comp, blob)
        # Bomb: 1 MiB of zeros compresses to a few hundred bytes; cap 1000.
        bomb = run([step(f"compress.{fmt}")], bytes(1 << 20))
        err(f"decompress.{fmt} bomb over cap", [step(f"decompress.{fmt}", max_output_bytes=1000)], bomb,
            "OUTPUT_TOO_LARGE", 3)
        ok(f"decompress.{fmt} exactly at cap", [step(f"decompress.{fmt}", max_output_bytes=len(blob))], comp, blob)
        err(f"decompress.{fmt} one under size", [step(f"decompress.{fmt}", max_output_bytes=len(blob) - 1)], comp,
            "OUTPUT_TOO_LARGE", 3)
        err(f"decompress.{fmt} garbage", [step(f"decompress.{fmt}")], b"this is not compressed at all",
            "INPUT_CORRUPT", 3, message=False)
        err(f"decompress.{fmt} truncated", [step(f"decompress.{fmt}")], comp[: len(comp) // 2],
            "INPUT_CORRUPT", 3, message=False)
        err(f"decompress.{fmt} empty", [step(f"decompress.{fmt}")], b"", "INPUT_CORRUPT", 3)
    # Concatenated frames (members) all decode; bytes after the last complete
    # frame that are not a frame are INPUT_CORRUPT; the cap counts every frame.
    for fmt in ("zstd", "lz4"):
        two = run([step(f"compress.{fmt}")], b"hello ") + run([step(f"compress.{fmt}")], b"world")
        ok(f"decompress.{fmt} two frames", [step(f"decompress.{fmt}")], two, b"hello world")
        streamed = b"".join(run([step(f"compress.{fmt}")], part) for part in (b"a", b"", b"bc", b"def"))
        ok(f"decompress.{fmt} frames of a streaming writer", [step(f"decompress.{fmt}")], streamed, b"abcdef")
    for fmt in ("zstd", "gzip", "lz4"):
        part = run([step(f"compress.{fmt}")], b"z" * 600)
        unit = "member" if fmt == "gzip" else "frame"
        err(f"decompress.{fmt} cap counts every {unit}", [step(f"decompress.{fmt}", max_output_bytes=1000)],
            part + part, "OUTPUT_TOO_LARGE", 3)
        comp = run([step(f"compress.{fmt}")], abc)
        for what, tail in (("trailing garbage", b"garbage"), ("trailing zero bytes", bytes(4)), ("trailing byte", b"x")):
            err(f"decompress.{fmt} {what}", [step(f"decompress.{fmt}")], comp + tail, "INPUT_CORRUPT", 3,
                message=False)
    lz4_ab = run([step("compress.lz4")], b"ab")
    skippable = struct.pack("<II", 0x184D2A5F, 3) + b"xyz"
    ok("decompress.lz4 skippable frame is skipped", [step("decompress.lz4")], lz4_ab + skippable + lz4_ab, b"abab")
    # One block, then the end mark and content checksum (8 bytes) cut off: a
    # cut at a block boundary is still a truncated frame.
    err("decompress.lz4 cut at a block boundary", [step("decompress.lz4")], lz4_ab[:-8], "INPUT_CORRUPT", 3)
    err("decompress.lz4 magic number only", [step("decompress.lz4")], lz4_ab[:4], "INPUT_CORRUPT", 3)
    err("compress.zstd level out of range", [step("compress.zstd", level=40)], abc, "PARAM_OUT_OF_RANGE", 3)
    err("compress.gzip level not an int", [step("compress.gzip", level="high")], abc, "PARAM_INVALID", 3)

    # --- images
    png_rgb = png(40, 30)
    png_rgba = png(16, 16, color_type=6)
    jpeg = run([step("image.thumbnail", width=40, height=30, fit="fill", format="jpeg", quality=90)], png_rgb)
    webp = run([step("image.thumbnail", width=40, height=30, fit="fill", format="webp")], png_rgb)
    for name, data in (("png", png_rgb), ("png rgba", png_rgba), ("jpeg", jpeg), ("webp", webp), ("gif", GIF_1X1)):
        ok(f"image.info {name}", [step("image.info")], data, json_out=True)
    ok("image.thumbnail png contain", [step("image.thumbnail", width=20, height=20)], png_rgb)
    ok("image.thumbnail contain size", [step("image.thumbnail", width=20, height=20), step("image.info")], png_rgb,
       json_out=True)
    ok("image.thumbnail cover size", [step("image.thumbnail", width=10, height=25, fit="cover"), step("image.info")],
       png_rgb, json_out=True)
    ok("image.thumbnail fill size", [step("image.thumbnail", width=7, height=9, fit="fill"), step("image.info")],
       png_rgb, json_out=True)
    ok("image.thumbnail never enlarges", [step("image.thumbnail", width=400, height=400), step("image.info")],
       png_rgb, json_out=True)
    ok("image.thumbnail jpeg to webp", [step("image.thumbnail", width=8, height=8, format="webp"), step("image.info")],
       jpeg, json_out=True)
    ok("image.thumbnail webp to jpeg", [step("image.thumbnail", width=8, height=8, format="jpeg"), step("image.info")],
       webp, json_out=True)
    ok("image.thumbnail gif rgba", [step("image.thumbnail", width=4, height=4), step("image.info")], GIF_1X1,
       json_out=True)
    ok("image.thumbnail webp bytes", [step("image.thumbnail", width=10, height=10, format="webp")], png_rgba)
    ok("image.thumbnail jpeg bytes", [step("image.thumbnail", width=10, height=10, format="jpeg", quality=50)],
       png_rgb)
    ok("pipeline gzip -> thumbnail -> blake3",
       [step("decompress.gzip"), step("image.thumbnail", width=12, height=12), step("hash.blake3")],
       gzip.compress(png_rgb, mtime=0))
    err("image.thumbnail corrupt bytes", [step("image.thumbnail")], b"definitely not an image", "INPUT_CORRUPT", 3)
    err("image.thumbnail truncated png", [step("image.thumbnail")], png_rgb[:60], "INPUT_CORRUPT", 3, message=False)
    err("image.info truncated png header", [step("image.info")], png_rgb[:20], "INPUT_CORRUPT", 3, message=False)
    err("image.thumbnail dimension bomb", [step("image.thumbnail")], png_header_only(100_000, 10),
        "OUTPUT_TOO_LARGE", 3)
    err("image.thumbnail pixel bomb", [step("image.thumbnail")], png_header_only(10_000, 10_000),
        "OUTPUT_TOO_LARGE", 3)
    ok("image.info of a pixel bomb reads the header only", [step("image.info")], png_header_only(10_000, 10_000),
       json_out=True)
    err("image.thumbnail width out of range", [step("image.thumbnail", width=0)], png_rgb, "PARAM_OUT_OF_RANGE", 3)
    err("image.thumbnail box over 2048", [step("image.thumbnail", width=4096)], png_rgb, "PARAM_OUT_OF_RANGE", 3)
    ok("image.thumbnail cover of a sliver", [step("image.thumbnail", width=64, height=64, fit="cover"), step("image.info")],
       png(200, 2), json_out=True)
    err("image.thumbnail bad format", [step("image.thumbnail", format="bmp")], png_rgb, "PARAM_INVALID", 3)

    # --- chunking, text
    ok("chunk.fastcdc small sizes", [step("chunk.fastcdc", min_size=64, avg_size=256, max_size=1024)], blob,
       json_out=True)
    ok("chunk.fastcdc empty", [step("chunk.fastcdc")], b"", json_out=True)
    ok("chunk.fastcdc one chunk", [step("chunk.fastcdc")], abc, json_out=True)
    err("chunk.fastcdc min above avg", [step("chunk.fastcdc", min_size=4096, avg_size=1024, max_size=8192)], blob,
        "PARAM_INVALID", 3)
    err("chunk.fastcdc max below range", [step("chunk.fastcdc", max_size=10)], blob, "PARAM_OUT_OF_RANGE", 3)
    ok("text.stats", [step("text.stats", top_k=3)], text, json_out=True)
    ok("text.stats empty", [step("text.stats")], b"", json_out=True)
    ok("text.stats no trailing newline", [step("text.stats", top_k=0)], b"one two\nthree", json_out=True)
    err("text.stats invalid utf-8", [step("text.stats")], b"ok \xff\xfe", "INPUT_CORRUPT", 3)

    # --- pipelines and request errors
    ok("pipeline zstd -> gzip -> unwrap -> sha256",
       [step("compress.zstd"), step("compress.gzip"), step("decompress.gzip"), step("decompress.zstd"),
        step("hash.sha256")], blob, hashlib.sha256(blob).digest())
    err("unknown op", [step("hash.md5")], abc, "UNKNOWN_OP", 3)
    err("unknown op in step 2", [step("hash.sha256"), step("compress.zstd"), step("nope")], abc, "UNKNOWN_OP", 3)
    err("unknown param", [step("hash.sha256", level=1)], abc, "PARAM_INVALID", 3)
    # Errors quote at most 64 bytes of a caller's value (then "…(N bytes)").
    # Names stay within the identifier limits every API edge enforces (op 128,
    # param name 64: docs/ARCHITECTURE.md), so all three paths answer alike.
    err("unknown op with a long name is quoted, not echoed", [step("x" * 100)], abc, "UNKNOWN_OP", 3)
    err("unknown param at the name limit", [step("hash.sha256", **{"p" * 64: 1})], abc, "PARAM_INVALID", 3)
    err("long int param value is quoted", [step("compress.zstd", level="9" * 100)], abc, "PARAM_INVALID", 3)
    err("long in-syntax int out of range is quoted", [step("compress.zstd", level="0" * 100 + "40")], abc,
        "PARAM_OUT_OF_RANGE", 3)
    err("empty pipeline", [], abc, "REQUEST_INVALID", 3)
    err("too many steps", [step("hash.sha256")] * 17, abc, "REQUEST_INVALID", 3)
    ok("sixteen steps is the limit", [step("compress.lz4"), step("decompress.lz4")] * 7 + [step("hash.sha256")] * 2,
       abc)
    err("debug op without debug_ops", [step("debug.fail")], abc, "UNKNOWN_OP", 3)

    # --- identifier limits (docs/ARCHITECTURE.md "Identifiers"), checked at
    # every API edge before any op lookup: REQUEST_INVALID naming the field.
    # At limit - 1 and at the limit the request goes on to the op lookup and
    # the param parser; at limit + 1 it is refused.
    for n in (127, 128):
        err(f"op name of {n} bytes is looked up", [step("x" * n)], abc, "UNKNOWN_OP", 3)
    err("op name of 129 bytes is refused", [step("x" * 129)], abc, "REQUEST_INVALID", 3)
    for n in (63, 64):
        err(f"param name of {n} bytes is looked up", [step("hash.sha256", **{"p" * n: 1})], abc, "PARAM_INVALID", 3)
    err("param name of 65 bytes is refused", [step("hash.sha256", **{"p" * 65: 1})], abc, "REQUEST_INVALID", 3)
    # An int with leading zeros: parsed as 3 up to the value limit.
    for n in (4095, 4096):
        ok(f"param value of {n} bytes is parsed", [step("compress.zstd", level="0" * (n - 1) + "3"),
           step("decompress.zstd")], abc, abc)
    err("param value of 4097 bytes is refused", [step("compress.zstd", level="0" * 4096 + "3")], abc,
        "REQUEST_INVALID", 3)
    err("64 params per step are looked up", [step("hash.sha256", **{f"p{i}": 1 for i in range(64)})], abc,
        "PARAM_INVALID", 3)
    err("65 params per step are refused", [step("hash.sha256", **{f"p{i}": 1 for i in range(65)})], abc,
        "REQUEST_INVALID", 3)
    hostile_ops = {
        "wildcard *": "hash.*", "wildcard >": "hash.>", "space": "hash sha256", "path": "../..",
        "slash": "hash/sha256", "newline": "hash.sha256\n", "NUL": "hash\x00sha256", "DEL": "hash.sha256\x7f",
        "non-ASCII": "hash.shä256", "leading dot": ".hash.sha256", "trailing dot": "hash.sha256.",
        "empty token": "hash..sha256", "empty": "",
    }
    for what, op in hostile_ops.items():
        err(f"op name with {what} is refused", [step("hash.sha256"), step(op)], abc, "REQUEST_INVALID", 3)
    for what, name in {"wildcard *": "*", "wildcard >": ">", "space": "a b", "path": "../..",
                       "control character": "lev\x01el", "empty": ""}.items():
        err(f"param name with {what} is refused", [step("compress.zstd", **{name: 3})], abc, "REQUEST_INVALID", 3)
    for what, value in {"newline": "3\n", "NUL": "\x00", "tab": "\t3", "DEL": "3\x7f", "C1 control": "3\x85"}.items():
        err(f"param value with {what} is refused", [step("compress.zstd", level=value)], abc, "REQUEST_INVALID", 3)
    # Values are free text: * > spaces and ../.. pass the identifier check.
    err("param value * > ../.. is free text", [step("compress.zstd", level="* > ../..")], abc, "PARAM_INVALID", 3)

    # --- debug ops (debug_ops = true)
    err("debug.fail default", [step("debug.fail")], abc, "INJECTED_FAULT", 14, debug_ops=True)
    err("debug.fail while attempt <= until", [step("debug.fail", code="RESOURCE_EXHAUSTED", until_attempt=2)], abc,
        "INJECTED_FAULT", 8, attempt=2, debug_ops=True)
    ok("debug.fail passes after until_attempt", [step("debug.fail", until_attempt=2), step("hash.sha256")], abc,
       hashlib.sha256(abc).digest(), attempt=3, debug_ops=True)
    ok("debug.sleep 0 passes through", [step("debug.sleep", ms=0)], abc, abc, debug_ops=True)
    err("debug.panic is INTERNAL", [step("debug.panic")], abc, "INTERNAL_ERROR", 13, debug_ops=True, message=False)

    doc = {
        "version": 1,
        "description": (
            "Shared transform vectors (see docs/OPS.md). Each vector runs `steps` over base64 `input_b64` and "
            "expects `expected_b64` (exact bytes), `expected_json` (compare parsed JSON) or `expected_error` "
            "(reason and gRPC code; `message`, when present, is the exact text). Optional: `attempt` "
            "(TransformRequest.attempt, default 0) and `debug_ops` (needs --enable-debug-ops / debug_ops=True). "
            "Regenerate with compute-rs/tools/gen_vectors.py."
        ),
        "vectors": vectors,
    }
    out = ROOT / "testdata" / "vectors.json"
    out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(vectors)} vectors, {out.stat().st_size} bytes to {out}")


if __name__ == "__main__":
    main()
