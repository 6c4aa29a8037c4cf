"""Request building and batching shared by the sync and asyncio clients."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf import duration_pb2

from tandem._errors import InvalidJob
from tandem._types import Payload, Step, StepsLike, read_payload, to_steps
from tandem.v1 import jobs_pb2

__all__ = ["JobSpec", "DEFAULT_ADDRESS", "default_address", "channel_options"]

DEFAULT_ADDRESS = "127.0.0.1:50051"

_I = TypeVar("_I")

# Largest message the client sends or accepts. The compute service's default
# request limit is 64 MiB; a little more leaves room for the envelope so the
# server, not the client, is the one that names the limit in its error.
MAX_MESSAGE_BYTES = 80 * 1024 * 1024

# Largest response metadata the client accepts. A status (code, message,
# ErrorInfo metadata) travels in trailing metadata, where gRPC's default limits
# (8 KiB soft, 16 KiB hard) drop a status with a long message and answer
# RESOURCE_EXHAUSTED instead, which would read as overload. 16 MiB holds a
# 1 MiB message twice over (header and details) even when percent-encoded.
MAX_METADATA_BYTES = 16 * 1024 * 1024

# SubmitJobs batches stay below this many payload bytes so a batch fits the
# orchestrator's gRPC message limit; a payload larger than this goes alone.
BATCH_BYTES = 3 * 1024 * 1024
BATCH_ITEMS = 256


def default_address() -> str:
    """``$TANDEM_ADDRESS`` or ``127.0.0.1:50051``."""
    return os.environ.get("TANDEM_ADDRESS") or DEFAULT_ADDRESS


def channel_target(address: str) -> tuple[str, list[tuple[str, str]]]:
    """The gRPC target and extra options for an address.

    ``host:port`` is used as is. A comma-separated list of IP:port
    (``127.0.0.1:50051,127.0.0.1:50061``) and a ``dns:///host:port`` name
    with several records are balanced round-robin, so calls go on through
    the live orchestrators when one is down.
    """
    address = address.strip()
    if address.startswith("dns:"):
        return address, [("grpc.lb_policy_name", "round_robin")]
    parts = [p.strip() for p in address.split(",") if p.strip()]
    if len(parts) > 1:
        scheme = "ipv6" if any(p.startswith("[") for p in parts) else "ipv4"
        if not all(_is_ip_port(p) for p in parts):
            raise ValueError(
                f"address list {address!r}: give IP:port entries, or one dns:///host:port name"
            )
        return f"{scheme}:{','.join(parts)}", [("grpc.lb_policy_name", "round_robin")]
    return address, []


def _is_ip_port(text: str) -> bool:
    import ipaddress

    host, _, port = text.rpartition(":")
    if not port.isdigit():
        return False
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_metadata_size", MAX_METADATA_BYTES),
        ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
        # Keep idle streams (WatchJobs) alive through NAT/proxies and notice
        # a dead peer within ~30 s.
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 0),
        # Reconnect quickly after a server restart.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


@dataclass
class JobSpec:
    """One job for :meth:`Client.submit_many`.

    ``idempotency_key`` is generated when not given, so that retrying a
    batch can never create a job twice.
    """

    steps: StepsLike
    payload: Payload = b""
    queue: str = ""
    idempotency_key: str | None = None
    max_attempts: int | None = None
    timeout: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


def new_idempotency_key() -> str:
    return "auto-" + uuid.uuid4().hex


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def submit_request(
    steps: StepsLike,
    payload: Payload,
    *,
    queue: str = "",
    idempotency_key: str | None = None,
    max_attempts: int | None = None,
    timeout: float | None = None,
    labels: Mapping[str, str] | None = None,
) -> jobs_pb2.SubmitJobRequest:
    """Builds a SubmitJobRequest; generates the idempotency key if absent."""
    step_list: list[Step] = to_steps(steps)
    req = jobs_pb2.SubmitJobRequest(
        queue=queue,
        steps=[s.to_proto() for s in step_list],
        payload=read_payload(payload),
        idempotency_key=idempotency_key or new_idempotency_key(),
        max_attempts=max_attempts or 0,
        labels={str(k): str(v) for k, v in (labels or {}).items()},
    )
    if timeout is not None:
        if timeout <= 0:
            raise ValueError("job timeout must be positive")
        req.timeout.CopyFrom(duration(timeout))
    return req


def check_size(req: jobs_pb2.SubmitJobRequest, max_message_bytes: int) -> None:
    """Refuses, before sending, a payload the channel could never carry (the
    transport would answer RESOURCE_EXHAUSTED, which reads as overload)."""
    limit = max_message_bytes - 64 * 1024
    if len(req.payload) > limit:
        raise InvalidJob(
            f"payload is {len(req.payload)} bytes, more than this client's message limit "
            f"of {limit} bytes (max_message_bytes)",
            reason="PAYLOAD_TOO_LARGE",
            metadata={"field": "payload", "limit": str(limit), "actual": str(len(req.payload))},
        )


def spec_request(
    spec: JobSpec | jobs_pb2.SubmitJobRequest, default_queue: str
) -> jobs_pb2.SubmitJobRequest:
    if isinstance(spec, jobs_pb2.SubmitJobRequest):
        if not spec.idempotency_key:
            spec.idempotency_key = new_idempotency_key()
        return spec
    return submit_request(
        spec.steps,
        spec.payload,
        queue=spec.queue or default_queue,
        idempotency_key=spec.idempotency_key,
        max_attempts=spec.max_attempts,
        timeout=spec.timeout,
        labels=spec.labels,
    )


def batches(
    requests: Iterable[tuple[int, jobs_pb2.SubmitJobRequest]],
    max_items: int = BATCH_ITEMS,
    max_bytes: int = BATCH_BYTES,
) -> Iterator[list[tuple[int, jobs_pb2.SubmitJobRequest]]]:
    """Cuts (index, request) pairs into batches bounded by count and bytes."""
    return bounded_groups(requests, lambda item: len(item[1].payload) + 256, max_items, max_bytes)


def bounded_groups(
    items: Iterable[_I], size: Callable[[_I], int], max_items: int, max_bytes: int
) -> Iterator[list[_I]]:
    """Cuts ``items``, in order, into groups of at most ``max_items`` whose
    ``size`` sum stays within ``max_bytes`` (an item larger than that goes alone)."""
    group: list[_I] = []
    total = 0
    for item in items:
        n = size(item)
        if group and (len(group) >= max_items or total + n > max_bytes):
            yield group
            group, total = [], 0
        group.append(item)
        total += n
    if group:
        yield group
