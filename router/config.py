"""Router settings, fixed at start-up from the command line the launcher builds."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RouterConfig:
    model_id: str
    tokenizer_dir: Path
    shard_uds_path: str
    hostname: str
    port: int
    max_concurrent_requests: int
    max_best_of: int
    max_stop_sequences: int
    max_top_n_tokens: int
    max_input_tokens: int
    max_total_tokens: int
    waiting_served_ratio: float
    max_batch_prefill_tokens: int
    max_batch_total_tokens: int | None
    max_waiting_tokens: int
    max_batch_size: int | None
    max_client_batch_size: int
    payload_limit: int
    json_output: bool
    sse_ping_interval: float = 10.0
    graceful_termination_timeout: float = 90.0
    liveness_timeout: float = 120.0
    request_body_timeout: float = 30.0
    keep_alive_timeout: float = 75.0
    api_key: str | None = None
    cors_allow_origin: tuple[str, ...] = ()
    otlp_endpoint: str | None = None
    otlp_service_name: str = "tgi-py.router"

    @classmethod
    def parse(cls, argv: list[str] | None = None) -> RouterConfig:
        p = argparse.ArgumentParser(description="tgi-py router: HTTP in front of the shards")
        p.add_argument("--model-id", default="tgi-py")
        p.add_argument("--tokenizer-dir", type=Path, required=True)
        p.add_argument("--shard-uds-path", default="/tmp/text-generation-server")
        p.add_argument("--hostname", default="127.0.0.1")
        p.add_argument("--port", type=int, default=3000)
        p.add_argument("--max-concurrent-requests", type=int, default=128)
        p.add_argument("--max-best-of", type=int, default=2)
        p.add_argument("--max-stop-sequences", type=int, default=4)
        p.add_argument("--max-top-n-tokens", type=int, default=5)
        p.add_argument("--max-input-tokens", type=int, default=4095)
        p.add_argument("--max-total-tokens", type=int, default=4096)
        p.add_argument("--waiting-served-ratio", type=float, default=0.3)
        p.add_argument("--max-batch-prefill-tokens", type=int, default=None)
        p.add_argument("--max-batch-total-tokens", type=int, default=None)
        p.add_argument("--max-waiting-tokens", type=int, default=20)
        p.add_argument("--max-batch-size", type=int, default=None)
        p.add_argument("--max-client-batch-size", type=int, default=4)
        p.add_argument("--payload-limit", type=int, default=2_000_000)
        p.add_argument("--json-output", action="store_true")
        p.add_argument("--sse-ping-interval", type=float, default=10.0,
                       help="seconds between ': ping' comments on an idle SSE stream")
        p.add_argument("--graceful-termination-timeout", type=float, default=90.0)
        p.add_argument("--liveness-timeout", type=float, default=120.0)
        p.add_argument("--request-body-timeout", type=float, default=30.0,
                       help="seconds from a request's headers to the end of its body; past it, 408 and close")
        p.add_argument("--keep-alive-timeout", type=float, default=75.0,
                       help="seconds an idle connection (or one still sending its headers) stays open")
        p.add_argument("--api-key", default=os.environ.get("API_KEY") or None)
        p.add_argument("--cors-allow-origin", action="append", default=[])
        p.add_argument("--otlp-endpoint", default=None)
        p.add_argument("--otlp-service-name", default="tgi-py.router")
        a = p.parse_args(argv)
        prefill = a.max_batch_prefill_tokens or a.max_input_tokens + 50
        return cls(
            model_id=a.model_id, tokenizer_dir=a.tokenizer_dir, shard_uds_path=a.shard_uds_path,
            hostname=a.hostname, port=a.port, max_concurrent_requests=a.max_concurrent_requests,
            max_best_of=a.max_best_of, max_stop_sequences=a.max_stop_sequences,
            max_top_n_tokens=a.max_top_n_tokens, max_input_tokens=a.max_input_tokens,
            max_total_tokens=a.max_total_tokens, waiting_served_ratio=a.waiting_served_ratio,
            max_batch_prefill_tokens=prefill, max_batch_total_tokens=a.max_batch_total_tokens,
            max_waiting_tokens=a.max_waiting_tokens, max_batch_size=a.max_batch_size,
            max_client_batch_size=a.max_client_batch_size, payload_limit=a.payload_limit,
            json_output=a.json_output, sse_ping_interval=a.sse_ping_interval,
            graceful_termination_timeout=a.graceful_termination_timeout, liveness_timeout=a.liveness_timeout,
            request_body_timeout=a.request_body_timeout, keep_alive_timeout=a.keep_alive_timeout,
            api_key=a.api_key, cors_allow_origin=tuple(o for v in a.cors_allow_origin for o in v.split(",") if o),
            otlp_endpoint=a.otlp_endpoint, otlp_service_name=a.otlp_service_name,
        )
