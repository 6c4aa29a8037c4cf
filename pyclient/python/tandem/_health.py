"""gRPC health checking (``grpc.health.v1.Health/Check``) without the
grpcio-health-checking package: the two messages are one field each."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

_CHECK = "/grpc.health.v1.Health/Check"
SERVING = 1


def encode_request(service: str) -> bytes:
    # HealthCheckRequest { string service = 1; }
    data = service.encode()
    if not data:
        return b""
    if len(data) > 127:
        raise ValueError("service name too long")
    return b"\x0a" + bytes([len(data)]) + data


def decode_status(data: bytes) -> int:
    # HealthCheckResponse { ServingStatus status = 1; } (a one-byte varint)
    if len(data) >= 2 and data[0] == 0x08:
        return data[1]
    return 0  # UNKNOWN


def health_call(channel: grpc.Channel | grpc.aio.Channel) -> Any:
    """The Check method on ``channel`` (sync or asyncio): called with the
    service name, it answers the ServingStatus number."""
    return channel.unary_unary(
        _CHECK, request_serializer=encode_request, response_deserializer=decode_status
    )


def status(channel: grpc.Channel, service: str = "", *, timeout: float = 5.0) -> int:
    """The ServingStatus number (1 = SERVING); raises grpc.RpcError."""
    result: int = health_call(channel)(service, timeout=timeout)
    return result


def check(channel: grpc.Channel, service: str = "", *, timeout: float = 5.0) -> bool:
    """True when the server reports SERVING; False on any error."""
    try:
        return status(channel, service, timeout=timeout) == SERVING
    except grpc.RpcError:
        return False


def check_address(
    address: str,
    service: str = "",
    *,
    timeout: float = 2.0,
    credentials: grpc.ChannelCredentials | None = None,
) -> bool:
    """Opens a channel to ``address`` (TLS with ``credentials``) and checks it."""
    channel = (
        grpc.secure_channel(address, credentials)
        if credentials is not None
        else grpc.insecure_channel(address)
    )
    with channel:
        return check(channel, service, timeout=timeout)
