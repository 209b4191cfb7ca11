"""The Markdown table and the PNG plot of a ``bench.py`` result (see there)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

STEPS = ("asgi", "wsgi", "server", "sink_outage", "collector", "logs", "dependencies")
COLOURS = {"obsml": "tab:blue", "otel": "tab:orange", "sentry": "tab:purple", "logfire": "tab:red"}


def _steps(result: dict[str, Any]) -> dict[str, Any]:
    """The run's steps, an empty one for each step not run (``bench.py --steps``)."""
    return {name: result["steps"].get(name, {}) for name in STEPS}


def _f(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def _signed(value: float, digits: int = 1) -> str:
    return f"{value:+,.{digits}f}"


def machine_lines(result: dict[str, Any]) -> list[str]:
    m, v = result["machine"], result["versions"]
    load = lambda values: " / ".join(f"{x:.2f}" for x in values)  # noqa: E731
    return [
        f"Machine: {m['cpu_model']}, {m['cores']} cores ({m['machine']}, Linux {m['kernel']}), host `{m['host']}`; "
        f"load average (1/5/15 min) {load(m['load_average_start'])} at start, "
        f"{load(m.get('load_average_end', []))} at end. Run of {result['date']}, {result.get('seconds', 0):.0f} s"
        + (", **--quick (smoke run: numbers not meaningful)**" if result["quick"] else "") + ".",
        "",
        "Versions: " + ", ".join(f"{name} {version}" for name, version in v.items()) + ".",
    ]


def inprocess_table(title: str, cells: dict[str, Any], key_label: str) -> list[str]:
    variants = [v for v in next(iter(cells.values()))["variants"] if v != "bare"]
    lines = [
        f"### {title}", "",
        "Added over the bare app, µs per request: request path min / median, and end to end (requests plus the "
        "flush of background work, per request). Bare's median in the second column.", "",
        "| body | bare median | " + " | ".join(f"{v} min / median | {v} end to end" for v in variants) + " |",
        "| --- | ---: | " + " | ".join("---: | ---:" for _ in variants) + " |",
    ]
    for cell in cells.values():
        rows = cell["variants"]
        lines.append(
            f"| {cell[key_label]} | {_f(rows['bare']['median_us'])} | "
            + " | ".join(
                f"{_signed(rows[v]['added_min_us'])} / {_signed(rows[v]['added_median_us'])} | "
                f"{_signed(rows[v]['added_e2e_us'], 0)}"
                for v in variants
            )
            + " |"
        )
    return [*lines, ""]


def server_table(server: dict[str, Any]) -> list[str]:
    lines = [
        f"### Servers under load (wrk, {server['connections']} connections, {server['duration_s']:g} s a run, "
        f"{server['rounds']} interleaved rounds at 1 KB, one round at other sizes)", "",
        "Medians over rounds; x = ratio to bare on the same server and body size; CPU = user + system time of "
        "the server's processes per request. Two references split obsml's cost: `passthrough` is a pure ASGI "
        "middleware of obsml's shape that does nothing (wraps `receive` and `send`), `obsml-unsampled` is obsml "
        "at sample rate 0 (every request captured, none written).", "",
        "| server | body | variant | req/s | x bare | p99 ms | x bare | CPU µs/req | x bare | errors |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, cells in server["servers"].items():
        for label, cell in cells.items():
            for variant, row in cell["variants"].items():
                lines.append(
                    f"| {kind} | {label} | {variant} | {_f(row['rps'], 0)} | {row['rps_ratio']:.2f} | "
                    f"{row['p99_ms']:.2f} | {row['p99_ratio']:.2f} | {_f(row['cpu_us_per_request'], 0)} | "
                    f"{row['cpu_ratio']:.2f} | {row['errors']} |"
                )
    lines += [
        "", "### Streaming: time to first byte (1 KB request, first chunk at once, the rest 20 ms later)", "",
        "| server | bare median / p99 ms | obsml median / p99 ms | obsml added (median) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for kind, cell in server["ttfb"].items():
        bare, ours = cell["variants"]["bare"], cell["variants"]["obsml"]
        lines.append(
            f"| {kind} | {bare['ttfb_median_ms']:.2f} / {bare['ttfb_p99_ms']:.2f} | "
            f"{ours['ttfb_median_ms']:.2f} / {ours['ttfb_p99_ms']:.2f} | {ours['ttfb_added_ms'] * 1e3:+.0f} µs |"
        )
    for kind, soak in server.get("soak", {}).items():
        lines += [
            "", f"### Memory under sustained load ({kind}, obsml, wrk at full load for {soak['seconds']} s, 1 KB)", "",
            f"{_f(soak['rps'], 0)} requests/s, p99 {soak['p99_ms']:.1f} ms. "
            f"Server RSS: {soak['rss_start_mib']:.1f} MiB before the load, {soak['rss_warm_mib']:.1f} after its "
            f"first fifth, {soak['rss_end_mib']:.1f} at the end "
            f"(max {soak['rss_max_mib']:.1f}): {soak['growth_after_warmup_mib']:+.1f} MiB after the warm-up, "
            f"{'flat' if soak['flat'] else '**growing**'} (at most {soak['allowed_growth_mib']:.0f} MiB allowed).",
            "", "RSS MiB every 5 s: " + ", ".join(f"{rss:g}" for _, rss in soak["samples"]),
        ]
    return [*lines, ""]


def target_lines(result: dict[str, Any]) -> list[str]:
    """Issue 16's targets that this run measures, each with its value and whether it is met."""
    steps, checks = _steps(result), []
    servers = steps["server"].get("results", {}).get("servers", {})
    for kind, key, target, at_least in (
        ("uvicorn-httptools", "rps_ratio", 0.75, True), ("uvicorn-httptools", "p99_ratio", 2.0, False),
        ("uvicorn-h11", "rps_ratio", 0.85, True), ("gunicorn-sync", "rps_ratio", 0.75, True),
    ):
        row = servers.get(kind, {}).get("1 KB", {}).get("variants", {}).get("obsml")
        if row:
            met = row[key] >= target if at_least else row[key] <= target
            what = "requests/s" if key == "rps_ratio" else "p99 latency"
            checks.append((f"{kind}, 1 KB: obsml {what} {'>=' if at_least else '<='} {target:g}x bare",
                           f"{row[key]:.2f}x", met))
    for step, cells_key, target in (("wsgi", "cases", 0.25), ("asgi", "sizes", 0.1)):
        for cell in steps[step].get("results", {}).get(cells_key, {}).values():
            if cell["bytes"] >= 1024:
                ours, otel = (cell["variants"][v]["added_median_us"] for v in ("obsml", "otel"))
                checks.append((f"{step.upper()} request path, {cell['label']}: obsml added <= {target:g}x OTel's",
                               f"{ours / otel:.2f}x ({_signed(ours)} vs {_signed(otel)} µs)", ours <= target * otel))
    for kind, cell in steps["server"].get("results", {}).get("ttfb", {}).items():
        added = cell["variants"]["obsml"]["ttfb_added_ms"]
        checks.append((f"{kind}: time to first byte within 1 ms of bare", f"{added * 1e3:+.0f} µs", added <= 1.0))
    for kind, soak in steps["server"].get("results", {}).get("soak", {}).items():
        checks.append((f"{kind}: RSS flat over {soak['seconds']} s at full load",
                       f"{soak['growth_after_warmup_mib']:+.1f} MiB", soak["flat"]))
    if not checks:
        return []
    lines = ["### Targets of issue 16 measured here", "", "| target | this run | met |", "| --- | ---: | --- |"]
    lines += [f"| {what} | {value} | {'yes' if met else '**no**'} |" for what, value, met in checks]
    return [*lines, ""]


def markdown(result: dict[str, Any], png_name: str) -> str:
    steps = _steps(result)
    lines = [f"# obsml benchmarks, {result['date'][:10]}", "", *machine_lines(result), "", f"![plot]({png_name})", ""]
    lines += target_lines(result)
    if "results" in steps["asgi"]:
        asgi = steps["asgi"]["results"]
        lines += inprocess_table("In process, ASGI (raw echo app)", asgi["sizes"], "label")
        for name, why in asgi["peers_missing"].items():
            lines += [f"Peer {name} not measured: {why}", ""]
    if "results" in steps["wsgi"]:
        lines += inprocess_table("In process, WSGI (Flask, POST /echo)", steps["wsgi"]["results"]["cases"], "label")
    if "results" in steps["server"]:
        lines += server_table(steps["server"]["results"])
    if steps["sink_outage"]:
        lines += ["### Sink outage (`sink_outage.py`)", ""]
        lines += [f"- {line}" for line in steps["sink_outage"].get("dead_vs_healthy", [])]
        lines += [f"- VERDICT {line}" for line in steps["sink_outage"].get("verdicts", [])]
        lines.append("")
    if steps["collector"]:
        lines += ["### Collector (`collect_overhead.py`)", "",
                  "| format | input | collect() median / p99 µs | writer µs per row |", "| --- | --- | ---: | ---: |"]
        lines += [f"| {r['format']} | {r['input']} | {r['collect_median_p99_us']} | {r['writer_us_per_row']} |"
                  for r in steps["collector"].get("rows", [])]
        lines.append("")
    own_summaries = (("logs", "Request logs (`log_cost.py`)"), ("dependencies", "Dependencies (`dependency_cost.py`)"))
    for name, title in own_summaries:
        if steps[name].get("output"):
            lines += [f"### {title}", "", "```", *steps[name]["output"], "```", ""]
    ran = result["steps"]
    failed = [f"{name} (exit {step['exit_status']})" for name, step in ran.items() if step["exit_status"]]
    lines += ["Steps: " + ", ".join(f"{name} {step['seconds']:.0f} s" for name, step in ran.items()) + "."]
    if failed:
        lines.append("**Failed steps: " + ", ".join(failed) + ".**")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    steps = _steps(result)
    figure, (latency, throughput) = plt.subplots(1, 2, figsize=(13, 5))
    for step, style, cells_key in (("asgi", "-", "sizes"), ("wsgi", "--", "cases")):
        cells = steps[step].get("results", {}).get(cells_key, {})
        if not cells:
            continue
        variants = [v for v in next(iter(cells.values()))["variants"] if v != "bare"]
        for variant in variants:
            xs = [cell["bytes"] for cell in cells.values()]
            ys = [max(0.1, cell["variants"][variant]["added_median_us"]) for cell in cells.values()]
            latency.plot(xs, ys, style, marker="o", color=COLOURS.get(variant), label=f"{step.upper()} {variant}")
    latency.set(xscale="log", yscale="log", xlabel="body size (bytes, request and response)",
                ylabel="added median latency, request path (µs)", title="In process: added latency")
    latency.legend(fontsize=8)
    servers = steps["server"].get("results", {}).get("servers", {})
    markers = {"uvicorn-httptools": "o", "uvicorn-h11": "s", "gunicorn-sync": "^", "gunicorn-gthread": "v"}
    for kind, cells in servers.items():
        by_variant: dict[str, list[tuple[int, float]]] = {}
        for cell in cells.values():
            for variant, row in cell["variants"].items():
                if variant != "bare":
                    by_variant.setdefault(variant, []).append((cell["bytes"], row["rps_ratio"]))
        for variant, points in by_variant.items():
            points.sort()
            throughput.plot([p[0] for p in points], [p[1] for p in points], "-" if kind.startswith("uvicorn") else ":",
                            marker=markers.get(kind, "o"), color=COLOURS.get(variant), label=f"{kind} {variant}")
    throughput.axhline(1.0, color="grey", linewidth=0.8)
    throughput.set(xscale="log", ylim=(0, 1.1), xlabel="body size (bytes, request and response)",
                   ylabel="requests/s, ratio to bare", title="Servers under load (wrk): throughput ratio")
    throughput.legend(fontsize=7, ncol=2)
    m = result["machine"]
    figure.suptitle(
        f"obsml {result['versions'].get('obsml')}, {result['date'][:10]}: {m['cpu_model']}, {m['cores']} cores, "
        f"load {m['load_average_start'][0]:.1f} at start" + (" (--quick: smoke run)" if result["quick"] else ""),
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
