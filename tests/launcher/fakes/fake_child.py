"""Stand-in shard or router for supervision tests: no model, just the readiness protocol.

    fake_child.py shard SOCKET [options]   answers gRPC Health on SOCKET
    fake_child.py router PORT [options]    answers GET /health with 200 on 127.0.0.1:PORT
    fake_child.py idle [options]           never becomes ready

Options: --exit-after SECONDS --code N (exit on its own), --ignore-term (survive SIGTERM),
--record FILE (append "<pid> started" and "<pid> sigterm <time>" lines for the test to read).
"""

from __future__ import annotations

import argparse
import http.server
import os
import signal
import threading
import time
from concurrent import futures
from types import FrameType

import grpc

from tgi_proto import generate_pb2, generate_pb2_grpc


class _Health(generate_pb2_grpc.TextGenerationServiceServicer):
    def Health(self, request: generate_pb2.HealthRequest, context: grpc.ServicerContext) -> generate_pb2.HealthResponse:
        return generate_pb2.HealthResponse()


class _HealthHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _record(path: str | None, line: str) -> None:
    if path:
        with open(path, "a") as handle:
            handle.write(f"{os.getpid()} {line}\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["shard", "router", "idle"])
    parser.add_argument("address", nargs="?")
    parser.add_argument("--exit-after", type=float)
    parser.add_argument("--code", type=int, default=0)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--record")
    args = parser.parse_args()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        _record(args.record, f"sigterm {time.time()}")
        if not args.ignore_term:
            os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    _record(args.record, "started")

    if args.role == "shard":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        generate_pb2_grpc.add_TextGenerationServiceServicer_to_server(_Health(), server)
        server.add_insecure_port(f"unix://{args.address}")
        server.start()
    elif args.role == "router":
        httpd = http.server.HTTPServer(("127.0.0.1", int(args.address)), _HealthHandler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()

    deadline = time.monotonic() + args.exit_after if args.exit_after is not None else None
    while deadline is None or time.monotonic() < deadline:
        time.sleep(0.05)
    os._exit(args.code)


if __name__ == "__main__":
    main()
