"""Tiny real models the PyTorch tests build: a random HunYuanDenseV1 checkpoint with a byte-level
BPE tokenizer trained here (as `tokenizer.json`, or as Hunyuan-7B's `hy.tiktoken` + tokenizer code),
and peft LoRA adapters for it."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

CORPUS = [
    "你好，我是混元。今天天气很好，我们去公园散步吧。",
    "The quick brown fox jumps over the lazy dog. Hello world!",
    "长城是中国古代的军事防御工程。北京是中国的首都。",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10. Count with me.",
] * 20

SPECIAL = ["<|startoftext|>", "<|eos|>", "<|pad|>", "<|extra_0|>", "<|extra_4|>"]
# Hunyuan-7B's chat format (see shared/README.md), trimmed to what the tests need.
TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|startoftext|>{{ m['content'] }}<|extra_4|>"
    "{% elif m['role'] == 'user' %}{% if loop.first %}<|startoftext|>{% endif %}{{ m['content'] }}<|extra_0|>"
    "{% else %}{{ m['content'] }}<|eos|>{% endif %}{% endfor %}"
)
TOKENIZER_CODE = Path(__file__).with_name("tiny_tokenization_hy.py")


def build_tiny_hunyuan(path: Path, hidden: int = 256, seed: int = 0, tie: bool = False) -> Path:
    """`tie`: share lm_head with the input embeddings (tie_word_embeddings)."""
    import transformers

    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe(SPECIAL), bos_token="<|startoftext|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(path)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in ("<|startoftext|>", "<|eos|>", "<|pad|>")}
    _save_random_model(path, len(tokenizer), ids, hidden, seed, tie)
    return path


def build_tiny_hunyuan_tiktoken(path: Path, hidden: int = 256, seed: int = 0) -> Path:
    """Hunyuan-7B's other tokenizer layout: `hy.tiktoken` ranks plus `tokenization_hy.py` (our own
    code of the same interface, tests/tiny_tokenization_hy.py), loaded with trust_remote_code."""
    from tests.tiny_tokenization_hy import VOCAB_FILE, HYTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ranks = _byte_ranks(_train_bpe([]))
    with open(path / VOCAB_FILE, "wb") as f:
        f.writelines(base64.b64encode(token) + b" %d\n" % rank for token, rank in ranks.items())
    shutil.copy(TOKENIZER_CODE, path / "tokenization_hy.py")
    tokenizer_config = {
        "auto_map": {"AutoTokenizer": ["tokenization_hy.HYTokenizer", None]},
        "tokenizer_class": "HYTokenizer",
        "bos_token": "<|startoftext|>",
        "eos_token": "<|eos|>",
        "pad_token": "<|pad|>",
        "chat_template": TEMPLATE,
        "model_max_length": 32768,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, ensure_ascii=False, indent=2))
    tokenizer = HYTokenizer(str(path / VOCAB_FILE))
    ids = {name: tokenizer.special_tokens[name] for name in ("<|startoftext|>", "<|eos|>", "<|pad|>")}
    _save_random_model(path, tokenizer.vocab_size, ids, hidden, seed, tie=False)
    return path


def _train_bpe(special: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _byte_ranks(tok: Any) -> dict[bytes, int]:
    """tiktoken ranks from a trained byte-level BPE: the 256 bytes, then each merge's result in merge
    order, so tiktoken's lowest-rank-first merging replays the learned merges."""
    to_byte = {char: byte for byte, char in _bytes_to_unicode().items()}
    ranks = {bytes([b]): b for b in range(256)}
    for merge in json.loads(tok.to_str())["model"]["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        ranks.setdefault(bytes(to_byte[c] for c in left + right), len(ranks))
    return ranks


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the rest map above 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = chr(256 + extra), extra + 1
    return chars


def _save_random_model(path: Path, vocab_size: int, ids: dict[str, int], hidden: int, seed: int, tie: bool) -> None:
    import torch
    import transformers

    eos = ids["<|eos|>"]
    config = transformers.HunYuanDenseV1Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "dynamic", "alpha": 1000.0, "factor": 1.0, "rope_theta": 10000.0},
        bos_token_id=ids["<|startoftext|>"],
        eos_token_id=eos,
        eod_token_id=eos,
        pad_token_id=ids["<|pad|>"],
        tie_word_embeddings=tie,
    )
    torch.manual_seed(seed)
    model = transformers.HunYuanDenseV1ForCausalLM(config)
    model.generation_config.eos_token_id = eos
    model.save_pretrained(path)


def build_lora(
    base: Path, out: Path, target_modules: tuple[str, ...] = ("q_proj", "v_proj"), seed: int = 1, **options: Any
) -> Path:
    """A LoRA adapter with non-zero weights (peft's default leaves B at zero, a no-op). `options`:
    peft LoraConfig fields such as use_rslora, use_dora or modules_to_save."""
    import peft
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(target_modules), init_lora_weights=False, **options)
    peft.get_peft_model(model, config).save_pretrained(out)
    return out


def build_tiny_gpt2(path: Path) -> Path:
    """Another architecture, for an adapter that cannot fit Hunyuan."""
    import transformers

    transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_embd=64, n_layer=1, n_head=2, vocab_size=100)
    ).save_pretrained(path)
    return path
