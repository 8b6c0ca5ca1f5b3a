"""Run a real `tgi-launch` as a subprocess for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LaunchedServer:
    url: str
    process: subprocess.Popen
    uds_path: str
    output: list[str] = field(default_factory=list)

    def log(self) -> str:
        return "".join(self.output[-200:])

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def post(self, route: str, json: dict | None = None, **kwargs) -> requests.Response:
        return requests.post(self.url + route, json=json, timeout=kwargs.pop("timeout", 120), **kwargs)


def raw_post(server: LaunchedServer, route: str, body: dict) -> socket.socket:
    """A bare HTTP/1.1 POST on its own socket, for tests that read bytes or drop the connection."""
    import json

    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    data = json.dumps(body).encode()
    sock.sendall(f"POST {route} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r}: {received[-300:]!r}"
        received += chunk
    return received


def launch(model_dir: Path | None, *args: str, env: dict[str, str] | None = None,
           startup_timeout: float = 300.0, master_port: int | None = None,
           prefix: tuple[str, ...] = ()) -> LaunchedServer:
    """`prefix` goes before the command, e.g. ("taskset", "-c", "0")."""
    port = free_port()
    # Unix socket paths are limited to ~108 bytes: keep them short, not under pytest's tmp_path.
    uds = os.path.join(tempfile.mkdtemp(prefix="tgi"), "s")
    command = [*prefix, sys.executable, "-m", "launcher", "--port", str(port), "--shard-uds-path", uds,
               "--master-port", str(master_port or free_port()), *args]
    if model_dir is not None:
        command += ["--model-id", str(model_dir)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **(env or {})})
    server = LaunchedServer(url=f"http://127.0.0.1:{port}", process=process, uds_path=uds)
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            server.output.append(line)
            if "listening on" in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + startup_timeout
    while not ready.wait(0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"tgi-launch did not start:\n{server.log()}")
    return server
