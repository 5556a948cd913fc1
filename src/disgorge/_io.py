"""Atomic file writes: temp file + fsync + rename, so a crash leaves the old file or the new one."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

from .errors import DisgorgeError, NotFound


def fsync_dir(path: Path) -> None:
    """Flush a directory entry so a rename inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def read_text(path: Path, what: str, error: type[DisgorgeError] = DisgorgeError,
              missing: type[DisgorgeError] = NotFound) -> str:
    """A UTF-8 text file's content; ``missing`` (a file that does not exist) or ``error`` (one that cannot be read
    as UTF-8 text) with a one-line message naming ``what`` it should have been."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise missing(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} {path} as UTF-8 text ({type(exc).__name__}: {exc})") from None


def read_regular(path: Path, what: str = "file") -> bytes:
    """The bytes of a regular file, refusing a symlink, a FIFO, a device or a folder in its place (so that a FIFO
    cannot hang a command and a link cannot point a read outside the workspace)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise NotFound(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise DisgorgeError(f"{what} {path} cannot be read ({exc.strerror}); it must be a regular file, not a "
                            "link") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DisgorgeError(f"{what} {path} is not a regular file; replace it with the real file")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


def check_within(root: Path, path: Path) -> Path:
    """``path`` after checking that no part of it below ``root`` is a symlink and that it stays inside ``root``,
    so that a planted link cannot make a command write outside the workspace."""
    root, path = Path(root), Path(path)
    rel = path.relative_to(root)
    here = root
    for part in rel.parts:
        here = here / part
        if here.is_symlink():
            raise DisgorgeError(f"{here} is a symbolic link; disgorge never writes through links inside a workspace."
                                " Remove the link")
    if not path.resolve().is_relative_to(root.resolve()):
        raise DisgorgeError(f"{path} resolves outside the workspace {root}")
    return path
