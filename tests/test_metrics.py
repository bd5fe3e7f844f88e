"""app/metrics.py's llama-server series as plain objects: what one scrape shows after some answers."""

from __future__ import annotations

from dataclasses import replace

from prometheus_client.parser import text_string_to_metric_families

from app.metrics import LLAMA_SERVER_SERIES, LlamaServerSeries
from app.types import Usage

USAGE = Usage(prompt_tokens=9, completion_tokens=30, ttft_ms=40.0, decode_tokens_per_s=25.0, total_ms=120.0)
SPEC = ("spec_decode_num_draft_tokens_total", "spec_decode_num_accepted_tokens_total", "spec_decode_num_drafts_total")


def scraped(series: LlamaServerSeries) -> dict[str, float]:
    text = series.scrape()
    values = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    assert len(values) == len(LLAMA_SERVER_SERIES)
    return {name.removeprefix("llamacpp:"): value for name, value in values.items()}


def test_the_speculative_decoding_series_count_the_answers_drafts():
    series = LlamaServerSeries()
    assert [scraped(series)[name] for name in SPEC] == [0, 0, 0]
    series.add_generation(USAGE)  # no draft: nothing counted
    series.add_generation(replace(USAGE, drafted_tokens=20, accepted_tokens=15, drafts=4))
    series.add_generation(replace(USAGE, drafted_tokens=6, accepted_tokens=1, drafts=2))
    values = scraped(series)
    assert [values[name] for name in SPEC] == [26, 16, 6]
    assert values["tokens_predicted_total"] == 90  # the answers' tokens, drafts or not
