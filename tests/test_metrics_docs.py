"""The metrics reference and the Grafana dashboard stay true to the code: docs/metrics.md
is what the registries hold, and every metric the dashboard queries exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sipha.metricsref import all_metrics, render

DOCS = Path(__file__).parent.parent / "docs"


def test_the_committed_metrics_reference_matches_the_code() -> None:
    assert (DOCS / "metrics.md").read_text() == render(), (
        "run: python -m sipha.metricsref > docs/metrics.md")  # fmt: skip


def test_every_metric_the_dashboard_queries_exists_with_its_labels() -> None:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    known = {m.name: m for ms in all_metrics().values() for m in ms}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 15
    used = set()
    for expr in exprs:
        for name in re.findall(r"\bsipha_[a-z_]+", expr):
            assert name in known, f"{name} (in {expr!r}) is not a metric of any role"
            used.add(name)
            for label in re.findall(r"by \(([^)]*)\)", expr):
                for lab in (x.strip() for x in label.split(",")):
                    assert lab in (*known[name].labels, "instance", "job"), (lab, expr)
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for lab in re.findall(r"\{\{(\w+)\}\}", target["legendFormat"]):
                names = re.findall(r"\bsipha_[a-z_]+", target["expr"])
                assert all(lab in (*known[n].labels, "instance", "job") for n in names), (
                    lab, target["expr"])  # fmt: skip
    # the panels an operator needs first are there
    for needed in ("sipha_options_answers_total", "sipha_maintenance", "sipha_edge_destination_up",
                   "sipha_edge_dialogs_ended_total", "sipha_config_reload_errors_total"):
        assert needed in used
