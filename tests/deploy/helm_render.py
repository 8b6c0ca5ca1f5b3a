"""Render or lint the Helm chart with the real Helm engine, in a process of its own.

`helm-python-sdk` binds Helm's Go SDK (libhelm_c) through ctypes. A Go runtime inside the pytest process
would share it with torch and grpc; a child process keeps it apart. Reads one JSON job on stdin:
{"op": "render", "chart": DIR, "values": {...}, "name": ..., "namespace": ...} -> {"manifests": {...}}
{"op": "lint", "chart": DIR, "values": {...}} -> the lint report
and writes the answer as JSON on stdout; a Helm error becomes {"error": "..."}.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    import helm_python

    job = json.load(sys.stdin)
    try:
        if job["op"] == "lint":
            answer = helm_python.lint(job["chart"], job.get("values") or None, strict=True,
                                      namespace=job.get("namespace"))
        else:
            chart = helm_python.Chart.load(job["chart"])
            manifests = chart.render(job.get("values") or None, name=job["name"], namespace=job["namespace"],
                                     is_install=True)
            answer = {"manifests": manifests}
    except helm_python.HelmError as err:
        answer = {"error": f"{type(err).__name__}: {err}"}
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
