"""Pre-warmed forker for the reliability tests (see ``relhelp.Zygote``).

Protocol on stdin/stdout, one JSON request per line:
``{"argv": [...], "env": {...}, "cwd": ..., "stdout": path, "stderr": path, "rc": path}``
-> the child's pid on one line. The child runs ``batchml *argv`` through ``batchml.cli.app``
(what the ``batchml`` console script runs) and writes its exit status to ``rc`` when it ends by
itself. Only imports happen here before forking: no catalog is opened, no thread is started.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import traceback

# What `batchml watch` imports lazily, so each forked worker starts scoring at once.
import pyarrow.parquet  # noqa: F401
import skops.io  # noqa: F401
import watchdog.observers  # noqa: F401

import batchml.catalog.ledger  # noqa: F401
import batchml.cli  # noqa: F401
import batchml.estimators.sklearn_models  # noqa: F401
import batchml.scoring  # noqa: F401
import batchml.sources  # noqa: F401
import batchml.store  # noqa: F401
import batchml.worker  # noqa: F401


def child(req: dict) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(target, fd)
        os.close(target)
    code = 0
    try:
        from batchml.cli import app

        app(args=req["argv"], prog_name="batchml")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()  # batchml closes its catalog connection at exit
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        with open(req["rc"], "w") as fh:
            fh.write(str(code))
        os._exit(code)


def main() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                child(req)
            finally:
                os._exit(99)
        print(pid, flush=True)


if __name__ == "__main__":
    main()
