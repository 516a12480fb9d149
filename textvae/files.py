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


class LineReader:
    """The non-blank lines of a UTF-8 text file, read one at a time when iterated, so a
    corpus larger than memory is never held whole.

    A UTF-8 byte-order mark and CRLF line ends are accepted. A line that is not valid
    UTF-8 is an error naming the file and line number, unless ``skip_bad_lines`` is set,
    in which case such lines are dropped and counted in ``skipped`` (per pass).
    """

    def __init__(self, path, skip_bad_lines=False):
        self.path, self.skip_bad_lines, self.skipped = Path(path), skip_bad_lines, 0
        if not self.path.exists():
            raise UserError(f"corpus file not found: {self.path}")
        if self.path.is_dir():
            raise UserError(f"corpus path is a directory, not a file: {self.path}")

    def __iter__(self):
        self.skipped = 0
        try:
            with open(self.path, "rb") as f:
                for number, chunk in enumerate(f, start=1):
                    text = self._decode(chunk, number)
                    if text is not None and text.strip():
                        yield text
        except OSError as e:
            raise UserError(f"cannot read {self.path}: {e.strerror or e}") from None

    def read(self):
        """Every non-blank line, as a list; a file without one is an error."""
        lines = list(self)
        if not lines:
            raise UserError(f"{self.path} has no non-blank lines")
        return lines

    def _decode(self, chunk, number):
        if number == 1 and chunk.startswith(b"\xef\xbb\xbf"):
            chunk = chunk[3:]
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError:
            if self.skip_bad_lines:
                self.skipped += 1
                return None
            raise UserError(
                f"{self.path}: line {number} is not valid UTF-8 "
                "(fix the file, or pass --skip-bad-lines to drop such lines)"
            ) from None
        return text.removesuffix("\n").rstrip("\r")


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
