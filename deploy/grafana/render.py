"""A picture of the Grafana dashboard drawn from a Prometheus: every panel's queries are run
over a time range (`/api/v1/query_range`) and plotted with matplotlib where the dashboard puts
the panel. For documentation and for a look at the dashboard without a Grafana.

    python deploy/grafana/render.py --prometheus http://127.0.0.1:9090 --output docs/dashboard.png \
        [--start UNIX --end UNIX | --minutes 60] [--var namespace=oddity]

Template variables not given are "All" (`.*`); `$__rate_interval` is Grafana's rule:
max(step + scrape interval, 4 x scrape interval).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[1] / "k8s" / "components" / "monitoring" / "dashboards" / "oddity.json"
GRID_UNIT_INCHES = 0.42  # height of one Grafana grid row in the picture
WIDTH_INCHES = 22.0
MAX_SERIES = 8  # lines drawn per panel; the legend says how many were left out


def substitute(expr: str, variables: dict[str, str]) -> str:
    """The expression as Grafana sends it: `$name` and `${name}` replaced (longest names first)."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    return expr


def dashboard_variables(dashboard: dict[str, Any], given: dict[str, str]) -> dict[str, str]:
    """Every query variable: the given value, else its "All" value."""
    values = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            values[variable["name"]] = given.get(variable["name"], variable.get("allValue") or ".*")
    return values


def legend(template: str, labels: dict[str, str]) -> str:
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)
    return " ".join(text.split()) or json.dumps(labels, sort_keys=True)


