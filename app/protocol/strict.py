"""The base of every request body. A field the body's model does not know is a 400 (OpenAI's
behaviour: a typo never passes silently), or, with the `unknown_fields` setting "ignore", dropped with
a log line (llama-server's and vLLM's). Fields a model lists in `ignored` (other servers' extensions
that do not apply here) are dropped, with a log line, either way: a client that sends one still works.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

log = logging.getLogger(__name__)

# Set for each request from the settings (app.main); a context variable because pydantic validates
# bodies without access to the app.
UNKNOWN_FIELDS_IGNORED: ContextVar[bool] = ContextVar("unknown_fields_ignored", default=False)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ignored: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _drop_ignored(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if UNKNOWN_FIELDS_IGNORED.get():
            known = {name for key, field in cls.model_fields.items() for name in (key, field.alias) if name}
            dropped = sorted(key for key in data if key not in known)
        else:
            dropped = sorted(key for key in data if key in cls.ignored)
        if not dropped:
            return data
        log.info("%s: ignoring %s", cls.__name__, ", ".join(map(str, dropped)))
        return {key: value for key, value in data.items() if key not in dropped}
