"""``make bench``: run every benchmark and write bench/results.json (see bench/README.md).

Usage: ``.venv/bin/python bench/run.py [--only throughput,import,memory,cache,local] [--output PATH]``
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `bench` and `tests` are packages of the repository, not installed

from bench.suite import main  # noqa: E402 - needs the path above

if __name__ == "__main__":
    sys.exit(main())
