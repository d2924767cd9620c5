"""Monitoring of a Ray cluster running lifelong: a Prometheus that finds every node through
Ray's service-discovery file (``prometheus.py``), and the Grafana dashboards of ``dashboards/``
evaluated through Prometheus's HTTP API (``dashboards.py``); ``command.py`` is
``lifelong monitor``."""

from lifelong.monitor.dashboards import (DASHBOARD_DIR, PanelQuery, PrometheusAPI, QueryResult,
                                         evaluate_dashboards, load_dashboards, panel_queries,
                                         render, results_table)
from lifelong.monitor.prometheus import PrometheusConfig, PrometheusProcess, find_prometheus

__all__ = ["DASHBOARD_DIR", "PanelQuery", "PrometheusAPI", "PrometheusConfig",
           "PrometheusProcess", "QueryResult", "evaluate_dashboards", "find_prometheus",
           "load_dashboards", "panel_queries", "render", "results_table"]
