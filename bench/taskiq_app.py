"""The taskiq side of the benchmark (bench venv): taskiq with taskiq-nats'
JetStream broker and its NATS result backend, at its most reliable settings.

Configured from the environment (set by run.py):

  BENCH_NATS_URL   nats://127.0.0.1:PORT (a nats-server of its own, the same
                   binary Tandem embeds, sync_interval always or default)

Settings: PullBasedJetStreamBroker (a durable pull consumer, explicit acks:
a message is redelivered unless acked), file storage, and the worker run
with ``--ack-type when_saved`` (ack only after the result is in the
backend; taskiq's default, made explicit). The result backend is
taskiq-nats' NATSObjectStoreResultBackend (JetStream Object Store; the
package has no KV result backend). The broker's and the backend's JetStream
writes are all publish-acknowledged, so with ``sync_interval: always`` every
acknowledged write is on disk.

taskiq serialises messages with ``model_dump(mode="json")`` before its
serializer sees them, so bytes cannot travel as bytes: arguments and results
are base64 text (what a taskiq user does). Decoding and encoding it is part
of the task's cost, as it would be in an application.
"""

from __future__ import annotations

import base64
import os
import sys

from nats.js.api import StorageType, StreamConfig
from taskiq_nats import NATSObjectStoreResultBackend, PullBasedJetStreamBroker

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import transforms  # noqa: E402

NATS_URL = os.environ.get("BENCH_NATS_URL", "nats://127.0.0.1:4222")
SUBJECT = "bench.taskiq"
STREAM = "TASKIQ_BENCH"
RESULTS_BUCKET = "taskiq_results"

result_backend: NATSObjectStoreResultBackend[str] = NATSObjectStoreResultBackend(
    servers=NATS_URL, bucket_name=RESULTS_BUCKET
)
broker = PullBasedJetStreamBroker(
    servers=NATS_URL,
    subject=SUBJECT,
    stream_name=STREAM,
    durable="taskiq_bench",
    stream_config=StreamConfig(name=STREAM, subjects=[SUBJECT], storage=StorageType.FILE),
).with_result_backend(result_backend)


@broker.task(task_name="bench.sha256")
def sha256(data_b64: str) -> str:
    return transforms.sha256_hex(base64.b64decode(data_b64))


@broker.task(task_name="bench.thumbnail")
def thumbnail(data_b64: str, box: int = 256, fmt: str = "png") -> str:
    return base64.b64encode(
        transforms.pillow_thumbnail(base64.b64decode(data_b64), box, fmt)
    ).decode()