def get(prometheus: str, path: str, params: dict[str, Any]) -> Any:
    url = f"{prometheus.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"{path} {params}: {body}")
    return body["data"]


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    data = get(prometheus, "/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step})
    return data["result"]


def format_value(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return str(value)
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    if unit == "s":
        if value == 0:
            return "0"
        if abs(value) < 1e-3:
            return f"{value * 1e6:.3g} µs"
        if abs(value) < 1:
            return f"{value * 1e3:.3g} ms"
        if abs(value) < 120:
            return f"{value:.3g} s"
        if abs(value) < 7200:
            return f"{value / 60:.3g} min"
        return f"{value / 3600:.3g} h"
    if unit == "bytes":
        for size, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(value) >= size:
                return f"{value / size:.3g} {name}"
        return f"{value:.0f} B"
    if unit == "reqps":
        return f"{value:.3g}/s"
    return f"{value:.4g}"


def draw(
    prometheus: str,
    dashboard: dict[str, Any],
    output: Path,
    start: float,
    end: float,
    variables: dict[str, str] | None = None,
    scrape_interval: float = 15.0,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    values = dashboard_variables(dashboard, variables or {})
    step = max(1.0, (end - start) / 240)
    values["__rate_interval"] = f"{int(max(step + scrape_interval, 4 * scrape_interval))}s"
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    height = rows * GRID_UNIT_INCHES + 0.8
    plt.style.use("dark_background")
    figure = plt.figure(figsize=(WIDTH_INCHES, height), dpi=80)
    figure.patch.set_facecolor("#111217")
    top = 1 - 0.8 / height
    figure.text(
        0.005,
        1 - 0.3 / height,
        f"{dashboard['title']}  ·  {datetime.fromtimestamp(start):%Y-%m-%d %H:%M:%S} to "
        f"{datetime.fromtimestamp(end):%H:%M:%S}  ·  "
        + "  ".join(f"{k}={v}" for k, v in values.items() if not k.startswith("__")),
        fontsize=13,
        color="#d8d9da",
        va="center",
    )

    def box(grid: dict[str, int]) -> tuple[float, float, float, float]:
        left = grid["x"] / 24
        width = grid["w"] / 24
        bottom = top - (grid["y"] + grid["h"]) / rows * top
        return left, bottom, width, grid["h"] / rows * top

    for panel in panels:
        left, bottom, width, panel_height = box(panel["gridPos"])
        if panel["type"] == "row":
            figure.text(left + 0.004, bottom + panel_height / 2, panel["title"], fontsize=12, weight="bold")
            continue
        # Room for the title above and the legend below, in figure fractions.
        pad_x, title_h = 0.028, 0.32 / height
        legend_h = 0.95 / height
        axes = figure.add_axes(
            (
                left + pad_x,
                bottom + legend_h,
                width - pad_x - 0.006,
                panel_height - legend_h - title_h,
            )
        )
        axes.set_facecolor("#181b1f")
        axes.set_title(panel["title"], fontsize=10, loc="left", color="#d8d9da")
        config = panel.get("fieldConfig", {})
        unit = config.get("defaults", {}).get("unit", "short")
        custom = config.get("defaults", {}).get("custom", {})
        dashed = {o["matcher"]["options"] for o in config.get("overrides", []) if o["matcher"]["id"] == "byFrameRefID"}
        lines, names = [], []
        total = 0
        for target in panel["targets"]:
            expr = substitute(target["expr"], values)
            for series in query_range(prometheus, expr, start, end, step):
                total += 1
                if len(lines) >= MAX_SERIES:
                    continue
                times = [datetime.fromtimestamp(float(t)) for t, _ in series["values"]]
                points = [float(v) for _, v in series["values"]]
                name = legend(target.get("legendFormat", ""), series["metric"])
                if panel["type"] == "stat":
                    (line,) = axes.plot(times, points, linewidth=1)
                    last = next((p for p in reversed(points) if math.isfinite(p)), float("nan"))
                    axes.text(
                        0.02,
                        0.85 - 0.2 * len(lines),
                        f"{name}: {format_value(last, unit)}",
                        transform=axes.transAxes,
                        fontsize=14,
                        color=line.get_color(),
                        weight="bold",
                    )
                elif custom.get("drawStyle") == "bars":
                    (line,) = axes.plot(times, points, linewidth=1, drawstyle="steps-mid")
                    axes.fill_between(times, points, step="mid", alpha=0.35, color=line.get_color())
                else:
                    style = "--" if target["refId"] in dashed else "-"
                    (line,) = axes.plot(times, points, linewidth=1.2, linestyle=style)
                lines.append(line)
                names.append(name)
        if not lines:
            axes.text(0.5, 0.5, "No data", transform=axes.transAxes, ha="center", va="center", color="#8e8e8e")
        finite = [v for line in lines for v in line.get_ydata() if math.isfinite(v)]
        if finite and min(finite) >= 0 and (custom.get("axisSoftMin") == 0 or panel["type"] == "stat"):
            highest = max(finite)
            axes.set_ylim(0, highest * 1.12 if highest > 0 else 1)
        axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos, unit=unit: format_value(v, unit)))
        axes.tick_params(labelsize=7, colors="#9fa7b3")
        axes.xaxis.set_major_formatter(matplotlib.dates.DateFormatter("%H:%M:%S"))
        axes.grid(color="#2c3235", linewidth=0.5)
        for spine in axes.spines.values():
            spine.set_color("#2c3235")
        if lines and panel["type"] != "stat":
            if total > len(lines):
                names[-1] += f"  (+{total - len(lines)} more)"
            axes.legend(
                lines,
                names,
                loc="upper left",
                bbox_to_anchor=(0, -0.12),
                ncol=2,
                fontsize=7,
                frameon=False,
                handlelength=1.5,
                columnspacing=1.0,
                labelspacing=0.2,
            )
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, facecolor=figure.get_facecolor())
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    parser.add_argument("--start", type=float, help="unix seconds (default: --minutes before --end)")
    parser.add_argument("--end", type=float, help="unix seconds (default: now)")
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--scrape-interval", type=float, default=15.0, help="seconds, for $__rate_interval")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="a template variable")
    args = parser.parse_args(argv)
    end = args.end if args.end is not None else time.time()
    start = args.start if args.start is not None else end - args.minutes * 60
    given = dict(item.split("=", 1) for item in args.var)
    dashboard = json.loads(args.dashboard.read_text(encoding="utf-8"))
    draw(args.prometheus, dashboard, args.output, start, end, given, args.scrape_interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
