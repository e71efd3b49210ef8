"""A warm start for the tests' CLI runs: a Python that has imported torch, Ray and the other
libraries (never the project) forks one process per run, which then runs the project's
script as `python <script> <args>` would, in that run's environment and folder.

Each CLI run is still a process of its own, with its own exit status, stdout and stderr, and
imports every module of the project afresh; it only skips the 3 s of library imports that every
run would repeat (about 130 runs in the suite).

Protocol, one run at a time, one JSON line each way: the request {"script", "args", "env",
"cwd", "stdout", "stderr"} (the last two: files to write), then the reply {"pid"} as soon as
the run starts and {"status"} when it ends (negative: killed by that signal).

What the libraries read from the environment when imported (OpenMP's thread count, Ray's
RAY_* constants) and the string hash seed are those of the zygote's start, the first run's
environment: a run's own environment changes what the project reads, not those.
"""

from __future__ import annotations

import ctypes
import json
import os
import runpy
import signal
import sys
import tempfile
import threading

# the libraries every CLI run imports (see `warm`); numpy's and pandas' native threads survive a fork
LIBRARIES = ("gin", "h5py", "kornia", "numpy", "pandas", "ray", "ray.tune", "torch")
_LIBC = ctypes.CDLL(None)


def warm() -> tuple[bytes, bytes]:
    """Import the libraries; what they print (on fd 1 and 2, Python's or C's) is kept, and every
    run prints it again, as a run that imported them itself would."""
    import importlib

    kept = []
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            for name in LIBRARIES:
                importlib.import_module(name)
            sys.stdout.flush()
            sys.stderr.flush()
            _LIBC.fflush(None)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
        for file in (out, err):
            file.seek(0)
            kept.append(file.read())
    import torch

    assert not torch.cuda.is_initialized()  # CUDA does not survive a fork
    return kept[0], kept[1]


def run(request: dict, printed: tuple[bytes, bytes]) -> None:
    """In the forked child: become `python <script> <args>`; never returns."""
    os.setpgid(0, 0)  # its own process group, so that a timeout stops the run and what it started
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the zygote ignores Ctrl-C; a run does not
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY | os.O_CREAT),
                            (2, request["stderr"], os.O_WRONLY | os.O_CREAT)):
        opened = os.open(path, flags, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    for fd, text in zip((1, 2), printed):
        os.write(fd, text)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    script = request["script"]
    sys.argv = [script, *request["args"]]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    status, interrupted = 0, False
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            status = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            status = 1
    except BaseException as err:  # as the interpreter does: the traceback (sys.excepthook), exit 1
        sys.excepthook(type(err), err, err.__traceback__)
        status, interrupted = 1, isinstance(err, KeyboardInterrupt)
    exit_as_interpreter(status, interrupted)


def exit_as_interpreter(status: int, interrupted: bool) -> None:
    """What Python does at exit: join non-daemon threads, run atexit handlers, flush Python's and
    C's buffers; an uncaught KeyboardInterrupt ends the process by SIGINT."""
    threading._shutdown()
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    _LIBC.fflush(None)
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status)


def serve() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C of the tests is for pytest (it stops the runs)
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # nothing but the replies reaches the pipe
    printed = warm()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            replies.close()
            run(request, printed)
        replies.write(json.dumps({"pid": pid}) + "\n")
        _, code = os.waitpid(pid, 0)
        replies.write(json.dumps({"status": os.waitstatus_to_exitcode(code)}) + "\n")


if __name__ == "__main__":
    serve()
