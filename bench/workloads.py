"""Deterministic workload generation for the side-by-side benchmark.

Every input is a pure function of (workload, index, seed): the same bytes on
every machine and every run, so Tandem, Celery and the in-process native
figure all see the same inputs. Only the image encoding needs Pillow (bench
venv); everything else is the standard library, so the unit tests run in the
main dev venv.

Command line (used by run.py, run with the bench venv for images):

    python bench/workloads.py generate --out DIR [--quick] [--only NAME ...]

writes DIR/<name>/manifest.json plus the inputs (one file per image or text
blob, one concatenated file for the tiny payloads) and prints the manifest
of each workload.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

# Bump when any generator changes: cached inputs of another version are
# regenerated, and the JSON results carry it.
GENERATOR_VERSION = 1
DEFAULT_SEED = 20261123

TINY_SIZE = 1024
TEXT_SIZE = 1 << 20
IMAGE_WIDTH, IMAGE_HEIGHT = 1920, 1080
THUMB_BOX = 256


@dataclass(frozen=True)
class Workload:
    """One workload: what to run, on how many inputs, and how it is counted."""

    name: str
    count: int
    # Tandem pipeline (ComputeService steps). Params are strings, as on the wire.
    steps: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    # Celery task name (bench/celery_app.py) and its keyword arguments.
    celery_task: str
    celery_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    # What the headline figure counts: "jobs" (jobs/s), "images" (images/s)
    # or "MB" (input megabytes per second, 1 MB = 10**6 bytes).
    unit: str = "jobs"
    # The input set it runs on (workloads.py generate NAME): its own name
    # unless it reuses another workload's inputs (the user-* workloads).
    source: str = ""

    @property
    def inputs(self) -> str:
        return self.source or self.name

    def steps_as_dicts(self) -> list[dict[str, Any]]:
        return [{"op": op, "params": dict(params)} for op, params in self.steps]


def _steps(
    *items: tuple[str, dict[str, str]],
) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    return tuple((op, tuple(sorted(p.items()))) for op, p in items)


def plan(quick: bool = False) -> dict[str, Workload]:
    """The throughput workloads with their sizes (full or --quick)."""
    return {
        "tiny": Workload(
            name="tiny",
            count=400 if quick else 20000,
            steps=_steps(("hash.sha256", {})),
            celery_task="bench.sha256",
            unit="jobs",
        ),
        "thumbnails": Workload(
            name="thumbnails",
            count=12 if quick else 500,
            # Param names are resolved against the server's ListOps by the
            # Tandem driver (tandem_driver.resolve_thumbnail_params).
            steps=_steps(
                (
                    "image.thumbnail",
                    {"width": str(THUMB_BOX), "height": str(THUMB_BOX), "format": "png"},
                )
            ),
            celery_task="bench.thumbnail",
            celery_kwargs={"box": THUMB_BOX, "fmt": "png"},
            unit="images",
        ),
        "compress": Workload(
            name="compress",
            count=8 if quick else 200,
            steps=_steps(("compress.zstd", {"level": "3"})),
            celery_task="bench.zstd",
            celery_kwargs={"level": 3},
            unit="MB",
        ),
        # User ops: the same Python functions as Celery's tasks
        # (bench/transforms.py), run by Tandem's Python op worker
        # (bench/user_ops.py) instead of the Rust compute service.
        "user-tiny": Workload(
            name="user-tiny",
            count=400 if quick else 20000,
            steps=_steps(("bench.sha256", {})),
            celery_task="bench.sha256",
            unit="jobs",
            source="tiny",
        ),
        "user-thumbnails": Workload(
            name="user-thumbnails",
            count=12 if quick else 500,
            steps=_steps(("bench.thumbnail_pillow", {"box": str(THUMB_BOX), "fmt": "png"})),
            celery_task="bench.thumbnail",
            celery_kwargs={"box": THUMB_BOX, "fmt": "png"},
            unit="images",
            source="thumbnails",
        ),
    }


# The user-op workloads (Tandem's Python worker) and the workload Celery runs
# for each: Celery's tasks are Python functions already, so its rows of the
# counterpart (the same task on the same inputs) are the reference.
USER_WORKLOADS: dict[str, str] = {
    "user-tiny": "tiny",
    "user-latency": "latency",
    "user-thumbnails": "thumbnails",
}


def throughput_spec(workload: str) -> str:
    """The plan() entry a driver's --workload runs: latency runs the tiny
    pipeline, user-latency the user-tiny one."""
    return {"latency": "tiny", "user-latency": "user-tiny"}.get(workload, workload)


def input_set(workload: str) -> str:
    """The generated input set a driver's --workload reads."""
    return plan()[throughput_spec(workload)].inputs


