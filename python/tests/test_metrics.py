"""jac-orc's `/metrics` read by Prometheus's own Python parser: the exposition parses, and a
python-module deploy and the calls a client makes through ModuleProxy are counted.

A jac-orc of this module's own (a fresh process), so its counts start at zero and can be
compared exactly.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from test_orchestrator_proxy import require_binary, start_orchestrator

import jac_splice


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    # Loopback peers need no token for /metrics.
    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("jac_orc_"), family.name
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_parse_and_count_a_deploy_and_proxied_calls(tmp_path: Path) -> None:
    orc = start_orchestrator(require_binary(), tmp_path)
    try:
        deployed = orc.deploy_module("metrics-math", "math")
        assert deployed["deployment"]["status"] == "deployed", deployed
        # Through ModuleProxy (route="proxy"), whose calls jac-orc counts.
        splice = jac_splice.connect(orc.url, orc.token, route="proxy")
        math = splice.import_module("math", deployment="metrics-math")
        assert math.sqrt(9.0) == 3.0

        got = samples(orc.url)
        ok = (("module", "python-module"), ("result", "ok"))
        assert got[("jac_orc_deploys_total", ok)] == 1.0, got
        assert got[("jac_orc_deploy_duration_seconds_count", ok)] == 1.0
        mine = ("deployment", "default/metrics-math")
        calls = got[("jac_orc_proxy_calls_total", (("code", "OK"), mine))]
        # import_module and sqrt: at least two calls through ModuleProxy, none failed.
        assert calls >= 2.0, got
        assert got[("jac_orc_proxy_call_duration_seconds_count", (mine,))] == calls
        assert got.get(("jac_orc_proxy_errors_total", (mine,)), 0.0) == 0.0
    finally:
        orc.stop()
