"""`tgi-launch`: TGI's launcher flags (each also read from its upper-snake-case env var)."""

from __future__ import annotations

from typing import Any

import click

from common.quantization import UnsupportedQuantization, resolve_quantize
from launcher.commands import plan_launch
from launcher.model_source import ModelSourceError, default_token_limits, resolve_model
from launcher.processes import launch

# Passed to the router verbatim when set: (click parameter name, router flag).
ROUTER_VALUE_FLAGS: tuple[tuple[str, str], ...] = (
    ("max_concurrent_requests", "--max-concurrent-requests"),
    ("max_best_of", "--max-best-of"),
    ("max_stop_sequences", "--max-stop-sequences"),
    ("max_top_n_tokens", "--max-top-n-tokens"),
    ("max_input_tokens", "--max-input-tokens"),
    ("max_total_tokens", "--max-total-tokens"),
    ("waiting_served_ratio", "--waiting-served-ratio"),
    ("max_batch_prefill_tokens", "--max-batch-prefill-tokens"),
    ("max_batch_total_tokens", "--max-batch-total-tokens"),
    ("max_waiting_tokens", "--max-waiting-tokens"),
    ("max_batch_size", "--max-batch-size"),
    ("max_client_batch_size", "--max-client-batch-size"),
    ("payload_limit", "--payload-limit"),
    ("sse_ping_interval", "--sse-ping-interval"),
    ("graceful_termination_timeout", "--graceful-termination-timeout"),
    ("liveness_timeout", "--liveness-timeout"),
    ("request_body_timeout", "--request-body-timeout"),
    ("keep_alive_timeout", "--keep-alive-timeout"),
    ("otlp_endpoint", "--otlp-endpoint"),
    ("otlp_service_name", "--otlp-service-name"),
)
# Repeatable router flags: each value is passed as its own occurrence.
ROUTER_MULTI_FLAGS: tuple[tuple[str, str], ...] = (("cors_allow_origin", "--cors-allow-origin"),)
PREFILL_HEADROOM_TOKENS = 50
PORT = click.IntRange(1, 65535)


def _option(flag: str, **kwargs: Any) -> Any:
    envvar = flag.lstrip("-").replace("-", "_").upper()
    return click.option(flag, envvar=envvar, show_envvar=True, show_default=True, **kwargs)


def _quantize(value: str | None) -> str | None:
    """--quantize's canonical kind (int8, int4) or None; anything unsupported stops the launch here."""
    try:
        return resolve_quantize(value)
    except UnsupportedQuantization as err:
        raise click.BadParameter(str(err), param_hint="--quantize") from err


def router_flags(settings: dict[str, Any]) -> list[str]:
    """The router's command-line tail for `settings` (click parameter names to values)."""
    flags: list[str] = []
    for name, flag in ROUTER_VALUE_FLAGS:
        value = settings.get(name)
        if value is not None:
            flags += [flag, str(value)]
    for name, flag in ROUTER_MULTI_FLAGS:
        for value in settings.get(name) or ():
            flags += [flag, value]
    if settings.get("json_output"):
        flags.append("--json-output")
    return flags


def token_limits(
    max_input_tokens: int | None, max_total_tokens: int | None, model_defaults: tuple[int, int]
) -> tuple[int, int]:
    """Fill in absent token limits the way TGI does: derived from each other or from the model."""
    default_input, default_total = model_defaults
    if max_total_tokens is None:
        if max_input_tokens is None:
            return default_input, default_total
        max_total_tokens = max(default_total, max_input_tokens + 1)
    if max_input_tokens is None:
        max_input_tokens = max_total_tokens - 1
    return max_input_tokens, max_total_tokens


