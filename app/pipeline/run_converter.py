"""Runs llama.cpp's convert_hf_to_gguf.py in this process (started by `convert.py` with the
converter's folder and its gguf-py on PYTHONPATH), optionally naming the pre-tokenizer.

The converter recognises a tokenizer's pre-tokenizer by hashing how it splits a fixed text; a
tokenizer it has not seen (a fine-tune that retrained it, a test tokenizer) stops it. `--vocab-pre`
answers that question for it, exactly as an entry in its own hash table would.

    python -m app.pipeline.run_converter CONVERTER_DIR VOCAB_PRE|"" [convert_hf_to_gguf.py arguments]
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main() -> None:
    folder, vocab_pre, *args = sys.argv[1:]
    if vocab_pre:
        from conversion import base  # the converter's own package, from PYTHONPATH

        base.TextModel.get_vocab_base_pre = lambda self, tokenizer: vocab_pre
    script = str(Path(folder) / "convert_hf_to_gguf.py")
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
