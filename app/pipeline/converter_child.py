"""Runs one of llama.cpp's converter scripts in this process (started by `llama_converter.py` with the
converter's folder and its gguf-py on PYTHONPATH), optionally naming the pre-tokenizer.

The converter recognises a tokenizer's pre-tokenizer by hashing how it splits a fixed text; a
tokenizer it has not seen (a fine-tune that retrained it, a test tokenizer) stops it. `--vocab-pre`
answers that question for it, exactly as an entry in its own hash table would.

    python -m app.pipeline.converter_child SCRIPT VOCAB_PRE|"" [the script's arguments]
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main() -> None:
    script, vocab_pre, *args = sys.argv[1:]
    if vocab_pre:
        from conversion import base  # the converter's own package, from PYTHONPATH

        base.TextModel.get_vocab_base_pre = lambda self, tokenizer: vocab_pre
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
    except OSError as error:
        # A full disk, a size limit, a missing file: the environment's failure, not the converter's
        # bug, so one line instead of a traceback (numpy's tofile does not even give an errno);
        # hychat then says which output could not be written and why.
        sys.exit(f"{Path(script).name}: {error}")


if __name__ == "__main__":
    main()
