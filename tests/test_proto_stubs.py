"""The checked-in gRPC stubs must be what `make proto` generates from proto/generate.proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUBS = ["generate_pb2.py", "generate_pb2.pyi", "generate_pb2_grpc.py"]


def test_checked_in_stubs_are_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-Itgi_proto={ROOT / 'proto'}", f"--python_out={tmp_path}",
         f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}", str(ROOT / "proto" / "generate.proto")],
        check=True,
    )
    for name in STUBS:
        fresh = (tmp_path / "tgi_proto" / name).read_text()
        assert fresh == (ROOT / "tgi_proto" / name).read_text(), f"tgi_proto/{name} is stale: run `make proto`"


def test_router_never_imports_torch() -> None:
    code = ("import sys, router.cli, router.server, router.batcher, router.validation, launcher.cli; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, "
            "[m for m in sys.modules if m.startswith(('torch', 'transformers'))]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
