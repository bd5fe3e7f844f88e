"""The responses a server keeps for `previous_response_id` and `GET /v1/responses/{id}`: each stored
response's body as it was sent and its conversation (the input and the output as chat messages), so
that a follow-up renders the same prefix and llama.cpp's slot cache decodes only its new tokens.

Bounded twice: at most `max_size` responses (the least recently used goes first) and none older
than `ttl_s`. One store per app (`app.state.response_store`), safe to call from any thread.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.errors import HychatError


class ResponseNotFoundError(HychatError):
    """No stored response has this id: never stored (`store: false`), expired, evicted or deleted."""

    status_code = 404

    def __init__(self, response_id: str, param: str | None, code: str):
        super().__init__(
            f"no stored response has the id {response_id!r}: it was made with store: false, or it expired, "
            "was evicted (HYCHAT_RESPONSES_STORE_TTL_S, HYCHAT_RESPONSES_STORE_SIZE) or deleted"
        )
        self.param, self.code = param, code


@dataclass(frozen=True)
class StoredResponse:
    body: Any  # the response object as it was sent (a dialect's type: this layer never reads it)
    conversation: tuple[dict[str, Any], ...]  # its input and output as chat messages, OpenAI's shape
    stored_at_s: float  # on the store's clock


class ResponseStore:
    def __init__(self, max_size: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.max_size, self.ttl_s, self._clock = max_size, ttl_s, clock
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def put(self, response_id: str, body: Any, conversation: Sequence[dict[str, Any]]) -> None:
        """Keeps a copy of `conversation`; `body` as it is (the caller no longer changes it)."""
        entry = StoredResponse(body, tuple(copy.deepcopy(list(conversation))), self._clock())
        with self._lock:
            self._entries[response_id] = entry
            self._entries.move_to_end(response_id)
            self._expire()
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        """The stored response (its conversation a copy the caller may change), or None."""
        with self._lock:
            self._expire()
            entry = self._entries.get(response_id)
            if entry is None:
                return None
            self._entries.move_to_end(response_id)
        return StoredResponse(entry.body, copy.deepcopy(entry.conversation), entry.stored_at_s)

    def delete(self, response_id: str) -> bool:
        with self._lock:
            self._expire()
            return self._entries.pop(response_id, None) is not None

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._entries)

    def _expire(self) -> None:
        """Drops what is older than ttl_s. Least recently used is not oldest, so every entry is looked at;
        a store holds at most max_size of them."""
        oldest = self._clock() - self.ttl_s
        for response_id in [k for k, entry in self._entries.items() if entry.stored_at_s <= oldest]:
            del self._entries[response_id]
