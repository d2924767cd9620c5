"""``lifelong monitor``: a Prometheus for the Ray cluster (``start``, the default), and the
check of every dashboard query against a running Prometheus (``check``)."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
from pathlib import Path
from typing import Sequence

from lifelong.errors import LifelongError
from lifelong.monitor.dashboards import (DASHBOARD_DIR, evaluate_dashboards, load_dashboards,
                                         results_table)
from lifelong.monitor.prometheus import (DEFAULT_RAY_TEMP_DIR, PrometheusConfig,
                                         PrometheusProcess, find_prometheus)

_DESCRIPTION = """\
Monitoring of a Ray cluster running lifelong.

  lifelong monitor [start]   run a Prometheus (loopback) that scrapes every Ray node, found
                             through the service-discovery file Ray's head writes
                             (<ray temp dir>/prom_metrics_service_discovery.json); installs
                             Debian's prometheus package when it is missing and you are root.
                             Runs until Ctrl-C. Its prometheus.yml, data and log live in
                             --run-dir.
  lifelong monitor check     evaluate every expression of every panel of dashboards/*.json
                             through Prometheus's HTTP API; prints panel, expression and the
                             samples returned; exits 1 if any returns nothing.

The head must run Ray's dashboard (it writes the discovery file), e.g.
  RAY_PROMETHEUS_HOST=http://127.0.0.1:9090 ray start --head --metrics-export-port=8080
Grafana: see README.md, "Monitoring" (Ray's own Grafana integration, these dashboards)."""


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="{start,check}")
    defaults = PrometheusConfig()
    start = sub.add_parser("start", help="run a Prometheus scraping the Ray cluster")
    start.add_argument("--ray-temp-dir", default=DEFAULT_RAY_TEMP_DIR,
                       help="Ray's temp dir on this head node (default: %(default)s)")
    start.add_argument("--port", type=int, default=defaults.port,
                       help="Prometheus's port on 127.0.0.1 (default: %(default)s)")
    start.add_argument("--scrape-interval", type=float, default=defaults.scrape_interval_s,
                       metavar="SECONDS", help="default: %(default)s")
    start.add_argument("--run-dir", help="prometheus.yml, data and log (default: "
                       "~/.lifelong/prometheus)")
    start.add_argument("--retention", default=defaults.retention,
                       help="how long samples are kept (default: %(default)s)")
    start.add_argument("--prometheus", metavar="PATH", help="the prometheus binary "
                       "(default: from the PATH)")
    start.add_argument("--no-install", action="store_true",
                       help="never install Debian's prometheus package")
    check = sub.add_parser("check", help="evaluate every dashboard query through Prometheus")
    check.add_argument("--url", default=defaults.url, help="Prometheus (default: %(default)s)")
    check.add_argument("--dashboards", default=str(DASHBOARD_DIR),
                       help="folder of Grafana dashboards (default: the repository's)")
    check.add_argument("--rate-interval", default="1m",
                       help="what $__rate_interval stands for (default: %(default)s)")
    return parser


def _provision_grafana(ray_temp_dir: str, out) -> None:
    """Copies dashboards/*.json into the Grafana dashboards folder Ray generated for its
    session, if there is one (then `grafana-server --config .../grafana.ini` shows them)."""
    folder = Path(ray_temp_dir) / "session_latest" / "metrics" / "grafana" / "dashboards"
    if folder.is_dir() and DASHBOARD_DIR.is_dir():
        for path in sorted(DASHBOARD_DIR.glob("*.json")):
            shutil.copy(path, folder / path.name)
        print(f"dashboards copied into Ray's Grafana provisioning: {folder}", file=out)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def start_main(args, out=None) -> int:
    out = out or sys.stdout
    config = PrometheusConfig(ray_temp_dir=args.ray_temp_dir, port=args.port,
                              scrape_interval_s=args.scrape_interval, run_dir=args.run_dir,
                              retention=args.retention, binary=args.prometheus,
                              install=not args.no_install)
    binary = find_prometheus(config.binary, config.install)
    if not config.sd_file.exists():
        print(f"note: {config.sd_file} does not exist yet: start the head with Ray's "
              "dashboard (`ray start --head`, or --ray-temp-dir if it uses another temp dir); "
              "Prometheus picks the file up when it appears", file=out)
    prometheus = PrometheusProcess(config, binary).start()
    # SIGTERM ends it as Ctrl-C does, from before the hint that says so is printed
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        _provision_grafana(config.ray_temp_dir, out)
        print(f"Prometheus (pid {prometheus.process.pid}) at {config.url}, scraping the nodes "
              f"listed in {config.sd_file}\n  config {prometheus.config_path}, log "
              f"{prometheus.log_path}\n  check the dashboards' queries: lifelong monitor "
              f"check --url {config.url}\nCtrl-C stops it.", file=out, flush=True)
        code = prometheus.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        prometheus.stop()
        signal.signal(signal.SIGTERM, previous)
    return 0 if code in (0, -signal.SIGTERM) else 1


def check_main(args, out=None) -> int:
    out = out or sys.stdout
    results = evaluate_dashboards(args.url, load_dashboards(args.dashboards),
                                  args.rate_interval)
    print(results_table(results), file=out)
    empty = [r for r in results if not r.ok]
    if empty:
        print(f"\n{len(empty)} of {len(results)} expressions returned no data", file=out)
    return 1 if empty else 0


def main(argv: Sequence[str], prog: str = "lifelong monitor") -> int:
    """``lifelong monitor [start|check] ...``; typed errors print one line and exit 2."""
    argv = list(argv)
    if not argv or argv[0] not in ("start", "check", "-h", "--help"):
        argv = ["start", *argv]
    args = _parser(prog).parse_args(argv)
    try:
        return check_main(args) if args.command == "check" else start_main(args)
    except LifelongError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
