"""Atomic file output: everything is written to a temporary file beside the target and renamed,
so a killed process never leaves a half-written file under the final name."""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from pipeline.errors import DataError, DiskSpaceError

HEADROOM = 64 * 2 ** 20  # left free beyond an estimate: logs, manifests, the odd temporary file


def _atomic(path: Path, write: Callable[[Path], None], overwrite: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; outputs get ordinary permissions
        if overwrite:
            os.replace(tmp_path, path)
        else:
            # link() fails if the target exists: no window in which a file could be clobbered
            os.link(tmp_path, path)
            tmp_path.unlink()
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def free_bytes(path: Path) -> int:
    """Free bytes on the disk that holds `path`, or would hold it (its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def human_bytes(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.1f} MiB"


def space_problem(path: Path, needed: int, what: str) -> str | None:
    """Why output of about `needed` bytes under `path` will not fit on its disk, or None."""
    free = free_bytes(path)
    if needed + HEADROOM <= free:
        return None
    return (f"{path}: {what} needs about {human_bytes(needed)} and {human_bytes(free)} is free on that disk; "
            "free some space or point outputs= at a larger disk, then run the same command")


def require_space(path: Path, needed: int, what: str) -> None:
    """Refuses output the disk has no room for before any of it is written: a full disk found hours
    into a stage costs those hours."""
    problem = space_problem(path, needed, what)
    if problem:
        raise DiskSpaceError(problem)


def write_bytes(path: Path, data: bytes, overwrite: bool = True) -> Path:
    def w(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return _atomic(path, w, overwrite)


def write_text(path: Path, text: str, overwrite: bool = True) -> Path:
    return write_bytes(path, text.encode(), overwrite)


def write_json(path: Path, obj, overwrite: bool = True) -> Path:
    return write_text(path, json.dumps(obj, indent=2) + "\n", overwrite)


def write_with(path: Path, save: Callable[[io.BufferedWriter], None], overwrite: bool = True) -> Path:
    """Atomic write through a callback that writes to a binary file object (torch.save, PIL, ...)."""
    def w(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            save(f)
            f.flush()
            os.fsync(f.fileno())

    return _atomic(path, w, overwrite)


def save_png(path: Path, array) -> Path:
    from PIL import Image

    return write_with(path, lambda f: Image.fromarray(array).save(f, format="PNG"))


def save_figure(path: Path, fig) -> Path:
    return write_with(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))


def read_json(path: Path, kind: type = dict, what: str = "") -> object:
    """A JSON file a user may have edited: a malformed one is a DataError naming the file, the line
    and the column; the top level must be `kind`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}){what}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}, column {e.colno}: not valid JSON ({e.msg}){what}") from None
    if not isinstance(doc, kind):
        raise DataError(f"{path}: expected a JSON {'object' if kind is dict else kind.__name__} at the top level, "
                        f"got {type(doc).__name__}{what}")
    return doc