def celery_counterpart(workload: str) -> str:
    """The workload Celery runs in place of ``workload`` (itself unless a user-* one)."""
    return USER_WORKLOADS.get(workload, workload)


# Other spellings a server may use for the benchmark's params; the first one
# the op declares (ListOps) is used. Unknown params are rejected by Tandem, so
# the Tandem and native drivers resolve names before sending.
PARAM_ALIASES: dict[str, tuple[str, ...]] = {
    "width": ("width", "max_width", "w", "size", "max_size", "box"),
    "height": ("height", "max_height", "h"),
    "format": ("format", "output_format", "fmt", "output"),
    "level": ("level", "compression_level"),
}


def resolve_params(params: dict[str, str], declared: "set[str] | None") -> dict[str, str]:
    """Maps the benchmark's param names onto the names an op declares.

    With declared=None (unknown) the params are returned as they are. A name
    with no declared spelling is dropped (the op's default applies), and two
    benchmark names mapping to one declared name keep the first."""
    if declared is None:
        return dict(params)
    out: dict[str, str] = {}
    for name, value in params.items():
        for alias in PARAM_ALIASES.get(name, (name,)):
            if alias in declared:
                out.setdefault(alias, value)
                break
    return out


def resolve_steps(
    steps: list[dict[str, Any]], declared: "dict[str, set[str]] | None"
) -> list[dict[str, Any]]:
    """resolve_params for each step; declared maps op name to param names."""
    out = []
    for s in steps:
        names = None if declared is None else declared.get(s["op"])
        if declared is not None and names is None:
            raise ValueError(f"the server has no op {s['op']!r}")
        out.append({"op": s["op"], "params": resolve_params(s.get("params", {}), names)})
    return out


# ---------------------------------------------------------------- tiny


def _rng(workload: str, index: int, seed: int) -> random.Random:
    # A string seed is hashed with SHA-512 by random.Random: stable across
    # Python versions and platforms.
    return random.Random(f"tandem-bench/{GENERATOR_VERSION}/{workload}/{seed}/{index}")


def tiny_payload(index: int, seed: int = DEFAULT_SEED, size: int = TINY_SIZE) -> bytes:
    return _rng("tiny", index, seed).randbytes(size)


def tiny_payloads(count: int, seed: int = DEFAULT_SEED, size: int = TINY_SIZE) -> list[bytes]:
    return [tiny_payload(i, seed, size) for i in range(count)]


# ---------------------------------------------------------------- text

_CONSONANTS = "bcdfghklmnprstvwz"
_VOWELS = "aeiou"


