"""Runs one invocation of a Lambda handler in this process, for the crash suite, which may SIGKILL it.

    python tests/faults/child.py manifest|worker EVENT.json ANSWER.json [TIMEOUT_SECONDS]

Everything else (endpoints, settings) comes from the environment the parent passes. The handler's
answer goes to ANSWER.json; the exit status is 0 when the handler returned, 3 when it raised (the
exception's type and message on the last line of stderr).
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


def main(argv: list[str]) -> int:
    kind, event_path, answer_path = argv[1], Path(argv[2]), Path(argv[3])
    timeout = float(argv[4]) if len(argv) > 4 else 900.0
    from labeler.local.runner import LocalLambdaContext

    if kind == "manifest":
        from labeler.handlers.manifest_created import handler
    else:
        from labeler.handlers.work_batch import handler
    event = json.loads(event_path.read_text())
    try:
        answer = handler(event, LocalLambdaContext(timeout_seconds=timeout))
    except Exception as exc:
        traceback.print_exc()
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    answer_path.write_text(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
