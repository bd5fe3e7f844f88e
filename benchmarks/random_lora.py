"""A random LoRA adapter (GGUF) for a GGUF model, for measuring what adapters cost. Run by
benchmarks/adapters.py with llama.cpp's own gguf-py on PYTHONPATH (the converter's copy, see
app/pipeline/llama_converter.py):

    python benchmarks/random_lora.py BASE.gguf OUT.gguf RANK SEED

Targets attention's q, k, v and output projections, as a typical fine-tune does; small weights, so
the model still writes text. Its tensors are what llama.cpp's convert_lora_to_gguf.py writes:
`NAME.lora_a` [rank, n_in] and `NAME.lora_b` [n_out, rank] (numpy's order).
"""

from __future__ import annotations

import sys

import gguf
import numpy as np

TARGETS = ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight")


def main(base: str, out: str, rank: int, seed: int) -> None:
    reader = gguf.GGUFReader(base)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(out, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(rank))
    for tensor in reader.tensors:
        if tensor.name.endswith(TARGETS):
            n_in, n_out = int(tensor.shape[0]), int(tensor.shape[1])  # ggml's order
            a = rng.standard_normal((rank, n_in)) / np.sqrt(n_in)
            b = rng.standard_normal((n_out, rank)) * 0.02
            writer.add_tensor(f"{tensor.name}.lora_a", a.astype(np.float32))
            writer.add_tensor(f"{tensor.name}.lora_b", b.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
