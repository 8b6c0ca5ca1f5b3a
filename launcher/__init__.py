"""tgi-launch: starts the shards and the router, and supervises them."""

import os

# The launcher probes the shards over gRPC and then forks more children (the router). grpcio's fork
# handlers, on by default in recent releases, can deadlock a fork made while gRPC's own threads are
# busy: seen as a process hung inside subprocess.Popen. Every child execs at once, so the handlers
# have nothing to do here. Read when gRPC initialises, hence set before anything imports it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
