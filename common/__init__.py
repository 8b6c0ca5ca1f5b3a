"""What the router, the shard and the launcher all need and is not the wire: standard library only.

No torch, no protobuf, none of the three packages (an import-linter contract in pyproject.toml keeps
it so), so that importing it costs the router and the launcher nothing.
"""
