"""The PyTorch backend: Hugging Face checkpoints (or a GGUF, dequantized) through transformers,
with an optional peft LoRA adapter. Same interface as the llama.cpp backend.

    from app.services.model_service import model_service, MODEL_AVAILABLE
    model_service.load_model(model_path="path/to/hf-checkpoint", dtype="bfloat16", lora_path="path/to/adapter")
    text = model_service.generate(prompt="你好", max_new_tokens=256, temperature=0.7)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from time import perf_counter
from typing import Any

from app.chat.format import ChatFormat
from app.chat.infill import FimTokens
from app.chat.template import CHATML_TEMPLATE
from app.cpu import physical_cores
from app.engine.detokenize import TextAssembler, WindowDecoder
from app.engine.worker import Emit
from app.errors import BackendUnavailableError, InvalidParameterError, ModelFileError
from app.modelfiles.adapter import low_rank_on_embeddings, tensor_names
from app.modelfiles.gguf import read_gguf
from app.services import chat_templates
from app.services.backend import Backend
from app.services.checks import is_int_at_least
from app.types import SamplingParams, TokenEvent, UsageClock
from config.settings import DTYPES

try:
    import torch
    import transformers

    MODEL_AVAILABLE = True
except ImportError:
    MODEL_AVAILABLE = False

log = logging.getLogger(__name__)


@dataclass
class _Loaded:
    model: Any  # transformers PreTrainedModel (or a peft model when the adapter is not merged)
    tokenizer: Any
    path: Path
    n_ctx: int
    n_threads: int
    eog_ids: frozenset[int]
    lora_path: str | None = None
    lora_merged: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    chat_format: Any = None  # ChatFormat from the tokenizer's template
    alias: str | None = None  # the name it is served by, in place of the folder's or file's
    template_override: bool = False  # chat_format is not from the tokenizer's own template

    @property
    def name(self) -> str:
        return self.alias or self.path.name


class TorchBackend(Backend):
    name = "pytorch"
    label = "PyTorch"
    available = MODEL_AVAILABLE
    _model: _Loaded | None

    # -- loading -------------------------------------------------------------------------------

    def load_model(
        self,
        model_path: str,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        dtype: str = "auto",
        lora_path: str | None = None,
        merge_lora: bool = True,
        *,
        chat_template: str | None = None,
        jinja: bool = True,
        alias: str | None = None,
    ) -> None:
        """Loads a checkpoint folder or a GGUF file, replacing the model loaded before (which stays
        until this succeeds). `dtype="auto"` measures which dtype multiplies fastest on this CPU.
        `chat_template`: a Jinja template or the name of a llama.cpp built-in one (chatml, llama3...)
        in place of the tokenizer's; `jinja=False`: chats rendered by llama.cpp's built-in templates
        (app.services.chat_templates). `alias`: the name the model is served by (default: the folder's)."""
        if not MODEL_AVAILABLE:
            raise BackendUnavailableError("the PyTorch backend needs the torch extra: pip install 'hychat[torch]'")
        _check_load_args(n_ctx, n_threads, n_gpu_layers, dtype)
        chat_templates.check_served_as(chat_template, alias)
        n_threads = n_threads or physical_cores()
        torch.set_num_threads(n_threads)
        torch_dtype = fastest_cpu_dtype(*mlp_shape(Path(model_path))) if dtype == "auto" else getattr(torch, dtype)
        model, tokenizer, path = _load_checkpoint(Path(model_path), torch_dtype)
        if lora_path:
            model = apply_lora(model, Path(lora_path), merge_lora)
        model.eval()
        if tokenizer.chat_template is None:
            tokenizer.chat_template = CHATML_TEMPLATE
        n_ctx = min(n_ctx, getattr(model.config, "max_position_embeddings", n_ctx) or n_ctx)
        loaded = _Loaded(model, tokenizer, path, n_ctx, n_threads, _eog_ids(model, tokenizer), lora_path, merge_lora)
        loaded.alias, loaded.template_override = alias, chat_template is not None or not jinja
        # The variables transformers' apply_chat_template passes: every named special token.
        special = tokenizer.special_tokens_map
        if chat_template is not None or not jinja:  # the caller's template: one that does not render is an error
            template = chat_template if chat_template is not None else tokenizer.chat_template
            loaded.chat_format = chat_templates.chat_format(template, special, jinja)
        else:
            loaded.chat_format = ChatFormat.from_template(tokenizer.chat_template, special)
        loaded.info = _describe(loaded, torch_dtype)
        self._install(loaded)
        log.info("PyTorch loaded %s (%s, %d threads): %d tokens of context, one request at a time",
                 path, torch_dtype, n_threads, n_ctx)  # fmt: skip

    def info(self) -> dict[str, Any]:
        if self._model is None:
            return {"backend": self.name, "available": self.available, "loaded": False}
        return {**self._model.info, "infill": not self._fim_tokens(self._model).missing()}

    # -- generation ----------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """`add_special`: the tokens the tokenizer adds around a text (BOS...); `parse_special`:
        special tokens written in the text become their ids."""
        tokenizer = self._require().tokenizer
        return tokenizer(text, add_special_tokens=add_special, split_special_tokens=not parse_special).input_ids

    def vocabulary_size(self) -> int:
        return len(self._require().tokenizer)

    def _eog_tokens(self) -> tuple[int, ...]:
        return tuple(sorted(self._require().eog_ids))

    def token_piece(self, token_id: int) -> bytes:
        """The token's bytes, a special token as its text."""
        tokenizer = self._require().tokenizer
        if not 0 <= token_id < len(tokenizer):
            raise InvalidParameterError(f"token id {token_id} is outside the vocabulary (0..{len(tokenizer) - 1})")
        return _token_bytes(tokenizer, token_id)

    def _fim_tokens(self, m: _Loaded) -> FimTokens:
        return FimTokens.from_vocabulary(m.tokenizer.get_vocab())

    def _encode_raw(self, m: _Loaded, text: str) -> list[int]:
        return m.tokenizer(text, add_special_tokens=True).input_ids

    def _encode_chat(self, m: _Loaded, text: str) -> list[int]:
        # A Jinja template writes every special token itself (what apply_chat_template(tokenize=True)
        # does); llama.cpp's built-in ones leave the BOS to the tokenizer, as llama-server does.
        bos = m.tokenizer.bos_token
        add_special = m.chat_format.builtin is not None and not (bos and text.startswith(bos))
        return m.tokenizer(text, add_special_tokens=add_special).input_ids

    @staticmethod
    def _decode(m: _Loaded, prompt_ids: list[int], params: SamplingParams, clock: UsageClock, emit: Emit) -> None:
        _decode(m, prompt_ids, params, clock, emit)


# -- decoding ----------------------------------------------------------------------------------


class _StopGeneration(Exception):
    """Raised from the streamer to end `generate()` when a stop string has matched."""


class _TokenStreamer:
    """A `generate()` streamer that turns each new token into an event as soon as it is sampled.

    It runs inside `generate()` on the worker thread: no extra thread or queue between sampling and
    the reader. `emit` raises JobCancelled when the reader has gone, which unwinds `generate()`.
    """

    def __init__(self, m: _Loaded, prompt_ids: list[int], params: SamplingParams, clock: UsageClock, emit: Emit):
        self.m, self.clock, self.emit = m, clock, emit
        self.text = TextAssembler(params.stop)
        self.words = WindowDecoder(lambda ids: m.tokenizer.decode(ids, skip_special_tokens=True), prompt_ids)
        self.prompt_seen, self.finish = False, "length"

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first passes the prompt
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.clock.sampled()
            if token in self.m.eog_ids:  # generate() stops right after it
                self.finish = "stop"
                return
            self.clock.completion_tokens += 1
            self.emit(TokenEvent(self.text.push_text(self.words.push(token)), token))
            if self.text.stopped:
                self.finish = "stop"
                raise _StopGeneration

    def end(self) -> None:
        pass


def _decode(m: _Loaded, prompt_ids: list[int], params: SamplingParams, clock: UsageClock, emit: Emit) -> None:
    """Runs on the worker thread."""
    budget = min(params.max_new_tokens, m.n_ctx - len(prompt_ids))
    streamer = _TokenStreamer(m, prompt_ids, params, clock, emit)
    if params.seed is not None:
        torch.manual_seed(params.seed)
    try:
        with torch.inference_mode():
            m.model.generate(
                torch.tensor([prompt_ids]),
                attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                streamer=streamer,
                **_generate_kwargs(m, prompt_ids, params, budget),
            )
    except _StopGeneration:
        pass
    text = streamer.text
    emit(TokenEvent(text.flush(), None, streamer.finish, clock.usage(), stop_sequence=text.matched))


class _OpenAIPenalties:
    """OpenAI's presence and frequency penalties, which transformers lacks: a token's logit drops by
    `presence` once it was generated and by `frequency` per time. Only generated tokens count, as on
    the llama.cpp backend."""

    def __init__(self, n_prompt: int, presence: float, frequency: float):
        self.n_prompt, self.presence, self.frequency = n_prompt, presence, frequency

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        generated = input_ids[:, self.n_prompt :]  # [B, T_new]
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


# transformers divides the logits by the temperature and the repetition penalty in float32: a value
# near 0 (5e-324 is valid JSON) overflows them to inf and the sampling probabilities to NaN, and
# generate() raises. Within [1 / MAX_LOGIT_SCALE, MAX_LOGIT_SCALE] they stay finite.
MAX_LOGIT_SCALE = 1e4


def _generate_kwargs(m: _Loaded, prompt_ids: list[int], params: SamplingParams, budget: int) -> dict[str, Any]:
    eog = sorted(m.eog_ids)
    kwargs: dict[str, Any] = {
        "max_new_tokens": budget,
        "eos_token_id": eog,
        # ignore_eos: transformers masks end-of-generation tokens until the budget is spent.
        "min_new_tokens": budget if params.ignore_eos else None,
        "pad_token_id": eog[0] if eog else None,
        "repetition_penalty": min(max(params.repetition_penalty, 1 / MAX_LOGIT_SCALE), MAX_LOGIT_SCALE),
    }
    if params.logit_bias:  # transformers adds a single token's bias as a one-token sequence's
        kwargs["sequence_bias"] = {(int(token),): bias for token, bias in params.logit_bias}
    if params.presence_penalty or params.frequency_penalty:
        penalties = _OpenAIPenalties(len(prompt_ids), params.presence_penalty, params.frequency_penalty)
        kwargs["logits_processor"] = transformers.LogitsProcessorList([penalties])
    if params.temperature < 1 / MAX_LOGIT_SCALE:  # sampling that cold is greedy in effect
        return kwargs | {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return kwargs | {
        "do_sample": True,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "min_p": params.min_p or None,
    }


# -- loading helpers ---------------------------------------------------------------------------


@cache
def fastest_cpu_dtype(hidden: int, intermediate: int) -> Any:
    """The dtype in which the product that dominates a decode step, one activation row through an
    MLP weight of the model's own shape, runs fastest on this CPU: float32 or bfloat16. It depends
    on the CPU's instructions, torch's kernels for them and the matrix size. float16 is not a
    candidate: its narrow range overflows on models trained in bfloat16 (Hunyuan among them)."""
    timings = time_linear(hidden, intermediate)
    log.info("dtype auto: %s", {str(k): f"{v * 1e3:.3f} ms" for k, v in timings.items()})
    return min(timings, key=timings.get)


def time_linear(hidden: int, intermediate: int, seconds: float = 0.1) -> dict[Any, float]:
    """Seconds per [1, hidden] x [hidden, intermediate] product, in float32 and bfloat16."""
    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, w = torch.randn(1, hidden, dtype=dtype), torch.randn(intermediate, hidden, dtype=dtype)
        torch.nn.functional.linear(x, w)  # warm-up
        start, n = perf_counter(), 0
        while perf_counter() - start < seconds:
            torch.nn.functional.linear(x, w)
            n += 1
        timings[dtype] = (perf_counter() - start) / n
    return timings


def mlp_shape(path: Path) -> tuple[int, int]:
    """(hidden size, MLP width) from config.json or GGUF metadata, without loading the model."""
    try:
        if path.is_dir():
            config = json.loads((path / "config.json").read_text())
            return int(config["hidden_size"]), int(config["intermediate_size"])
        header = read_gguf(path)
        return int(header.arch_value("embedding_length")), int(header.arch_value("feed_forward_length"))
    except (OSError, KeyError, TypeError, ValueError):
        return 4096, 11008  # a 7B model's shape; the load itself reports what is wrong with the file


def _load_checkpoint(path: Path, dtype: Any) -> tuple[Any, Any, Path]:
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelFileError(path, "not a Hugging Face checkpoint folder (no config.json)")
        folder, extra = path, {}
    else:
        read_gguf(path)  # missing, damaged or not GGUF: the same clear error as on llama.cpp
        folder, extra = path.parent, {"gguf_file": path.name}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True, **extra)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True, **extra)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelFileError(path, f"transformers could not load it: {_first_line(error)}") from None
    return model, tokenizer, path


