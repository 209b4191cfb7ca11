"""obsml's counters reach the application's OpenTelemetry MeterProvider as ``obsml.*`` metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def test_counters_are_observable_metrics_on_the_applications_meter_provider(tmp_path: Path) -> None:
    # A subprocess: the global MeterProvider can be set once per process.
    script = textwrap.dedent(f"""
        import json, asyncio
        import httpx
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route
        import obsml

        async def ok(request):
            return PlainTextResponse("ok")

        app = obsml.ObsmlMiddleware(Starlette(routes=[Route("/", ok)]), store={str(tmp_path / "store")!r},
                                    queue_max_items=1)
        # Set after obsml started: the proxy meter binds obsml's instruments late.
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

        async def traffic():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                for _ in range(5):
                    await client.get("/")

        asyncio.run(traffic())
        collector = obsml.Collector("m", "inputs", ["a"], store={str(tmp_path / "store")!r})
        collector.collect([[1], [2]])
        collector.collect([[1, 2]])  # a row of the wrong width: refused, and counted (OBSML_STRICT=false)
        obsml.flush()
        points = {{}}
        for resource in reader.get_metrics_data().resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        key = metric.name + json.dumps(dict(point.attributes), sort_keys=True)
                        points[key] = point.value
        print(json.dumps({{"points": points, "stats": obsml.stats()}}))
    """)
    env = {**os.environ, "OBSML_STRICT": "false"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True, env=env
    )
    report = __import__("json").loads(result.stdout.splitlines()[-1])
    points, stats = report["points"], report["stats"]
    assert points["obsml.requests.captured{}"] == stats["requests_captured"] >= 1
    assert points['obsml.objects.written{"obsml.object": "trace_file"}'] == stats["trace_files_written"] >= 1
    # queue_max_items=1: requests arriving while the writer is busy do not fit, and are counted.
    dropped = stats["dropped"].get("queue_full", {}).get("span", 0)
    assert points.get('obsml.items.dropped{"obsml.kind": "span", "obsml.reason": "queue_full"}', 0) == dropped
    assert stats["requests_captured"] + dropped == 5
    assert points["obsml.rows.collected{}"] == stats["rows_collected"] == 2
    assert points['obsml.objects.written{"obsml.object": "modeldata_file"}'] == stats["modeldata_files_written"] == 1
    assert points['obsml.items.dropped{"obsml.kind": "row", "obsml.reason": "invalid"}'] == 1
