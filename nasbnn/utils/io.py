"""File-system helpers: atomic writes with the user's file modes, and output folders with clear errors.

Every file nasbnn writes (checkpoints, bundles, search results, ONNX and packed models) goes through
:func:`atomic_write_bytes`: the data lands in a temporary file beside the target, which is then renamed
over it, so a reader never sees half a file and a killed writer never damages what was there. Temporary
files are created private (mode 0600); before the rename the file gets the mode an ordinary ``open``
would have given it (0666 less the umask), so a bundle copied into a shared model folder stays readable.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import NasbnnError, OutputError

__all__ = ["JSONTextError", "atomic_write_bytes", "atomic_write_text", "check_outside", "check_replaceable",
           "ensure_dir", "missing_file", "parse_json", "read_json", "remove_empty_created", "staging_folder",
           "umask"]


def umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux ≥ 4.7)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # no way to read it without setting it elsewhere
    os.umask(old)
    return old


# Folders that ensure_dir created in this process, in creation order (outermost first).
_created: list[Path] = []


def ensure_dir(path: str | Path, *, what: str = "output folder") -> Path:
    """Creates ``path`` (and its parents) as a folder, or raises a one-line :class:`OutputError` saying why
    it cannot be used: a file is in the way, the file system is read-only, permission is denied.

    The folders it creates are remembered, so that a command that then fails can take back the ones it
    left empty (:func:`remove_empty_created`).
    """
    p = Path(path)
    for part in (p, *p.parents):
        if part.exists() and not part.is_dir():
            raise OutputError(f"{what} {str(p)!r} cannot be created: {str(part)!r} is a file, not a folder")
    missing = [part for part in (p, *p.parents) if not part.exists()]
    try:
        p.mkdir(parents=True, exist_ok=True)
        _created.extend(reversed(missing))
    except OSError as exc:
        reason = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                  errno.EPERM: "operation not permitted", errno.ENOSPC: "no space left"}.get(exc.errno or 0)
        raise OutputError(f"{what} {str(p)!r} cannot be created: {reason or exc.strerror or exc}") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {str(p)!r} is not writable")
    return p


def remove_empty_created() -> None:
    """Removes the folders :func:`ensure_dir` created in this process that are still empty, innermost first.

    For a command that stops with an error before writing anything: it leaves no empty run folder behind.
    A folder that holds anything, or that another process has written into, stays.
    """
    while _created:
        folder = _created.pop()
        with contextlib.suppress(OSError):  # not empty, or already gone
            folder.rmdir()


def check_outside(path: str | Path, folders: Iterable[str | Path | None], *, option: str, what: str = "dataset"
                  ) -> None:
    """Raises a one-line :class:`OutputError` when output ``path`` lies inside one of ``folders`` (the datasets a
    command reads: writing there would replace an image or an annotation file it has just used)."""
    target = Path(path).resolve()
    for folder in folders:
        if folder is None or str(folder) == "":
            continue
        root = Path(folder).resolve()
        if target == root or root in target.parents:
            raise OutputError(f"{option} {str(path)!r} lies inside the {what} folder {str(folder)!r}, which this "
                              "command reads; write it elsewhere")


def check_replaceable(path: str | Path) -> None:
    """Raises a one-line :class:`OutputError` unless ``path`` is missing or a regular file (or a link to one).

    Writes rename a new file over the target: over a device (``/dev/null``), a FIFO or a socket that would
    put a plain file in its place, so those are refused, as is a folder.
    """
    p = Path(path)
    try:
        if not p.exists() or p.is_file():
            return
        kind = "a folder" if p.is_dir() else "not a regular file (a device, pipe or socket)"
    except OSError as exc:
        raise OutputError(f"cannot write {str(p)!r}: {exc.strerror or exc}") from None
    raise OutputError(f"cannot write {str(p)!r}: it is {kind}")


def staging_folder(dest: Path, tag: str) -> Path:
    """A new empty folder ``.<name>.<tag>-XXXX`` beside ``dest``, with the permissions an ordinary new folder gets
    (``mkdtemp``'s 0700 would hide it from other users once renamed), for output written whole and then moved in.

    Raises:
        OutputError: ``dest``'s parent cannot be created or written into.
    """
    ensure_dir(dest.parent, what="folder")
    try:
        stage = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.{tag}-"))
    except OSError as exc:
        raise OutputError(f"cannot write into {str(dest.parent)!r}: {exc.strerror or exc}") from None
    stage.chmod(0o777 & ~umask())
    return stage


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (temporary file beside it, fsync, rename)."""
    path = Path(path)
    check_replaceable(path)
    ensure_dir(path.parent, what="folder")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~umask())
            os.fsync(f.fileno())
        if path.is_dir():
            raise OutputError(f"cannot write {str(path)!r}: it is a folder")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode())


def missing_file(path: str | Path, what: str = "file") -> str:
    """The message for a ``path`` that should name an existing file but does not: a folder, or nothing.

    ``what`` names the file in the message (none when empty; a folder is never called a "file").
    """
    p = Path(path)
    if p.is_dir():
        noun = "" if what in ("", "file") else f"{what} "
        return f"{noun}{str(p)!r} is a folder, not a file"
    noun = f"{what} " if what else ""
    if p.exists():
        return f"{noun}{str(p)!r} is not a regular file (a pipe, device or socket)"
    return f"{noun}{str(p)!r} does not exist"


class JSONTextError(ValueError):
    """A text that :func:`parse_json` cannot read; the message is one line saying why (``reason``) and where."""

    def __init__(self, reason: str, where: str = "") -> None:
        super().__init__(f"{reason}: {where}" if where else reason)
        self.reason = reason


def parse_json(text: str | bytes) -> Any:
    """``json.loads``, with every way a text can fail to be read raised as :class:`JSONTextError`: invalid
    JSON, bytes that are not UTF-8, nesting deeper than Python's recursion limit, integers too long to convert.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise JSONTextError(exc.msg, f"line {exc.lineno}, column {exc.colno}") from None
    except UnicodeDecodeError:
        raise JSONTextError("not UTF-8 text") from None
    except RecursionError:
        raise JSONTextError("nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise JSONTextError((str(exc).splitlines() or ["unreadable"])[0]) from None


def read_json(path: str | Path, *, error: type[NasbnnError] = NasbnnError, missing: str | None = None) -> Any:
    """The parsed JSON file ``path``.

    Raises:
        error: the file is missing (``missing`` is the message, if given) or not valid JSON.
    """
    p = Path(path)
    if not p.is_file():
        raise error(missing or missing_file(p, ""))
    try:
        return parse_json(p.read_bytes())
    except JSONTextError as exc:
        raise error(f"{str(p)!r} is not valid JSON ({exc})") from None
