"""The hostile-client table: each request of tests/serve_hostile_cases.py against a local demo server
(127.0.0.1, Ray shut down after), what came back, and how long a normal request took right after it.

    python benchmarks/serve_hostile.py  # writes benchmarks/results/serve_hostile.{json,md}
"""

import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serve_hostile_cases import CASES, KEY, NORMAL  # noqa: E402

OUT = ROOT / "benchmarks" / "results"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _normal(c) -> float:
    start = time.perf_counter()
    r = c.post("/v1/images/generations", json=NORMAL)
    if r.status_code != 200:
        raise SystemExit(f"a normal request failed: {r.status_code} {r.text[:300]}")
    return time.perf_counter() - start


def _rows(base: str) -> tuple[float, list[dict]]:
    rows = []
    with httpx.Client(base_url=base, timeout=120, headers={"Authorization": f"Bearer {KEY}"}) as c:
        _normal(c)
        usual = min(_normal(c) for _ in range(3))
        for name, send, _ in CASES:
            start = time.perf_counter()
            r = send(c)
            took = time.perf_counter() - start
            error = (
                r.json().get("error", {}) if r.headers.get("content-type", "").startswith("application/json") else {}
            )
            rows.append(
                dict(
                    request=name,
                    status=r.status_code,
                    param=error.get("param"),
                    code=error.get("code"),
                    answer_s=round(took, 3),
                    normal_after_s=round(_normal(c), 3),
                )
            )
    return usual, rows


def main() -> None:
    import ray
    from ray import serve

    sys.path.insert(0, str(ROOT / "tests"))
    from test_serve_hostile import _config

    from ifengine.serve import app

    os.environ.setdefault("IFENGINE_CACHE", "/tmp/ifcache-bench")
    port = _port()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=96 * 2**20, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(app(_config().to_dict()), name="ifengine", route_prefix="/")
        usual, rows = _rows(f"http://127.0.0.1:{port}")
    finally:
        serve.shutdown()
        ray.shutdown()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared), Ray num_cpus=2"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serve_hostile.json").write_text(json.dumps({"machine": machine, "usual_s": usual, "rows": rows}, indent=1))
    lines = [
        "# Hostile requests against `ifengine serve` (demo cascade, split layout)",
        "",
        f"Machine: {machine}. A normal request (steps 4,2,2) takes {usual:.2f} s here (best of 3).",
        "",
        "| request | status | param | code | answered in s | normal request after, s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['request']} | {r['status']} | {r['param']} | {r['code']} | {r['answer_s']} | {r['normal_after_s']} |"
        )
    (OUT / "serve_hostile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