def check_limits(settings: dict[str, Any]) -> None:
    """Reject contradictory limits; values left as None are not checked."""
    max_input = settings.get("max_input_tokens")
    max_total = settings.get("max_total_tokens")
    prefill = settings.get("max_batch_prefill_tokens")
    batch_total = settings.get("max_batch_total_tokens")
    if max_input is not None and max_total is not None and max_input >= max_total:
        raise click.UsageError(f"--max-input-tokens ({max_input}) must be < --max-total-tokens ({max_total})")
    if batch_total is not None and max_total is not None and max_total > batch_total:
        raise click.UsageError(f"--max-total-tokens ({max_total}) must be <= --max-batch-total-tokens ({batch_total})")
    if prefill is not None and max_input is not None and prefill < max_input:
        raise click.UsageError(f"--max-batch-prefill-tokens ({prefill}) must be >= --max-input-tokens ({max_input})")
    if batch_total is not None and prefill is not None and prefill > batch_total:
        raise click.UsageError(
            f"--max-batch-prefill-tokens ({prefill}) must be <= --max-batch-total-tokens ({batch_total})"
        )


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@_option("--model-id", default=None, help="Local directory or cached hub id. [default: embedded SmolLM2]")
@_option("--revision", default=None, help="Hub revision (branch, tag or commit) of --model-id.")
@_option("--num-shard", type=click.IntRange(min=1), default=1, help="Tensor-parallel shard processes.")
@_option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32")
@_option("--quantize", default=None, callback=lambda _ctx, _param, value: _quantize(value),
         help="Weight-only quantization at load: int8 (per output channel; TGI's eetq is the same) or int4 "
              "(groups of 32 with scale and min, as GGUF Q4_1). [default: none]")
@_option("--trust-remote-code", is_flag=True, help="Allow model code shipped with the checkpoint.")
@_option("--max-concurrent-requests", type=click.IntRange(min=1), default=128)
@_option("--max-best-of", type=click.IntRange(min=1), default=2)
@_option("--max-stop-sequences", type=click.IntRange(min=0), default=4)
@_option("--max-top-n-tokens", type=click.IntRange(min=0), default=5)
@_option("--max-input-tokens", type=click.IntRange(min=1), default=None, help="[default: from model]")
@_option("--max-total-tokens", type=click.IntRange(min=2), default=None, help="[default: from model]")
@_option("--waiting-served-ratio", type=click.FloatRange(min=0.0), default=0.3)
@_option("--max-batch-prefill-tokens", type=click.IntRange(min=1), default=None)
@_option("--max-batch-total-tokens", type=click.IntRange(min=1), default=None)
@_option("--max-waiting-tokens", type=click.IntRange(min=0), default=20)
@_option("--max-batch-size", type=click.IntRange(min=1), default=None)
@_option("--hostname", default="127.0.0.1", help="Address the router binds (TGI defaults to 0.0.0.0).")
@_option("--port", type=PORT, default=3000)
@_option("--shard-uds-path", default="/tmp/text-generation-server", help="Shard r listens on PATH-r.")
@_option("--master-addr", default="localhost")
@_option("--master-port", type=PORT, default=29500)
@_option("--json-output", is_flag=True, help="Log JSON lines instead of text.")
@_option("--max-client-batch-size", type=click.IntRange(min=1), default=4)
@_option("--payload-limit", type=click.IntRange(min=1), default=2_000_000, help="Request body bytes.")
@_option("--kv-cache-bytes", type=click.IntRange(min=1), default=2 * 1024**3, help="KV cache per shard.")
@_option(
    "--graceful-termination-timeout",
    type=click.FloatRange(min=0.0),
    default=90.0,
    help="Seconds a child may take to exit after SIGTERM before it is killed.",
)
@_option("--nnodes", type=click.IntRange(min=1), default=1,
         help="Machines in the tensor-parallel group; --num-shard is split evenly over them (ours).")
@_option("--node-rank", type=click.IntRange(min=0), default=0,
         help="This machine's index in the group; node 0 runs the router (ours).")
@_option("--shard-port", type=PORT, default=29700,
         help="With --nnodes > 1: first TCP port of this node's shards, one per local shard (ours).")
@_option("--shard-advertise-host", default=None,
         help="With --nnodes > 1: address the router reaches this node's shards at (default: this host's IP).")
@_option("--prefill-chunk-tokens", type=click.IntRange(min=1), default=256,
         help="Prompt tokens a shard feeds per step while other requests decode (chunked prefill; ours).")
@_option("--prefix-caching", type=click.BOOL, default=True,
         help="Reuse the KV cache of prompt prefixes computed before (true/false, 1/0).")
@_option("--speculate", type=click.IntRange(min=0), default=0,
         help="N-gram speculation: up to N draft tokens per request and step, looked up in the prompt and "
              "output so far and verified in one forward (0: off).")
@_option("--threads", type=click.IntRange(min=1), default=None,
         help="CPU threads per shard; beats OMP_NUM_THREADS. [default: the CPUs the process may use (affinity "
              "mask, cgroup quota), divided among this node's shards] (ours)")
