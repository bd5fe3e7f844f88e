"""The gateway's /metrics joins the replicas' expositions (cluster.metrics.labelled): each family once,
every replica's samples with its `replica` label. The real scrape through a cluster: test_ray.py."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from app.cluster.metrics import labelled

ONE = """# HELP hychat_slots_busy Slots generating now.
# TYPE hychat_slots_busy gauge
hychat_slots_busy{backend="llamacpp"} 1.0
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 40
"""
TWO = ONE.replace(" 1.0", " 3.0").replace(" 40", " 2")


def test_each_family_comes_once_with_every_replicas_samples_labelled():
    text = labelled({"b2": TWO, "a1": ONE})
    assert text.count("# TYPE hychat_slots_busy gauge") == 1
    assert text.count("# TYPE llamacpp:tokens_predicted_total counter") == 1  # llama-server's TYPE line, as it was
    samples = {(s.name, s.labels["replica"]): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("hychat_slots_busy", "a1")] == 1 and samples[("hychat_slots_busy", "b2")] == 3
    assert samples[("llamacpp:tokens_predicted_total", "a1")] == 40
    assert samples[("llamacpp:tokens_predicted_total", "b2")] == 2
    assert 'hychat_slots_busy{replica="a1",backend="llamacpp"} 1.0' in text.splitlines()


def test_one_replica_is_its_own_exposition_labelled():
    assert labelled({"a1": ONE}).replace('replica="a1",', "").replace('{replica="a1"}', "") == ONE
