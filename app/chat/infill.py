"""The fill-in-the-middle prompt of code models: the text before the cursor, the text after it, and
optionally other files of the project, in the model's own FIM tokens. The layout and the share of
each part are llama-server's (`format_prompt_infill` in tools/server/server-common.cpp), the
repo-level pattern of Qwen2.5-Coder (arXiv:2409.12186):

    [BOS][FIM_REP]myproject\\n[FIM_SEP]file0\\n<text 0>...[FIM_SEP]filename\\n
    [FIM_PRE]<prefix><prompt>[FIM_SUF]<suffix>[FIM_MID]

Hand-written because no library builds it: each server (llama-server, Ollama's templates) has its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from app.errors import InvalidParameterError
from app.types import Infill

# The token texts llama.cpp recognises as FIM tokens when a GGUF does not name them (llama-vocab.cpp,
# "auto-detect special tokens by text"): the PyTorch backend finds them in its tokenizer by the same.
FIM_TOKEN_TEXTS = {
    "pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
            "<|code_prefix|>", "<|prefix|>"),
    "suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
            "<|code_suffix|>", "<|suffix|>"),
    "mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
            "<|code_middle|>", "<|middle|>"),
    "rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "sep": ("<|file_sep|>",),
}  # fmt: skip
# Before each extra file when the model has no file separator (llama-server's words).
CHUNK_SEPARATOR = "\n\n--- snippet ---\n\n"
# llama-server's default logical batch: the prefix takes up to 3/4 of it, the suffix the rest.
FIM_WINDOW = 2048


@dataclass(frozen=True)
class FimTokens:
    pre: int | None = None
    suf: int | None = None
    mid: int | None = None
    rep: int | None = None  # the repository's name follows
    sep: int | None = None  # a file's name follows

    @classmethod
    def from_vocabulary(cls, vocabulary: Mapping[str, int]) -> FimTokens:
        texts = FIM_TOKEN_TEXTS.items()
        first = {kind: next((vocabulary[t] for t in names if t in vocabulary), None) for kind, names in texts}
        return cls(**first)

    def missing(self) -> list[str]:
        named = {"prefix": self.pre, "suffix": self.suf, "middle": self.mid}
        return [name for name, token in named.items() if token is None]


def infill_ids(
    infill: Infill,
    fim: FimTokens,
    tokenize: Callable[[str, bool], list[int]],
    start: list[int],
    n_ctx: int,
    max_new_tokens: int,
) -> list[int]:
    """The prompt's token ids. `tokenize(text, parse_special)` adds no BOS; `start` is what the model
    wants before any text (its BOS, or nothing). The prefix keeps its end, the suffix its start and
    the extra files their end, so that the text nearest the cursor stays; code that happens to spell a
    special token is read as text."""
    missing = fim.missing()
    if missing:
        raise InvalidParameterError(
            f"fill-in-the-middle is not supported by this model: it has no FIM {' or '.join(missing)} token", "suffix"
        )
    assert fim.pre is not None and fim.suf is not None and fim.mid is not None
    prompt = tokenize(infill.prompt, True) if infill.prompt else []
    answer_room = min(max_new_tokens, n_ctx // 2)
    window = min(FIM_WINDOW, n_ctx - answer_room)
    prefix = _last(tokenize(infill.prefix, False), 3 * window // 4)
    suffix = tokenize(infill.suffix, False)[: max(0, window // 4 - 2 - len(prompt))]
    # The prompt (the start of the line being written) goes after the prefix, as llama-server does.
    fim_part = [fim.pre, *prefix, *prompt, fim.suf, *suffix, fim.mid]
    extra = _last(_extra_ids(infill, fim, tokenize), n_ctx - answer_room - len(start) - len(fim_part))
    # llama-server puts the extra files before the BOS; here the BOS comes first, as in every other prompt.
    return [*start, *extra, *fim_part]


def _extra_ids(infill: Infill, fim: FimTokens, tokenize: Callable[[str, bool], list[int]]) -> list[int]:
    ids = [fim.rep, *tokenize("myproject\n", False)] if fim.rep is not None else []
    for filename, text in infill.extra:
        if fim.sep is not None:
            ids += [fim.sep, *tokenize(filename + "\n", False)]
        else:
            ids += tokenize(CHUNK_SEPARATOR, False)
        ids += tokenize(text, False)
    if fim.sep is not None:
        ids += [fim.sep, *tokenize("filename\n", False)]
    return ids


def _last(ids: list[int], n: int) -> list[int]:
    return ids[max(0, len(ids) - max(n, 0)) :]
