"""`hychat bench parsing`: the same generation with and without chat output parsing, through its entry
point. The ratio itself is a measurement (docs/BENCHMARKS.md), never asserted here."""

from __future__ import annotations

import json

from tests.bench.test_bench import hychat


def test_bench_parsing_runs_both_arms_on_the_same_generation(tmp_path):
    out = tmp_path / "parsing.json"
    result = hychat("bench", "parsing", "--rounds", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["rounds"] == 1 and report["tokens"] > 100  # the forced reasoning and answer, both arms alike
    assert len(report["rates_off"]) == len(report["rates_on"]) == 1
    assert all(rate > 0 for rate in report["rates_off"] + report["rates_on"])
    assert f"ratio (medians, on / off): {report['ratio']:.3f}" in result.stdout


def test_bench_parsing_refuses_a_bad_round_count():
    result = hychat("bench", "parsing", "--rounds", "0")
    assert result.returncode == 2 and "--rounds must be >= 1" in result.stderr
