"""Settings for the whole test process."""

import os

# The test process makes gRPC calls (launcher readiness probes, shard clients) and forks children
# (launchers, servers) afterwards: without this, grpcio's fork handlers can deadlock such a fork (see
# launcher/__init__.py). Set before any test module imports gRPC.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