def _vocabulary(seed: int, size: int = 4000) -> list[str]:
    rng = _rng("vocab", 0, seed)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < size:
        syllables = rng.choice((1, 1, 2, 2, 2, 3, 3, 4))
        w = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))
        if rng.random() < 0.3:
            w += rng.choice(_CONSONANTS)
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def text_blob(index: int, seed: int = DEFAULT_SEED, size: int = TEXT_SIZE) -> bytes:
    """About-English-like text: Zipf-distributed words, sentences, paragraphs.

    Compresses with zstd -3 to roughly a third, like real prose."""
    vocab = _vocabulary(seed)
    # Zipf weights (s = 1.1) as cumulative weights for random.choices.
    cum: list[float] = []
    acc = 0.0
    for rank in range(1, len(vocab) + 1):
        acc += 1.0 / rank**1.1
        cum.append(acc)
    rng = _rng("text", index, seed)
    parts: list[str] = []
    total = 0
    while total < size:
        n = rng.randint(6, 22)
        words = rng.choices(vocab, cum_weights=cum, k=n)
        sentence = " ".join(words).capitalize() + rng.choice(".....?!;:")
        if rng.random() < 0.12:
            sentence += "\n\n"
        else:
            sentence += " "
        parts.append(sentence)
        total += len(sentence)
    return "".join(parts).encode("ascii")[:size]


# ---------------------------------------------------------------- images


def image_recipe(index: int, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """Pure data describing image `index`: rendered by render_jpeg (Pillow).

    A low-resolution colour field upscaled (smooth gradients), shapes with
    hard edges, and grain, so the JPEG has the detail of a photo-like frame
    (a few hundred KB at 1920x1080)."""
    rng = _rng("image", index, seed)
    shapes = []
    for _ in range(rng.randint(25, 45)):
        kind = rng.choice(("ellipse", "rectangle", "line", "polygon"))
        x0, y0 = rng.randrange(IMAGE_WIDTH), rng.randrange(IMAGE_HEIGHT)
        x1, y1 = x0 + rng.randint(-500, 500), y0 + rng.randint(-300, 300)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        extra = [(rng.randrange(IMAGE_WIDTH), rng.randrange(IMAGE_HEIGHT)) for _ in range(3)]
        shapes.append(
            {
                "kind": kind,
                "box": (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)),
                "colour": colour,
                "width": rng.randint(1, 12),
                "points": extra,
            }
        )
    return {
        "field": rng.randbytes(48 * 27 * 3),  # 48x27 RGB, upscaled to full size
        "grain": rng.randbytes(480 * 270),  # 480x270 L, upscaled, blended 12%
        "shapes": shapes,
        "quality": 88,
    }


def render_jpeg(index: int, seed: int = DEFAULT_SEED) -> bytes:
    import io

    from PIL import Image, ImageDraw  # bench venv only

    r = image_recipe(index, seed)
    img = Image.frombytes("RGB", (48, 27), r["field"]).resize(
        (IMAGE_WIDTH, IMAGE_HEIGHT), Image.Resampling.BICUBIC
    )
    draw = ImageDraw.Draw(img)
    for s in r["shapes"]:
        box, colour = s["box"], tuple(s["colour"])
        if s["kind"] == "ellipse":
            draw.ellipse(box, outline=colour, width=s["width"])
        elif s["kind"] == "rectangle":
            draw.rectangle(box, fill=colour)
        elif s["kind"] == "line":
            draw.line(box, fill=colour, width=s["width"])
        else:
            draw.polygon([tuple(p) for p in s["points"]], fill=colour)
    grain = Image.frombytes("L", (480, 270), r["grain"]).resize(
        (IMAGE_WIDTH, IMAGE_HEIGHT), Image.Resampling.BILINEAR
    )
    img = Image.blend(img, Image.merge("RGB", (grain, grain, grain)), 0.12)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=r["quality"])
    return out.getvalue()


# ---------------------------------------------------------------- on disk


def fingerprint(blobs: Iterable[bytes]) -> str:
    """SHA-256 over the length-prefixed inputs: one hex string per workload."""
    h = hashlib.sha256()
    for b in blobs:
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def generate(name: str, count: int, seed: int = DEFAULT_SEED) -> Iterator[bytes]:
    if name == "tiny":
        return (tiny_payload(i, seed) for i in range(count))
    if name == "compress":
        return (text_blob(i, seed) for i in range(count))
    if name == "thumbnails":
        return (render_jpeg(i, seed) for i in range(count))
    raise ValueError(f"unknown workload {name!r}")


