"""A warm start for the tests' CLI runs: a Python that has imported torch, Ray and the other
libraries (never the project) forks one process per run, which then runs the project's
script as `python <script> <args>` would, in that run's environment and folder.

Each CLI run is still a process of its own, with its own exit status, stdout and stderr, and
imports every module of the project afresh; it only skips the 3 s of library imports that every
run would repeat (about 130 runs in the suite).

Protocol, one run at a time, one JSON line each way: the request {"script", "args", "env",
"cwd", "stdout", "stderr"} (the last two: files to write), then the reply {"pid"} as soon as
the run starts and {"status"} when it ends (negative: killed by that signal).
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
import traceback

# the libraries every CLI run imports; importing them starts no thread that a fork would lose
import gin  # noqa: F401
import h5py  # noqa: F401
import kornia  # noqa: F401
import numpy  # noqa: F401
import pandas  # noqa: F401
import ray  # noqa: F401
import ray.tune  # noqa: F401
import torch  # noqa: F401


def run(request: dict) -> None:
    """In the forked child: become `python <script> <args>`; never returns."""
    os.setpgid(0, 0)  # its own process group, so that a timeout stops the run and what it started
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY | os.O_CREAT),
                            (2, request["stderr"], os.O_WRONLY | os.O_CREAT)):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    script = request["script"]
    sys.argv = [script, *request["args"]]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    status = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            status = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            status = 1
    except BaseException:  # as the interpreter does: the traceback, exit 1
        traceback.print_exc()
        status = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def serve() -> None:
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            replies.close()
            run(request)
        replies.write(json.dumps({"pid": pid}) + "\n")
        _, code = os.waitpid(pid, 0)
        replies.write(json.dumps({"status": os.waitstatus_to_exitcode(code)}) + "\n")


if __name__ == "__main__":
    serve()
