"""Tokenizer code in the shape of Hunyuan-7B's `tokenization_hy.py`, written for the tests: the
builder copies it into a tiny checkpoint as `tokenization_hy.py` beside `hy.tiktoken`, and
transformers loads it with `trust_remote_code`, as llama.cpp's converter does for the real 7B.

The interface the converter reads: `mergeable_ranks` (token bytes -> rank), `special_tokens`
(name -> id, numbered right after the last rank) and `vocab_size`.
"""

from __future__ import annotations

import base64
import os
import unicodedata

import tiktoken
from transformers import AddedToken, PreTrainedTokenizer

# Hunyuan-7B's split pattern (llama.cpp's `hunyuan` pre-tokenizer is the same regex).
PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NAMED_SPECIAL = ("<|endoftext|>", "<|startoftext|>", "<|bos|>", "<|eos|>", "<|pad|>")
N_EXTRA = 8  # the 7B has 205; the tests' chat template needs <|extra_0|> and <|extra_4|>
VOCAB_FILE = "hy.tiktoken"


def load_ranks(path: str) -> dict[bytes, int]:
    """hy.tiktoken: one `<base64 token bytes> <rank>` a line."""
    with open(path, "rb") as f:
        return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in f if line.strip())}


class HYTokenizer(PreTrainedTokenizer):
    vocab_files_names = {"vocab_file": VOCAB_FILE}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str, **kwargs):
        self.vocab_file = vocab_file
        self.mergeable_ranks = load_ranks(vocab_file)
        names = NAMED_SPECIAL + tuple(f"<|extra_{i}|>" for i in range(N_EXTRA))
        self.special_tokens = {name: len(self.mergeable_ranks) + i for i, name in enumerate(names)}
        self.encoding = tiktoken.Encoding(
            "hy", pat_str=PAT_STR, mergeable_ranks=self.mergeable_ranks, special_tokens=self.special_tokens
        )
        self.decoder: dict[int, bytes | str] = {rank: token for token, rank in self.mergeable_ranks.items()}
        self.decoder.update({i: name for name, i in self.special_tokens.items()})
        # Registered before the base class runs, so it finds bos/eos/pad already known with their ids
        # instead of appending them as new tokens.
        self._added_tokens_decoder = {
            i: AddedToken(name, special=True, normalized=False) for name, i in self.special_tokens.items()
        }
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    def get_vocab(self) -> dict[bytes | str, int]:
        return {**self.mergeable_ranks, **self.special_tokens}

    def tokenize(self, text: str, **kwargs) -> list[bytes | str]:
        """Whole-text tiktoken encoding (special tokens in the text are recognised); tokens are byte
        strings, special ones their names."""
        ids = self.encoding.encode(unicodedata.normalize("NFC", text), allowed_special="all")
        return [self.decoder[i] for i in ids]

    def _convert_token_to_id(self, token: bytes | str) -> int:
        return self.special_tokens[token] if isinstance(token, str) else self.mergeable_ranks[token]

    def _convert_id_to_token(self, index: int) -> bytes | str:
        return self.decoder[index]

    def convert_tokens_to_string(self, tokens: list[bytes | str]) -> str:
        data = b"".join(t.encode() if isinstance(t, str) else t for t in tokens)
        return data.decode("utf-8", errors="replace")

    def _decode(self, token_ids: int | list[int], skip_special_tokens: bool = False, **kwargs) -> str:
        ids = [token_ids] if isinstance(token_ids, int) else token_ids
        if skip_special_tokens:
            ids = [i for i in ids if i < len(self.mergeable_ranks)]
        return self.encoding.decode(ids, errors="replace")

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        path = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILE)
        with open(path, "wb") as f:
            for token, rank in sorted(self.mergeable_ranks.items(), key=lambda item: item[1]):
                f.write(base64.b64encode(token) + b" %d\n" % rank)
        return (path,)
