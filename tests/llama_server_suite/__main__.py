"""`python -m tests.llama_server_suite run --target hychat|native [--json OUT] [-k EXPR] [-- PYTEST ARGS]`"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tests.llama_server_suite import runner


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.llama_server_suite")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run llama.cpp's server test suite on the embedded model")
    run.add_argument("--target", choices=["hychat", "native"], default="hychat")
    run.add_argument("--json", type=Path, help="write each test's outcome here")
    run.add_argument("-k", help="pytest -k expression")
    run.add_argument("pytest_args", nargs="*", help="after --: test ids (unit/...) and more pytest arguments")
    args = parser.parse_args()
    nodeids = [a for a in args.pytest_args if a.startswith("unit")]
    extra = [a for a in args.pytest_args if a not in nodeids]
    results = runner.run(args.target, k=args.k, nodeids=nodeids or None, pytest_args=extra)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(runner.summary(results))
    return 0 if not results["summary"]["failed"] + results["summary"]["error"] else 1


if __name__ == "__main__":
    sys.exit(main())