def apply_lora(model: Any, path: Path, merge: bool) -> Any:
    if not (path / "adapter_config.json").is_file():
        raise ModelFileError(path, "not a peft LoRA adapter folder (no adapter_config.json)")
    import peft

    if merge and getattr(model.config, "tie_word_embeddings", False) and low_rank_on_embeddings(tensor_names(path)):
        _untie_embeddings(model)
    try:
        model = peft.PeftModelForCausalLM.from_pretrained(model, path, is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as error:
        raise ModelFileError(path, f"the adapter does not fit the base model: {_first_line(error)}") from None
    return model.merge_and_unload() if merge else model


def _untie_embeddings(model: Any) -> None:
    """peft keeps a LoRA on lm_head (or on embed_tokens) apart from the matrix the two share, so only
    that side changes; merged into the shared matrix it would change both. The output layer gets its
    own copy first (and a checkpoint saved from it stores it: tie_word_embeddings false)."""
    import torch

    output = model.get_output_embeddings()
    output.weight = torch.nn.Parameter(output.weight.detach().clone())
    model.config.tie_word_embeddings = False


def _token_bytes(tokenizer: Any, token_id: int) -> bytes:
    """A token's own bytes. `decode` would turn half a UTF-8 character into U+FFFD, so a byte-level
    BPE token is mapped back through GPT-2's byte alphabet; other tokenizers' pieces are decoded."""
    token = tokenizer.convert_ids_to_tokens(token_id)
    if token_id in tokenizer.all_special_ids:
        return token.encode()
    if not _is_byte_level(tokenizer):
        return tokenizer.decode([token_id]).encode()
    return bytes(_byte_alphabet()[c] for c in token)


@cache
def _byte_alphabet() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and type(backend.decoder).__name__ == "ByteLevel"


def _eog_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids]) | {tokenizer.eos_token_id}
    return frozenset(i for i in ids if i is not None)


