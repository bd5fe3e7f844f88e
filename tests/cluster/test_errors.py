"""The gateway's errors in the caller's dialect, as each route would write them: a replica lost
mid-stream ends the stream with the dialect's in-band error frame."""

from __future__ import annotations

import json

import pytest

from app.cluster.errors import ReplicaLostError, body_of, stream_error

LOST = ReplicaLostError(ConnectionError("actor died"))


def sse(frame: bytes) -> list[tuple[str | None, str]]:
    """(event, data) of each SSE frame."""
    out = []
    for block in frame.decode().replace("\r\n", "\n").strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((fields.get("event"), fields["data"]))
    return out


def test_openai_streams_end_with_an_error_then_done():
    (_, data), (_, done) = sse(stream_error("/v1/chat/completions", "text/event-stream", LOST))
    error = json.loads(data)["error"]
    assert error["code"] == "backend_unavailable" and "replica" in error["message"] and done == "[DONE]"


@pytest.mark.parametrize(
    ("path", "event", "shape"),
    [
        ("/v1/messages", "error", lambda d: d["type"] == "error" and d["error"]["type"] == "overloaded_error"),
        ("/v1/responses", "error", lambda d: d["type"] == "error" and "replica" in d["message"]),
        ("/completion", None, lambda d: d["error"]["code"] == 503),
        ("/api/chat", "error", lambda d: "replica" in d["error"]["message"]),  # hychat's own /api/chat
    ],
)
def test_each_dialects_stream_ends_with_its_error_event(path, event, shape):
    [(name, data)] = sse(stream_error(path, "text/event-stream; charset=utf-8", LOST))
    assert name == event and shape(json.loads(data))


def test_a_responses_error_event_is_numbered_after_the_last_event_sent():
    sent = b'event: response.output_text.delta\r\ndata: {"type": "response.output_text.delta", "sequence_number": 7}'
    [(_, data)] = sse(stream_error("/v1/responses", "text/event-stream; charset=utf-8", LOST, sent))
    assert json.loads(data)["sequence_number"] == 8
    [(_, data)] = sse(stream_error("/v1/responses", "text/event-stream; charset=utf-8", LOST))  # nothing sent yet
    assert json.loads(data)["sequence_number"] == 0


def test_ollama_streams_end_with_an_error_line():
    line = stream_error("/api/chat", "application/x-ndjson", LOST)
    assert line.endswith(b"\n") and json.loads(line) == {"error": str(LOST)}


def test_an_error_before_the_answer_takes_the_dialects_body():
    assert body_of("/v1/messages")(LOST)["type"] == "error"
    assert body_of("/api/generate")(LOST) == {"error": str(LOST)}
    assert body_of("/v1/chat/completions")(LOST)["error"]["message"] == str(LOST)
