"""Every way to cut a text into two or three pieces, for the streaming parsers' tests (a real
tokenizer's cuts: the `token_pieces` fixture in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator


def splittings(text: str) -> Iterator[list[str]]:
    """Every 2-way and 3-way split of `text` at character boundaries (empty pieces included)."""
    for i in range(len(text) + 1):
        yield [text[:i], text[i:]]
        for j in range(i, len(text) + 1):
            yield [text[:i], text[i:j], text[j:]]