def _describe(m: _Loaded, dtype: Any) -> dict[str, Any]:
    weights = [m.path] if m.path.is_file() else [*m.path.glob("*.safetensors"), *m.path.glob("*.bin")]
    return {
        "backend": "pytorch",
        "available": True,
        "loaded": True,
        "model": m.name,
        "path": str(m.path),
        "architecture": m.model.config.model_type,
        "dtype": str(dtype).removeprefix("torch."),
        "size_bytes": sum(f.stat().st_size for f in weights),
        "n_params": sum(p.numel() for p in m.model.parameters()),
        "n_ctx": m.n_ctx,  # per request
        "parallel": 1,  # generations run one at a time
        "n_ctx_total": m.n_ctx,
        "n_threads": m.n_threads,
        "lora_path": m.lora_path,
        "lora_merged": m.lora_merged if m.lora_path else None,
        "chat_template": True,
        "chat_template_override": m.template_override,  # --chat-template(-file), --no-jinja
        "chat_template_builtin": m.chat_format.template if m.chat_format.builtin else None,
        "eog_token_ids": sorted(m.eog_ids),
    }


def _first_line(error: BaseException) -> str:
    """The line of a (possibly long) torch/peft error that says what is wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [error.__class__.__name__]
    return next((line for line in lines if "size mismatch" in line), lines[0])


def _check_load_args(n_ctx: Any, n_threads: Any, n_gpu_layers: Any, dtype: Any) -> None:
    ok = is_int_at_least
    if not ok(n_ctx, 1):
        raise InvalidParameterError(f"n_ctx must be an integer >= 1, got {n_ctx!r}")
    if n_threads is not None and not ok(n_threads, 1):
        raise InvalidParameterError(f"n_threads must be an integer >= 1 or None, got {n_threads!r}")
    if n_gpu_layers != 0:
        raise InvalidParameterError("the PyTorch backend runs on the CPU: n_gpu_layers must be 0")
    if dtype not in DTYPES:
        raise InvalidParameterError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


model_service = TorchBackend()
