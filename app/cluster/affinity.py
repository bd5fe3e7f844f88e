"""Which replica a request should go to: the one that was sent the longest prefix of its prompt (its
slots or host cache likely still hold it), unless that one is much busier than the least loaded.
Pure logic; router.py plugs it into Ray Serve.

The router learns what each replica holds from what it routed there: a returning turn's prompt starts
with the earlier turns' prompts and answers, so matching the request's text against what each replica
was sent finds the replica holding its history, without asking the replicas. A replica that restarts
or leaves is forgotten (`drop`)."""

from __future__ import annotations

import json
import os
import random
from collections import OrderedDict
from typing import Any

MAX_KEY_CHARS = 65_536  # beyond this much text, two conversations that share it are the same one anyway
# The parts of a request body that make its prompt, in the order a chat template renders them, for
# every dialect: Anthropic's system, the Responses API's instructions, tools, then the conversation
# (messages; the Responses API's input; a completion's prompt; llama-server's /tokenize content).
PROMPT_FIELDS = ("system", "instructions", "tools", "messages", "input", "prompt", "content")


def prompt_key(body: bytes) -> str:
    """The text of a request's prompt, with its model's name first: the text a later turn starts with."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(data, dict):
        return ""
    text = "".join(_text(data.get(name)) for name in PROMPT_FIELDS)
    return f"{data.get('model', '')}\x00{text}"[:MAX_KEY_CHARS] if text else ""


def _text(value: Any) -> str:
    """The strings of a JSON value in order (a message's role and content, a content part's text)."""
    if isinstance(value, str):
        return value + "\x1f"  # a separator, so that "ab" + "c" differs from "a" + "bc"
    if isinstance(value, list):
        return "".join(_text(item) for item in value)
    if isinstance(value, dict):
        return "".join(_text(item) for item in value.values())
    return ""


class PrefixIndex:
    """The prompts last sent to each replica (an LRU of `per_replica` each): a prompt replaces those it
    extends, as the replica's cache keeps a conversation's latest state."""

    def __init__(self, per_replica: int = 256, min_shared_chars: int = 256):
        self.per_replica, self.min_shared_chars = per_replica, min_shared_chars
        self._sent: dict[str, OrderedDict[str, None]] = {}

    def record(self, replica: str, key: str) -> None:
        if not key:
            return
        sent = self._sent.setdefault(replica, OrderedDict())
        for earlier in [k for k in sent if key.startswith(k)]:
            del sent[earlier]
        sent[key] = None
        while len(sent) > self.per_replica:
            sent.popitem(last=False)

    def drop(self, replica: str) -> None:
        self._sent.pop(replica, None)

    def replicas(self) -> list[str]:
        return list(self._sent)

    def matches(self, key: str) -> dict[str, int]:
        """For each replica, how many characters of `key` its cache likely holds: all of a prompt it was
        sent that `key` extends (the conversation returning), or a shared beginning of at least
        `min_shared_chars` (a long system prompt); 0 for less, which is no reason to prefer it."""
        if not key:
            return {}
        return {replica: max((self._held(key, k) for k in sent), default=0) for replica, sent in self._sent.items()}

    def _held(self, key: str, sent: str) -> int:
        shared = len(os.path.commonprefix([key, sent]))
        return shared if shared == len(sent) or shared >= self.min_shared_chars else 0


def ranked(replicas: list[str], loads: dict[str, int], matches: dict[str, int], max_extra_load: int) -> list[list[str]]:
    """Replicas in order of preference, as ranks: those holding the most of the prompt first, unless they
    run more than `max_extra_load` requests beyond the least loaded; then all, least loaded first (ties in
    random order, so equal replicas share the work). Within a rank, Ray takes the shortest queue."""
    if not replicas:
        return []
    lightest = min(loads.get(r, 0) for r in replicas)
    near = [r for r in replicas if matches.get(r, 0) > 0 and loads.get(r, 0) - lightest <= max_extra_load]
    everyone = sorted(random.sample(replicas, len(replicas)), key=lambda r: loads.get(r, 0))
    if not near:
        return [everyone]
    most = max(matches[r] for r in near)
    return [[r for r in near if matches[r] == most], everyone]
