"""`tgi-bench`: command-line entry point."""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import sys
from pathlib import Path
from typing import Any

from bench import __version__
from bench.apis import IGNORE_EOS_MODES, PROMPT_TEMPLATES, GenerationSettings, Target, TargetSpecError, parse_target
from bench.conversation import MultiTurn, run_multi_turn
from bench.prompts import PROMPT_SETS, make_prompt_set
from bench.report import format_table, results_document, write_json
from bench.runner import RunConfig, run_benchmark

EPILOG = """\
examples:
  tgi-bench --target tgi-py=http://127.0.0.1:3000,api=tgi --concurrency 1,4,16 --output-tokens 64
  tgi-bench --target ours=http://127.0.0.1:3000,api=openai-chat \\
            --target llama.cpp=http://127.0.0.1:8080,api=openai-chat \\
            --concurrency 1,4,16,32 --requests-per-level 64 --output results.json --chart chart.png
  tgi-bench --target tgi-py=http://127.0.0.1:3000,api=tgi --prompt-template chatml --scenario multi-turn \\
            --conversations 8 --turns 5 --system-prompt-tokens 1000 --prompt-tokens 128 --output-tokens 64

target options (comma-separated after the URL):
  api=tgi|openai-chat|openai-completions   wire format (default: from the URL's route, else tgi)
  model=ID                                 OpenAI `model` (default: the first id of GET /v1/models)
  ignore_eos=auto|on|off                   overrides --ignore-eos for this target
"""


