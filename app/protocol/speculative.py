"""llama-server's per-request speculative decoding fields (`speculative.type`...), which every dialect's
request body takes (not the APIs' own fields), and their reading over the server's default."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, Field

from app.types import Speculation
from config.settings import MAX_DRAFT_TOKENS, MAX_NGRAM_SIZE, SPEC_TYPE_NAMES, SpecTypeName


class SpeculativeFields(BaseModel):
    """llama-server's per-request speculative decoding (llama.cpp backend): flat keys with a dot, as it
    reads them. Unset (or null): the server's (--spec-type, --spec-draft-n-max...). Not OpenAI's."""

    speculative_type: SpecTypeName | None = Field(
        None,
        alias="speculative.type",
        description="none, ngram (llama-server's ngram-* names: ngram) or draft (draft-simple: the model's draft "
        "model; a model without one drafts by ngram).",
    )
    speculative_n_max: int | None = Field(
        None,
        alias="speculative.n_max",
        ge=0,
        le=MAX_DRAFT_TOKENS,
        description="Most draft tokens verified in one step.",
    )
    speculative_n_min: int | None = Field(
        None, alias="speculative.n_min", ge=0, description="A shorter draft is not verified."
    )
    speculative_ngram_size_n: int | None = Field(
        None, alias="speculative.ngram_size_n", ge=1, le=MAX_NGRAM_SIZE, description="Tokens matched to find a draft."
    )
    speculative_ngram_min_hits: int | None = Field(
        None, alias="speculative.ngram_min_hits", ge=1, description="Times they must have occurred before."
    )
    speculative_p_min: float | None = Field(
        None,
        alias="speculative.p_min",
        ge=0,
        le=1,
        description="A draft model's draft stops at a token it gives a probability below this.",
    )


def speculation(body: SpeculativeFields, defaults: Mapping[str, Any]) -> Speculation | None:
    """The request's `speculative.*` over the server's (`defaults["speculative"]`, else Speculation()'s);
    none set: the server's (None where `defaults` has none: the backend's own)."""
    given = {
        "type": SPEC_TYPE_NAMES[body.speculative_type] if body.speculative_type is not None else None,
        "n_max": body.speculative_n_max,
        "n_min": body.speculative_n_min,
        "ngram_size_n": body.speculative_ngram_size_n,
        "ngram_min_hits": body.speculative_ngram_min_hits,
        "p_min": body.speculative_p_min,
    }
    given = {name: value for name, value in given.items() if value is not None}
    server = defaults.get("speculative")
    return replace(server or Speculation(), **given) if given else server
