"""Files written whole or not at all, and a full disk said in one line.

Every file selfstudy itself writes (snapshots, params, trial.json, experiment.json, moved
snapshots, exports) goes through `write_atomic` or `save_torch`: a temporary file beside the
target, flushed and fsynced, then renamed over it, and the folder synced. A crash or a full
disk leaves the old file or the new one, never part of one. `-l`'s result.json and error.txt
get fsynced appends (`append_line`: a line cut short is skipped by its readers); Ray's own
files are Ray's.

A write that fails for want of space (ENOSPC, EDQUOT) or on a read-only file system (EROFS)
raises `DiskFull`, whose message names the folder, its free space and what the write needed.
The command line reports it in one line and exits 1 (`selfstudy.cli`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class DiskFull(OSError):
    """A write failed for want of space or on a read-only file system; the message says where."""


def size_text(num_bytes: float) -> str:
    """Bytes for a person: '880 KB', '1.2 GB'."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.3g} {unit}"
    return f"{int(num_bytes)} bytes"


def nearest_existing(directory: Path) -> Path:
    """`directory`, or its nearest parent that exists (where a folder not made yet will be)."""
    existing = Path(directory)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def free_bytes(directory: Path) -> int | None:
    """Free space of the file system holding `directory` (or its nearest existing parent)."""
    try:
        return shutil.disk_usage(nearest_existing(directory)).free
    except OSError:
        return None


def disk_nearly_full(folder: Path, margin: int = 1_000_000) -> bool:
    """Less than `margin` bytes free where `folder` is: an error there likely came from the full
    disk, whatever its type (a library that read back a file it could not write whole)."""
    free = free_bytes(folder)
    return free is not None and free < margin


def disk_full(folder: Path, needed: int | None, err: OSError | None = None) -> DiskFull:
    """The `DiskFull` for a failed write of `needed` bytes in `folder`."""
    code = err.errno if err is not None and err.errno in DISK_ERRORS else errno.ENOSPC
    if code == errno.EROFS:
        return DiskFull(code, f"cannot write in {folder}: the file system is read-only; set SELFSTUDY_EXP_DIR "
                              "to a writable folder")
    free = free_bytes(folder) or 0
    reason = "the disk quota is used up" if code == errno.EDQUOT else "the disk is full"
    if needed:
        room = f"{size_text(free)} free; the write needed {size_text(needed)}): free at least " \
               f"{size_text(max(needed - free, 1e6))}"
    else:
        room = f"{size_text(free)} free): free some space"
    return DiskFull(code, f"cannot write in {folder}: {reason} ({room}, or set SELFSTUDY_EXP_DIR to a bigger disk")


def is_disk_message(text: str) -> bool:
    """Whether an error's text (a trial's error line) is our `DiskFull` (raised only for a write
    of ours that found no room, so another library's full /dev/shm does not stop a sweep)."""
    return "DiskFull:" in text


def is_disk_error(err: BaseException | None) -> bool:
    """Whether `err`, or an error it arose from, is our `DiskFull` or an OSError of a full disk,
    a used-up quota or a read-only file system."""
    seen = 0
    while err is not None and seen < 20:
        if isinstance(err, DiskFull) or (isinstance(err, OSError) and err.errno in DISK_ERRORS):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def write_atomic(path: Path, data: bytes | memoryview | str) -> None:
    """Write `data` to `path` whole: a fsynced temporary file renamed over it. A full disk
    raises `DiskFull`; the old file, if any, is left as it was."""
    payload = data.encode() if isinstance(data, str) else data
    with _temporary(path, len(payload)) as tmp:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())


def save_torch(path: Path, value: Any) -> None:
    """`torch.save` written whole, as `write_atomic` writes (straight into the temporary file,
    without a copy in memory). torch reports a failed write as a bare RuntimeError, so the
    file's own error is kept and raised in its place."""
    import torch

    with _temporary(path, tensor_bytes(value)) as tmp:
        with open(tmp, "wb") as f:
            sink = _Sink(f)
            try:
                torch.save(value, sink)
            except RuntimeError:
                if sink.error is not None:
                    raise sink.error from None
                raise
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def _temporary(path: Path, size: int) -> Iterator[Path]:
    """A temporary file beside `path` for the caller to fill, renamed over `path` after; removed
    on any failure (the stale ones of killed writers too). A full disk is a `DiskFull`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        yield tmp
        os.replace(tmp, path)
        sync_folder(path.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in DISK_ERRORS:
            raise disk_full(path.parent, size, err) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _Sink:
    """A file that remembers the error of a failed write (torch replaces it with its own)."""

    def __init__(self, file: Any):
        self.file, self.error = file, None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


def tensor_bytes(value: Any) -> int:
    """The bytes of the tensors in `value` (dicts, lists and tuples of them): about its size saved."""
    import torch

    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def append_line(path: Path, line: str) -> None:
    """Append one line and fsync it (a crash may cut the last line short; readers skip such a line)."""
    try:
        with open(path, "a") as f:
            f.write(line.rstrip("\n") + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        if err.errno in DISK_ERRORS:
            raise disk_full(path.parent, len(line), err) from None
        raise


def link_or_copy(source: Path, target: Path) -> None:
    """Put `source`'s bytes at `target` without touching `source`: a hard link where the file
    system allows one (no space used), else a copy through `write_atomic`."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        write_atomic(target, source.read_bytes())
        return
    os.replace(tmp, target)
    sync_folder(target.parent)


def sync_folder(folder: Path) -> None:
    """fsync a folder, so that a rename in it survives a power cut (where the OS allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
