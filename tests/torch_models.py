"""Tiny real models the PyTorch tests build: a random HunYuanDenseV1 checkpoint with a byte-level
BPE tokenizer trained here (as `tokenizer.json`, or as Hunyuan-7B's `hy.tiktoken` + tokenizer code),
and peft LoRA adapters for it."""

from __future__ import annotations

import base64
import functools
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
FIM_SPECIAL = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_repo|>", "<|file_sep|>")
# Hunyuan-7B's chat format (see shared/README.md), trimmed to what the tests need.
TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|startoftext|>{{ m['content'] }}<|extra_4|>"
    "{% elif m['role'] == 'user' %}{% if loop.first %}<|startoftext|>{% endif %}{{ m['content'] }}<|extra_0|>"
    "{% else %}{{ m['content'] }}<|eos|>{% endif %}{% endfor %}"
)
TOKENIZER_CODE = Path(__file__).with_name("tiny_tokenization_hy.py")
# Hunyuan-7B-Instruct's real chat template, verbatim as the `tokenizer.chat_template` of a GGUF of
# tencent/Hunyuan-7B-Instruct carries it (system prompt, tools in <tools>, calls in ```json fences,
# the <answer> stripping of earlier turns, the enable_thinking switch).
HUNYUAN_7B_TEMPLATE = Path(__file__).with_name("hunyuan_7b_chat_template.jinja")
# Hunyuan-7B's special tokens at its ids (its tokenization_hy.py numbers them after the 127957 ranks).
HUNYUAN_7B_IDS = {"<|endoftext|>": 127957, "<|startoftext|>": 127958, "<|bos|>": 127959, "<|eos|>": 127960,
                  "<|pad|>": 127961}  # fmt: skip
HUNYUAN_7B_FIRST_EXTRA = 127962  # <|extra_0|>; the 7B has <|extra_0|>..<|extra_204|> (vocab_size 128167)
HUNYUAN_7B_N_EXTRA = 205
# generation_config.json's stop ids as Tencent's Hunyuan examples set them (<|eos|>, <|extra_5|>);
# llama.cpp's converter makes the first of such a list the GGUF's end-of-turn token.
HUNYUAN_7B_STOP_IDS = [127960, 127967]


def build_tiny_hunyuan(
    path: Path, hidden: int = 256, seed: int = 0, tie: bool = False, special: tuple[str, ...] = ()
) -> Path:
    """`tie`: share lm_head with the input embeddings (tie_word_embeddings); `special`: more special
    tokens in its vocabulary."""
    import transformers

    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe([*SPECIAL, *special]),
        bos_token="<|startoftext|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
    )
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(path)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in ("<|startoftext|>", "<|eos|>", "<|pad|>")}
    _save_random_model(path, len(tokenizer), ids, hidden, seed, tie)
    return path


def build_tiny_coder(path: Path) -> Path:
    """A tiny HunYuan with Qwen2.5-Coder's fill-in-the-middle tokens (prefix, suffix, middle, and the
    repository and file separators of its repo-level prompt), which llama.cpp finds by their text."""
    return build_tiny_hunyuan(path, hidden=128, special=FIM_SPECIAL)


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


def build_tiny_hunyuan_7b(path: Path, hidden: int = 64, seed: int = 0) -> Path:
    """Hunyuan-7B-Instruct's tokenizer layout in a tiny random checkpoint: a `tokenizer.json` whose
    special tokens sit at the 7B's ids (a BPE trained here, padded up to them with filler tokens that
    no merge produces), its real chat template, and its config's bos/eod/pad and stop ids. Tied
    embeddings and a small `hidden` keep the ~128k-row embedding small."""
    import transformers

    path = Path(path)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=_hunyuan_7b_tokenizer(), bos_token="<|startoftext|>", eos_token="<|eos|>",
        pad_token="<|pad|>",
    )  # fmt: skip
    tokenizer.chat_template = HUNYUAN_7B_TEMPLATE.read_text()
    tokenizer.model_max_length = 32768
    tokenizer.save_pretrained(path)
    _save_random_model(path, len(tokenizer), HUNYUAN_7B_IDS, hidden, seed, tie=True, stop_ids=HUNYUAN_7B_STOP_IDS)
    return path


@functools.cache
def converted_tiny_hunyuan_7b(root: Path) -> tuple[Path, Any]:
    """The tiny Hunyuan-7B checkpoint under `root` and its f32 GGUF made by the product's converter
    (a ConvertResult): built once per test process, whichever test module asks first (~15 s)."""
    from app.pipeline.hf_to_gguf import convert
    from config.settings import Settings

    hf_dir = build_tiny_hunyuan_7b(Path(root) / "hf")
    # Its tokenizer is trained here, so the converter cannot know the pre-tokenizer by its hash.
    result = convert(hf_dir, Path(root) / "tiny-7b-f32.gguf", Path(Settings().cache_dir), "f32", vocab_pre="hunyuan")
    return hf_dir, result


def _hunyuan_7b_tokenizer() -> Any:
    """Byte-level BPE with the 7B's split pattern; vocabulary ids up to 127956 (trained tokens, then
    unreachable fillers), then the 7B's special tokens at their ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from tests.tiny_tokenization_hy import PAT_STR

    tok = Tokenizer(models.BPE())
    split = pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated")
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    first_special = min(HUNYUAN_7B_IDS.values())
    # Bracketed names no merge builds (as llama.cpp's converter names the 7B's own gaps).
    vocab.update({f"[PAD{i}]": i for i in range(len(vocab), first_special)})
    names = [*HUNYUAN_7B_IDS, *(f"<|extra_{i}|>" for i in range(HUNYUAN_7B_N_EXTRA))]
    assert first_special + len(HUNYUAN_7B_IDS) == HUNYUAN_7B_FIRST_EXTRA
    data["added_tokens"] = [
        {"id": first_special + i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, name in enumerate(names)
    ]  # fmt: skip
    return Tokenizer.from_str(json.dumps(data, ensure_ascii=False))


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


def _save_random_model(
    path: Path,
    vocab_size: int,
    ids: dict[str, int],
    hidden: int,
    seed: int,
    tie: bool,
    stop_ids: list[int] | None = None,
) -> None:
    """`stop_ids`: generation_config.json's eos_token_id (default: the EOS token alone)."""
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
    model.generation_config.eos_token_id = stop_ids or eos
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


def build_tiny_bert(path: Path, hidden: int = 64, seed: int = 0) -> Path:
    """A random BertModel (an embedding model: no language-model head) with a WordPiece vocabulary
    of the corpus' characters and words, and sentence-transformers' mean-pooling files, from which
    llama.cpp's converter writes `bert.pooling_type`."""
    import torch
    import transformers

    words = {w.strip(".,!").lower() for line in CORPUS for w in line.split() if w.isascii()}
    chars = {c for line in CORPUS for c in line if not c.isspace()}
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(chars | words - {""})]
    transformers.BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}).save_pretrained(path)
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=hidden * 2,
                                     max_position_embeddings=256)  # fmt: skip
    transformers.BertModel(config).save_pretrained(path)
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))  # fmt: skip
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return path
