"""Reading corpora and writing files safely.

Two rules live here so every caller gets them for free:
- a corpus is UTF-8 text, one sample per line; anything else is a ``UserError`` that names
  the file and line, never a traceback;
- every file the project writes goes to a temporary name, is fsynced, then renamed over
  the target, so a crash or a full disk leaves the previous version intact.
"""
import json
import os
import tempfile
from pathlib import Path

from .errors import UserError


def read_lines(path, skip_bad_lines=False):
    """Return the non-blank lines of a UTF-8 text file, without line ends.

    A UTF-8 byte-order mark and CRLF line ends are accepted. A line that is not valid
    UTF-8 is an error naming the file and line number, unless ``skip_bad_lines`` is set,
    in which case such lines are dropped and counted (returned as the second value).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"corpus file not found: {path}")
    if path.is_dir():
        raise UserError(f"corpus path is a directory, not a file: {path}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines, skipped = [], 0
    for number, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError:
            if skip_bad_lines:
                skipped += 1
                continue
            raise UserError(
                f"{path}: line {number} is not valid UTF-8 "
                "(fix the file, or pass --skip-bad-lines to drop such lines)"
            ) from None
        text = text.rstrip("\r")
        if text.strip():
            lines.append(text)
    if not lines:
        raise UserError(f"corpus {path} has no non-blank lines")
    return lines, skipped


UMASK = os.umask(0)
os.umask(UMASK)  # read once: the mode a plain open() would give new files


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` so that readers see the old file or the new, never half."""
    atomic_write_chunks(path, [data])


def atomic_write_chunks(path, chunks):
    """atomic_write_bytes for a file written piece by piece (an iterable of bytes), so
    that the whole never needs to be in memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; a run folder is for sharing
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # A full disk (OSError) or an interrupt mid-write: drop the partial temp file,
        # the previous version of ``path`` is untouched.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # fsync the directory so the rename itself survives a power cut.
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def read_json(path):
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"missing file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None