@_option("--liveness-timeout", type=click.FloatRange(min=0.1), default=120.0,
         help="Seconds one shard step may take before /live reports the server hung (ours).")
@_option("--request-body-timeout", type=click.FloatRange(min=0.1), default=30.0,
         help="Seconds from a request's headers to the end of its body; past it, 408 and the connection "
              "closes. A request holds no slot until its body has arrived (ours).")
@_option("--keep-alive-timeout", type=click.FloatRange(min=0.1), default=75.0,
         help="Seconds an idle keep-alive connection, or one still sending its headers, stays open (ours).")
@_option("--api-key", default=None, help="Require 'Authorization: Bearer KEY' on every route but /health.")
@_option("--cors-allow-origin", multiple=True, help="Origins allowed by CORS (repeatable; '*' for any).")
@_option("--otlp-endpoint", default=None, help="OpenTelemetry collector (gRPC), e.g. http://localhost:4317.")
@_option("--otlp-service-name", default="tgi-py.router")
@_option("--sse-ping-interval", type=click.FloatRange(min=0.01), default=10.0,
         help="Seconds between ': ping' comments on an idle SSE stream (ours).")
def main(**settings: Any) -> None:
    """Serve a model over TGI's HTTP API: start the shards, then the router."""
    if not settings["hostname"]:
        raise click.BadParameter("must not be empty", param_hint="--hostname")
    if not settings["shard_uds_path"]:
        raise click.BadParameter("must not be empty", param_hint="--shard-uds-path")
    check_limits(settings)
    if settings["num_shard"] % settings["nnodes"]:
        raise click.UsageError(f"--num-shard ({settings['num_shard']}) must be a multiple of --nnodes "
                               f"({settings['nnodes']}): each node runs the same number of shards")
    if settings["node_rank"] >= settings["nnodes"]:
        raise click.UsageError(f"--node-rank ({settings['node_rank']}) must be < --nnodes ({settings['nnodes']})")
    try:
        model = resolve_model(settings["model_id"], settings["revision"])
        model_defaults = default_token_limits(model.path)
    except ModelSourceError as err:
        raise click.ClickException(str(err)) from err

    max_input, max_total = token_limits(settings["max_input_tokens"], settings["max_total_tokens"], model_defaults)
    settings["max_input_tokens"], settings["max_total_tokens"] = max_input, max_total
    if settings["max_batch_prefill_tokens"] is None:
        prefill = max_input + PREFILL_HEADROOM_TOKENS
        if settings["max_batch_total_tokens"] is not None:
            # The headroom is a convenience; it must not turn a valid --max-batch-total-tokens invalid.
            prefill = min(prefill, settings["max_batch_total_tokens"])
        settings["max_batch_prefill_tokens"] = prefill
    try:
        check_limits(settings)
    except click.UsageError as err:
        raise click.UsageError(f"{err.message} (limits not given are derived from the model)") from err

    plan = plan_launch(
        model_dir=model.path,
        model_id=model.model_id,
        num_shard=settings["num_shard"],
        dtype=settings["dtype"],
        trust_remote_code=settings["trust_remote_code"],
        kv_cache_bytes=settings["kv_cache_bytes"],
        threads=settings["threads"],
        prefix_caching=settings["prefix_caching"],
        uds_path=settings["shard_uds_path"],
        master_addr=settings["master_addr"],
        master_port=settings["master_port"],
        hostname=settings["hostname"],
        port=settings["port"],
        router_flags=router_flags(settings),
        json_output=settings["json_output"],
        grace_s=settings["graceful_termination_timeout"],
        shard_extra_env={"PREFILL_CHUNK_TOKENS": str(settings["prefill_chunk_tokens"]),
                         "SPECULATE": str(settings["speculate"]),
                         "QUANTIZE": settings["quantize"] or "",
                         "GGUF_SOURCE": str(model.gguf) if model.gguf is not None else "",
                         **({"SHARD_ADVERTISE_HOST": settings["shard_advertise_host"]}
                            if settings["shard_advertise_host"] else {})},
        nnodes=settings["nnodes"],
        node_rank=settings["node_rank"],
        shard_port=settings["shard_port"],
        # Through the environment, not argv: a command line is visible to every user in `ps`.
        router_extra_env={"API_KEY": settings["api_key"]} if settings["api_key"] else None,
    )
    raise SystemExit(launch(plan))
