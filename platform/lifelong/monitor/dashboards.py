"""The Grafana dashboards of ``dashboards/`` as Prometheus queries: every panel's expressions
with the Grafana variables filled in as Grafana would for "All", evaluated through
Prometheus's HTTP API (``/api/v1/query``), so a query that returns nothing shows."""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lifelong.errors import MonitorError

# The repository's dashboards (an editable install keeps them next to the package).
DASHBOARD_DIR = Path(__file__).resolve().parents[3] / "dashboards"
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"^label_values\((.*),\s*(\w+)\)$", re.S)
# Labels only some deployments set (KubeRay's cluster name): a variable over one may list
# nothing, and its "All" value (.*) matches series without the label.
OPTIONAL_LABELS = ("ray_io_cluster",)


@dataclass(frozen=True)
class PanelQuery:
    """One expression of a dashboard: a panel's target, or a query variable's
    ``label_values(...)`` (panel ``$name``)."""

    dashboard: str  # the file's stem
    panel: str      # the panel's title, or "$variable"
    ref: str        # the target's refId ("" for a variable)
    expr: str       # as written in the dashboard, variables unfilled
    optional: bool = False  # a variable over an OPTIONAL_LABELS label: may list nothing


@dataclass(frozen=True)
class QueryResult:
    query: PanelQuery
    rendered: str  # what was sent to Prometheus
    samples: int   # series returned (instant samples, or a variable's label values)
    finite: int    # of those, samples with a finite value

    @property
    def ok(self) -> bool:
        return self.samples > 0 or self.query.optional


def load_dashboards(folder: str | Path = DASHBOARD_DIR) -> dict[str, dict]:
    """Every ``*.json`` dashboard of ``folder`` by file stem."""
    paths = sorted(Path(folder).glob("*.json"))
    if not paths:
        raise MonitorError(f"no dashboards (*.json) in {folder}")
    return {p.stem: json.loads(p.read_text()) for p in paths}


def panel_queries(name: str, dashboard: dict) -> list[PanelQuery]:
    """The dashboard's query variables and every target of every panel (rows included)."""
    out = []
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            found = _LABEL_VALUES.match(query.strip())
            optional = bool(found) and found.group(2) in OPTIONAL_LABELS
            out.append(PanelQuery(name, f"${v['name']}", "", query, optional))
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop(0)
        panels[:0] = panel.get("panels", [])  # a collapsed row holds its panels
        for target in panel.get("targets", []):
            out.append(PanelQuery(name, panel.get("title", "?"), target.get("refId", ""),
                                  target["expr"]))
    return out


def render(expr: str, dashboard: dict, rate_interval: str = "1m") -> str:
    """``expr`` as Grafana sends it with every variable set to "All": a variable's
    ``allValue`` (``.*`` when it has none); ``$__rate_interval`` and ``$__interval`` become
    ``rate_interval``, ``$__range`` 1h.

    Raises:
        MonitorError: the expression names a variable the dashboard does not define.
    """
    values = {v["name"]: v.get("allValue") or ".*"
              for v in dashboard.get("templating", {}).get("list", [])
              if v.get("type") in ("query", "custom")}
    values.update({"__rate_interval": rate_interval, "__interval": rate_interval,
                   "__range": "1h"})

    def fill(match: re.Match) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            raise MonitorError(f"{dashboard.get('title', '?')}: {expr!r} uses ${name}, which "
                               "the dashboard does not define")
        return values[name]

    return _VARIABLE.sub(fill, expr)


class PrometheusAPI:
    """The few calls of Prometheus's HTTP API the checks need."""

    def __init__(self, url: str, timeout_s: float = 10.0):
        self.url, self.timeout_s = url.rstrip("/"), timeout_s

    def _get(self, path: str, params: list[tuple[str, str]]) -> dict:
        address = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(address, timeout=self.timeout_s) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:  # 400: a malformed expression
            body = json.loads(exc.read() or b"{}")
        except (urllib.error.URLError, OSError) as exc:
            raise MonitorError(f"Prometheus does not answer at {self.url}: {exc}") from None
        if body.get("status") != "success":
            raise MonitorError(f"Prometheus refused {params}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """The instant vector of ``expr`` now (``[{"metric": ..., "value": [t, "v"]}]``)."""
        data = self._get("/api/v1/query", [("query", expr)])
        if data["resultType"] != "vector":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def targets_up(self) -> int:
        """Active targets whose last scrape succeeded."""
        data = self._get("/api/v1/targets", [("state", "active")])
        return sum(t["health"] == "up" for t in data["activeTargets"])


def evaluate(api: PrometheusAPI, query: PanelQuery, dashboard: dict,
             rate_interval: str = "1m") -> QueryResult:
    """Runs one dashboard expression (a variable's ``label_values`` as a ``count by``)."""
    rendered = render(query.expr, dashboard, rate_interval)
    if query.panel.startswith("$"):  # the values of series exported now (Grafana would also
        # list those of the dashboard's whole time range)
        found = _LABEL_VALUES.match(rendered.strip())
        if not found:
            raise MonitorError(f"{query.dashboard} {query.panel}: only label_values(selector, "
                               f"label) variables are supported, not {query.expr!r}")
        selector, label = found.groups()
        rendered = f"count by ({label}) ({selector})"
        names = {r["metric"].get(label) for r in api.query(rendered)} - {None, ""}
        return QueryResult(query, rendered, len(names), len(names))
    result = api.query(rendered)
    finite = sum(math.isfinite(float(r["value"][1])) for r in result)
    return QueryResult(query, rendered, len(result), finite)


def evaluate_dashboards(url: str, dashboards: dict[str, dict] | None = None,
                        rate_interval: str = "1m") -> list[QueryResult]:
    """Every expression of every dashboard (default: ``dashboards/``) against Prometheus."""
    api = PrometheusAPI(url)
    dashboards = load_dashboards() if dashboards is None else dashboards
    return [evaluate(api, q, d, rate_interval)
            for name, d in dashboards.items() for q in panel_queries(name, d)]


def results_table(results: list[QueryResult]) -> str:
    """A markdown table: dashboard, panel, expression as rendered, samples (finite)."""
    lines = ["| dashboard | panel | expression | samples (finite) |", "| --- | --- | --- | --- |"]
    for r in results:
        q = r.query
        panel = f"{q.panel} ({q.ref})" if q.ref else q.panel
        expr = r.rendered.replace("|", "\\|")
        lines.append(f"| {q.dashboard} | {panel} | `{expr}` | {r.samples} ({r.finite}) |")
    return "\n".join(lines)
