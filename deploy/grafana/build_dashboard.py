#!/usr/bin/env python3
"""Writes egress-warden.json, the Grafana dashboard for per-run egress. Edit this file, not the
JSON: python3 deploy/grafana/build_dashboard.py. CI checks the committed JSON is up to date and
runs every query against a real Prometheus (tests/prometheus.rs)."""
import json
import pathlib

RUN = 'run_id=~"$run_id"'
PANELS = [
    # (title, type, unit, [(expr, legend)], width)
    ("Bytes per second, to and from upstream", "timeseries", "Bps", [
        (f'sum by (run_id) (rate(egress_warden_upstream_sent_bytes_total{{{RUN}}}[$__rate_interval]))', "{{run_id}} sent"),
        (f'sum by (run_id) (rate(egress_warden_upstream_received_bytes_total{{{RUN}}}[$__rate_interval]))', "{{run_id}} received"),
    ], 12),
    ("Decisions per second, by verdict", "timeseries", "reqps", [
        (f'sum by (verdict) (rate(egress_warden_decisions_total{{{RUN}}}[$__rate_interval]))', "{{verdict}}"),
    ], 12),
    ("Top denied reasons (over the range)", "bargauge", "short", [
        (f'topk(10, sum by (reason) (increase(egress_warden_decisions_total{{{RUN},verdict="deny"}}[$__range])))', "{{reason}}"),
    ], 8),
    # The run's totals, not increase(): a violation before the first scrape starts the series
    # above zero, and increase() would show nothing for it.
    ("Violations by reason (run totals)", "bargauge", "short", [
        (f'sum by (reason) (max_over_time(egress_warden_violations_total{{{RUN}}}[$__range]))', "{{reason}}"),
    ], 8),
    ("Terminated runs", "stat", "short", [
        (f'count(egress_warden_run_terminated{{{RUN}}} == 1) or vector(0)', "terminated"),
    ], 8),
    ("Terminated runs, by run", "table", "short", [
        (f'max by (run_id) (egress_warden_run_terminated{{{RUN}}}) == 1', "{{run_id}}"),
    ], 12),
    ("Open client connections, by listener", "timeseries", "short", [
        (f'sum by (listener) (egress_warden_connections_open{{{RUN}}})', "{{listener}}"),
    ], 12),
    ("Open client connections, by worker thread", "timeseries", "short", [
        (f'sum by (worker) (egress_warden_worker_connections{{{RUN}}})', "worker {{worker}}"),
    ], 12),
    ("Upstream connect latency (p50, p99)", "timeseries", "s", [
        (f'histogram_quantile(0.5, sum by (le) (rate(egress_warden_upstream_connect_duration_seconds_bucket{{{RUN}}}[$__rate_interval])))', "p50"),
        (f'histogram_quantile(0.99, sum by (le) (rate(egress_warden_upstream_connect_duration_seconds_bucket{{{RUN}}}[$__rate_interval])))', "p99"),
    ], 12),
    ("DNS lookups by the warden, by outcome", "timeseries", "reqps", [
        (f'sum by (outcome) (rate(egress_warden_dns_lookups_total{{{RUN}}}[$__rate_interval]))', "{{outcome}}"),
    ], 12),
    ("Capture: enforcement active, dropped packets", "timeseries", "short", [
        (f'min by (run_id) (egress_warden_enforcement_active{{{RUN}}})', "{{run_id}} active"),
        (f'sum by (class) (rate(egress_warden_capture_dropped_packets_total{{{RUN}}}[$__rate_interval]))', "dropped {{class}}/s"),
    ], 12),
]


def panel(i, title, kind, unit, targets, width, x, y):
    return {
        "id": i + 1,
        "title": title,
        "type": kind,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [
            {"refId": chr(ord("A") + n), "expr": expr, "legendFormat": legend,
             "datasource": {"type": "prometheus", "uid": "${datasource}"}}
            for n, (expr, legend) in enumerate(targets)
        ],
    }


def dashboard():
    panels, x, y = [], 0, 0
    for i, (title, kind, unit, targets, width) in enumerate(PANELS):
        if x + width > 24:
            x, y = 0, y + 8
        panels.append(panel(i, title, kind, unit, targets, width, x, y))
        x += width
    return {
        "title": "egress-warden: per-run egress",
        "uid": "egress-warden-runs",
        "tags": ["egress-warden"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
            {"name": "run_id", "type": "query", "label": "Run",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(egress_warden_build_info, run_id)", "refId": "run_id"},
             "definition": "label_values(egress_warden_build_info, run_id)",
             "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2,
             "current": {"text": "All", "value": "$__all"}},
        ]},
        "panels": panels,
    }


if __name__ == "__main__":
    out = pathlib.Path(__file__).with_name("egress-warden.json")
    out.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(out)
