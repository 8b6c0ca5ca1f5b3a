"""Probes that tell whether a shard or the router is ready, and the addresses they are reached on."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import grpc

from tgi_proto import generate_pb2, generate_pb2_grpc

# Wildcard binds are not connectable addresses; probe them through loopback instead.
_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def shard_is_healthy(socket_path: Path, timeout_s: float = 2.0) -> bool:
    if not socket_path.is_socket():
        return False
    try:
        with grpc.insecure_channel(f"unix://{socket_path}") as channel:
            stub = generate_pb2_grpc.TextGenerationServiceStub(channel)
            stub.Health(generate_pb2.HealthRequest(), timeout=timeout_s)
    except grpc.RpcError:
        return False
    return True


def socket_is_served(socket_path: Path) -> bool:
    """True when some live process accepts connections on `socket_path`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(socket_path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def public_url(hostname: str, port: int) -> str:
    return f"http://{_url_host(hostname)}:{port}"


def health_url(hostname: str, port: int) -> str:
    host = _WILDCARD_TO_LOOPBACK.get(hostname, hostname)
    return f"http://{_url_host(host)}:{port}/health"


def router_is_healthy(url: str, timeout_s: float = 2.0) -> bool:
    # The proxy environment must not reroute a probe of our own loopback listener.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        # 503 (not ready yet) arrives as HTTPError, a subclass of URLError.
        return False
