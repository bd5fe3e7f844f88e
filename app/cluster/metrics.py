"""The gateway's `/metrics`: every replica's, in one exposition, each sample labelled with the replica
that counted it (`replica="<its Ray replica id>"`, as X-Hychat-Replica names it). Routed as other
requests, a scrape would see one replica at random; the gateway asks them all (Ray Serve's broadcast)
and joins their answers here.

Joined as text, not through prometheus_client's parser: it would render llama-server's `llamacpp:`
counters with TYPE lines that drop `_total`, which llama-server's readers do not find (app/metrics.py)."""

from __future__ import annotations

import re
from collections.abc import Mapping

# A sample line: its name, its labels if any, and the rest (the value, a timestamp).
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?( .*)$")
FAMILY = re.compile(r"^# (?:HELP|TYPE) (\S+)")


def labelled(expositions: Mapping[str, str]) -> str:
    """One exposition of several replicas' (replica id -> its text): each metric family once, with
    its HELP and TYPE lines, then every replica's samples of it, each with its `replica` label."""
    families: dict[str, tuple[list[str], list[str]]] = {}  # name -> (HELP and TYPE lines, samples)
    for replica, text in sorted(expositions.items()):
        name = ""
        for line in text.splitlines():
            if header := FAMILY.match(line):
                name = header[1]
                comments, _ = families.setdefault(name, ([], []))
                if line not in comments:
                    comments.append(line)
            elif sample := SAMPLE.match(line):
                labels = f'replica="{replica}"' + (f",{sample[2]}" if sample[2] else "")
                families.setdefault(name, ([], []))[1].append(f"{sample[1]}{{{labels}}}{sample[3]}")
    return "".join(line + "\n" for comments, samples in families.values() for line in comments + samples)