def _positive_int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tgi-bench",
        description="Closed-loop load generator for TGI-native (/generate_stream) and OpenAI-compatible "
                    "(/v1/completions, /v1/chat/completions) streaming endpoints.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", action="append", required=True, metavar="NAME=URL[,api=..][,model=..]",
                   help="a server to benchmark; repeat to compare several (run one after the other)")
    p.add_argument("--scenario", choices=("sweep", "multi-turn"), default="sweep",
                   help="sweep: independent prompts at each --concurrency level (default); multi-turn: "
                        "--conversations at once, each of --turns turns that resend the whole history after "
                        "a shared system prompt, TTFT reported per turn (see bench/conversation.py)")
    p.add_argument("--concurrency", type=_positive_int_list, default=None, metavar="C1,C2,..",
                   help="concurrency levels of the sweep (default: 1,4,16)")
    p.add_argument("--conversations", type=_positive_int, default=8, metavar="N",
                   help="multi-turn: conversations running at once (default: 8)")
    p.add_argument("--turns", type=_positive_int, default=5, metavar="T",
                   help="multi-turn: turns of each conversation (default: 5)")
    p.add_argument("--system-prompt-tokens", type=_positive_int, default=1000, metavar="N",
                   help="multi-turn: approximate length of the system prompt every conversation shares "
                        "(default: 1000)")
    p.add_argument("--requests-per-level", type=_positive_int, default=None, metavar="N",
                   help="measured requests per level (default: 4 x concurrency, at least 8)")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="instead of a request count: keep sending for this long per level (requests in "
                        "flight at the end are completed and counted)")
    p.add_argument("--warmup", type=int, default=1, metavar="N",
                   help="requests per worker sent before each level's measurement and not recorded; the "
                        "measurement starts once all of them have finished; multi-turn: requests of the "
                        "shared system prompt (and a user message of no conversation) sent before the "
                        "conversations start (default: 1)")
    p.add_argument("--output-tokens", type=_positive_int, default=128, metavar="N",
                   help="max_new_tokens / max_tokens of every request (default: 128)")
    p.add_argument("--ignore-eos", choices=IGNORE_EOS_MODES, default="auto",
                   help="send ignore_eos (TGI parameters / OpenAI body) so that every request generates "
                        "--output-tokens; auto: send it, drop it for a target that refuses it (default)")
    p.add_argument("--prompt-tokens", type=_positive_int, default=256, metavar="N",
                   help="approximate prompt length (multi-turn: of each user message); prompts vary in "
                        "[0.5, 1.5] x N (default: 256)")
    p.add_argument("--num-prompts", type=_positive_int, default=2048, metavar="N",
                   help="size of the seeded prompt list, used in order and cycled (default: 2048)")
    p.add_argument("--prompt-set", choices=PROMPT_SETS, default="generic",
                   help="generic: questions over shuffled context sentences; grounded: rewrite or summarize a "
                        "supplied public-domain passage (bench/passages.py), the workload of n-gram speculation "
                        "(default: generic)")
    p.add_argument("--prompt-template", choices=sorted(PROMPT_TEMPLATES), default="none",
                   help="wrap prompts of the raw-text APIs (tgi, openai-completions) in a chat template; "
                        "openai-chat always uses the server's own template (default: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt list and of sampling (default: 0)")
    p.add_argument("--temperature", type=_non_negative_float, default=0.0,
                   help="0 = greedy (default); above 0 samples, with --seed")
    p.add_argument("--json-schema", metavar="PATH",
                   help="every answer must follow this JSON schema (TGI's grammar / OpenAI's response_format); "
                        "e.g. bench/schemas/people.json")
    p.add_argument("--fresh-schema", action="store_true",
                   help="with --json-schema: a schema the server has not seen in every request (compile cost)")
    p.add_argument("--extra-body", action="append", default=[], metavar="NAME=JSON",
                   help="JSON object merged into every request body of target NAME ('*' for all); a null "
                        "value removes a key")
    p.add_argument("--api-key", default=os.environ.get("TGI_BENCH_API_KEY"),
                   help="sent as 'Authorization: Bearer KEY' (default: $TGI_BENCH_API_KEY)")
    p.add_argument("--request-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="per request, total (default: 600)")
    p.add_argument("--error-backoff", type=_non_negative_float, default=0.1, metavar="SECONDS",
                   help="a worker whose request failed waits this long before its next (default: 0.1)")
    p.add_argument("--keep-alive", action="store_true",
                   help="reuse HTTP connections between requests (default: a new connection per request, "
                        "the same small cost for every server)")
    p.add_argument("--output", metavar="PATH", help="write the results as JSON")
    p.add_argument("--chart", metavar="PATH", help="write a PNG chart of throughput, TTFT and ITL")
    p.add_argument("--save-requests", action="store_true",
                   help="also write every measured request (start, TTFT, end-to-end, tokens, error) to --output")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--version", action="version", version=f"tgi-bench {__version__}")
    return p


def _extra_bodies(specs: list[str], names: set[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        if not sep:
            raise TargetSpecError(f"--extra-body {spec!r}: expected NAME=JSON")
        if name != "*" and name not in names:
            raise TargetSpecError(f"--extra-body {spec!r}: no target named {name!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TargetSpecError(f"--extra-body {spec!r}: {exc}") from None
        if not isinstance(value, dict):
            raise TargetSpecError(f"--extra-body {spec!r}: expected a JSON object")
        out.setdefault(name, {}).update(value)
    return out


def parse_targets(args: argparse.Namespace) -> list[Target]:
    targets = [parse_target(spec, args.ignore_eos) for spec in args.target]
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise TargetSpecError(f"target names must be unique: {', '.join(names)}")
    extras = _extra_bodies(args.extra_body, set(names))
    for target in targets:
        target.extra_body = {**extras.get("*", {}), **extras.get(target.name, {})}
    return targets


def _load_schema(parser: argparse.ArgumentParser, path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        parser.error(f"--json-schema {path}: {exc}")
    if not isinstance(schema, dict):
        parser.error(f"--json-schema {path}: not a JSON object")
    return schema


def _json_args(args: argparse.Namespace) -> dict[str, Any]:
    out = {k: v for k, v in vars(args).items() if k != "api_key"}
    out["api_key"] = "***" if args.api_key else None
    return out


def _multi_turn(parser: argparse.ArgumentParser, args: argparse.Namespace) -> MultiTurn | None:
    """The conversations of --scenario multi-turn (None for a sweep), after refusing the sweep's options."""
    if args.scenario != "multi-turn":
        return None
    sweep_only = {"--concurrency": args.concurrency, "--duration": args.duration,
                  "--requests-per-level": args.requests_per_level, "--chart": args.chart}
    for flag, value in sweep_only.items():
        if value is not None:
            parser.error(f"{flag} is for --scenario sweep; multi-turn runs --conversations x --turns requests")
    return MultiTurn.build(args.conversations, args.turns, args.system_prompt_tokens, args.prompt_tokens,
                           args.warmup, args.seed)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be positive")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    try:
        targets = parse_targets(args)
    except TargetSpecError as exc:
        parser.error(str(exc))
    if args.save_requests and not args.output:
        parser.error("--save-requests needs --output")
    if args.chart:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--chart needs matplotlib: pip install 'tgi-py[bench]'")
    spec = _multi_turn(parser, args)

    config = RunConfig(
        concurrency=args.concurrency or [1, 4, 16],
        settings=GenerationSettings(output_tokens=args.output_tokens, temperature=args.temperature,
                                    seed=args.seed, prompt_template=args.prompt_template,
                                    json_schema=_load_schema(parser, args.json_schema),
                                    fresh_schema=args.fresh_schema),
        prompts=make_prompt_set(args.prompt_set, args.num_prompts, args.prompt_tokens, args.seed),
        requests_per_level=args.requests_per_level,
        duration=args.duration,
        warmup=args.warmup,
        request_timeout=args.request_timeout,
        error_backoff=args.error_backoff,
        headers={"Authorization": f"Bearer {args.api_key}"} if args.api_key else {},
        progress=not args.no_progress,
        save_requests=args.save_requests,
        keep_alive=args.keep_alive,
    )
    started = _dt.datetime.now(_dt.UTC)
    try:
        levels = asyncio.run(run_benchmark(targets, config) if spec is None else run_multi_turn(targets, config, spec))
    except KeyboardInterrupt:
        print("tgi-bench: interrupted", file=sys.stderr)
        return 130
    finished = _dt.datetime.now(_dt.UTC)

    print()
    print(format_table(levels))
    for target in targets:
        for note in target.notes:
            print(f"note {target.name}: {note}")
        if target.error:
            print(f"FAILED {target.name}: {target.error}")
    for level in levels:
        if level.short_requests and level.turn != 0:  # multi-turn: noted per turn, not again for all
            where = f" turn {level.turn}" if level.turn else ""
            print(f"note {level.target} c={level.concurrency}{where}: {level.short_requests} of {level.ok} requests "
                  f"ended before {args.output_tokens} tokens (EOS or stop; throughput counts actual tokens)")
    if args.output:
        write_json(args.output, results_document(_json_args(args), targets, levels, started, finished,
                                                 scenario=None if spec is None else spec.describe()))
        print(f"results: {args.output}")
    if args.chart and levels:
        from bench.chart import write_chart

        write_chart(args.chart, levels, title=f"tgi-bench: {args.output_tokens} output tokens, "
                                              f"~{args.prompt_tokens} prompt tokens")
        print(f"chart: {args.chart}")
    return 1 if any(t.error for t in targets) else 0


if __name__ == "__main__":
    sys.exit(main())