def write_workload(out_dir: str, name: str, count: int, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """Writes the inputs of one workload under out_dir/name (reusing a cached
    set with the same name, count, seed and generator version)."""
    d = os.path.join(out_dir, name)
    m = _write(d, name, count, seed)
    return m


def _write(d: str, name: str, count: int, seed: int) -> dict[str, Any]:
    mpath = os.path.join(d, "manifest.json")
    try:
        with open(mpath) as f:
            m: dict[str, Any] = json.load(f)
        if (m.get("version"), m.get("count"), m.get("seed")) == (GENERATOR_VERSION, count, seed):
            return m
    except (OSError, ValueError):
        pass
    os.makedirs(d, exist_ok=True)
    sizes: list[int] = []
    h = hashlib.sha256()
    data_path = os.path.join(d, "inputs.bin")
    with open(data_path + ".part", "wb") as f:
        for blob in generate(name, count, seed):
            f.write(blob)
            sizes.append(len(blob))
            h.update(len(blob).to_bytes(8, "little"))
            h.update(blob)
    os.replace(data_path + ".part", data_path)
    m = {
        "name": name,
        "count": count,
        "seed": seed,
        "version": GENERATOR_VERSION,
        "sizes": sizes,
        "total_bytes": sum(sizes),
        "sha256": h.hexdigest(),
    }
    with open(mpath + ".part", "w") as f:
        json.dump(m, f)
    os.replace(mpath + ".part", mpath)
    return m


def load_workload(out_dir: str, name: str) -> tuple[dict[str, Any], list[bytes]]:
    """Reads back what write_workload wrote: (manifest, inputs)."""
    d = os.path.join(out_dir, name)
    with open(os.path.join(d, "manifest.json")) as f:
        m = json.load(f)
    blobs: list[bytes] = []
    with open(os.path.join(d, "inputs.bin"), "rb") as f:
        for size in m["sizes"]:
            b = f.read(size)
            if len(b) != size:
                raise ValueError(f"{name}: inputs.bin is truncated")
            blobs.append(b)
    return m, blobs


def poisson_schedule(rate: float, count: int, seed: int = DEFAULT_SEED) -> list[float]:
    """Send offsets (seconds from start) of an open-loop Poisson arrival
    process at `rate` jobs/s: deterministic for a (rate, count, seed)."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    rng = _rng(f"arrivals/{rate:.6f}", count, seed)
    t = 0.0
    out = []
    for _ in range(count):
        t += rng.expovariate(rate)
        out.append(t)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--out", required=True)
    g.add_argument("--quick", action="store_true")
    g.add_argument("--seed", type=int, default=DEFAULT_SEED)
    g.add_argument("--only", nargs="*", default=None)
    g.add_argument(
        "--count", action="append", default=[], metavar="NAME=N", help="override a count"
    )
    args = ap.parse_args(argv)
    p = plan(args.quick)
    counts = {k: w.count for k, w in p.items() if w.inputs == k}
    for kv in args.count:
        k, _, v = kv.partition("=")
        counts[k] = int(v)
    names = args.only or list(counts)
    for name in names:
        if name not in counts:
            raise SystemExit(f"generate: unknown input set {name!r} (one of {', '.join(counts)})")
    for name in names:
        # One cached set per (name, count), so quick and full runs keep theirs;
        # DIR/<name> is a symlink to the set in use (what the drivers read).
        m = _write(
            os.path.join(args.out, "sets", f"{name}-{counts[name]}-{args.seed}"),
            name,
            counts[name],
            args.seed,
        )
        link = os.path.join(args.out, name)
        if os.path.islink(link) or os.path.exists(link):
            if os.path.isdir(link) and not os.path.islink(link):
                import shutil

                shutil.rmtree(link)
            else:
                os.unlink(link)
        os.symlink(os.path.join("sets", f"{name}-{counts[name]}-{args.seed}"), link)
        print(json.dumps({k: v for k, v in m.items() if k != "sizes"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
