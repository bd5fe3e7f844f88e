"""GPU offload through hychat's llama.cpp backend: time to first token and decode speed with every
layer on the GPU (n_gpu_layers -1) and none (0), and whether both pick the same greedy tokens
(docs/operations.md, "GPU builds"). Needs a CUDA (or Metal...) build of llama-cpp-python.

    python benchmarks/gpu_offload.py model DIR   # a random HunYuan of SmolLM2-135M's shape, Q4_1
    python benchmarks/gpu_offload.py measure GGUF [--threads N] [--rounds 3]

`model` uses PyTorch and the product's pipeline; `measure` runs in a process without torch: one that
had imported a CUDA PyTorch crashed on loading the CUDA llama.cpp (seen on an H200).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "长城很长，" * 100  # 900 tokens of the tiny tokenizer


def make_model(folder: Path) -> Path:
    """A model small enough to carry to a lent machine (67 MB), of a real model's shape: speed, not text."""
    import torch
    import transformers

    from app.pipeline.hf_to_gguf import convert
    from app.pipeline.quantize import quantize
    from config.settings import Settings
    from tests import torch_models as tm

    hf = folder / "hf"
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tm._train_bpe(tm.SPECIAL), bos_token="<|startoftext|>", eos_token="<|eos|>",
        pad_token="<|pad|>",
    )  # fmt: skip
    tok.chat_template = tm.TEMPLATE
    tok.save_pretrained(hf)
    ids = {name: tok.convert_tokens_to_ids(name) for name in ("<|startoftext|>", "<|eos|>", "<|pad|>")}
    config = transformers.HunYuanDenseV1Config(
        vocab_size=len(tok), hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, max_position_embeddings=32768,  # the converter's HunYuan check
        rope_parameters={"rope_type": "dynamic", "alpha": 1000.0, "factor": 1.0, "rope_theta": 10000.0},
        bos_token_id=ids["<|startoftext|>"], eos_token_id=ids["<|eos|>"], eod_token_id=ids["<|eos|>"],
        pad_token_id=ids["<|pad|>"], tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.HunYuanDenseV1ForCausalLM(config).save_pretrained(hf)
    f16 = convert(hf, folder / "m-f16.gguf", Path(Settings().cache_dir), "f16", vocab_pre="hunyuan").path
    target = folder / "m-q4_1.gguf"
    quantize(f16, target, "q4_1")
    return target


def measure(model: Path, threads: int, rounds: int) -> dict:
    from app.services.llamacpp_service import LlamaCppBackend
    from app.types import GenerationRequest, SamplingParams

    params = SamplingParams(max_new_tokens=256, temperature=0, ignore_eos=True, cache_prompt=False)
    out: dict = {}
    for ngl in (-1, 0):
        backend = LlamaCppBackend()
        backend.load_model(model_path=str(model), n_ctx=2048, n_threads=threads, n_gpu_layers=ngl)
        runs, tokens = [], []
        for _ in range(rounds):
            usage, tokens = None, []
            for event in backend.start(GenerationRequest(params, prompt=PROMPT)):
                usage = event.usage or usage
                if event.token_id is not None:
                    tokens.append(event.token_id)
            timed = {"ttft_ms": usage.ttft_ms, "total_ms": usage.total_ms, "decode_tok_s": usage.decode_tokens_per_s}
            runs.append({"prompt_tokens": usage.prompt_tokens} | {k: round(v, 1) for k, v in timed.items()})
        out[f"n_gpu_layers={ngl}"] = {"runs": runs, "tokens": tokens}
        backend.unload()
    out["same_tokens"] = out["n_gpu_layers=-1"]["tokens"] == out["n_gpu_layers=0"]["tokens"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("model").add_argument("folder", type=Path)
    run = commands.add_parser("measure")
    run.add_argument("model", type=Path)
    run.add_argument("--threads", type=int, default=16)
    run.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.command == "model":
        args.folder.mkdir(parents=True, exist_ok=True)
        print(make_model(args.folder))
    else:
        print(json.dumps(measure(args.model, args.threads, args.rounds), indent=1))


if __name__ == "__main__":
    main()
