"""tgi-bench: a closed-loop load generator for TGI-native and OpenAI-compatible streaming endpoints.

`tgi-bench --target NAME=URL[,api=...]` sweeps concurrency levels against one or more servers and
reports time to first token, inter-token latency and throughput per (target, concurrency).
See docs/benchmarks.md.
"""

__version__ = "0.1.0"
