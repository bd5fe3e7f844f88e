"""Tiny real models the PyTorch tests build: a random HunYuanDenseV1 checkpoint with a byte-level
BPE tokenizer trained here, and peft LoRA adapters for it."""

from __future__ import annotations

from pathlib import Path

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


def build_tiny_hunyuan(path: Path, hidden: int = 256, seed: int = 0) -> Path:
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(path)
    eos = tokenizer.convert_tokens_to_ids("<|eos|>")
    config = transformers.HunYuanDenseV1Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "dynamic", "alpha": 1000.0, "factor": 1.0, "rope_theta": 10000.0},
        bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
        eos_token_id=eos,
        eod_token_id=eos,
        pad_token_id=tokenizer.convert_tokens_to_ids("<|pad|>"),
    )
    torch.manual_seed(seed)
    model = transformers.HunYuanDenseV1ForCausalLM(config)
    model.generation_config.eos_token_id = eos
    model.save_pretrained(path)
    return path


def build_lora(
    base: Path, out: Path, target_modules: tuple[str, ...] = ("q_proj", "v_proj"), seed: int = 1, **options: bool
) -> Path:
    """A LoRA adapter with non-zero weights (peft's default leaves B at zero, a no-op). `options`:
    peft LoraConfig flags such as use_rslora or use_dora."""
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
