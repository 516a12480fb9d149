"""Property tests of the corpus reader: any bytes are read or refused cleanly."""
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textvae.errors import UserError
from textvae.files import LineReader


def read(raw, **kw):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.txt"
        path.write_bytes(raw)
        reader = LineReader(path, **kw)
        return reader.read(), reader.skipped


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_read_or_refused_with_a_user_error(raw):
    try:
        lines, skipped = read(raw)
    except UserError as e:
        assert "UTF-8" in str(e) or "no non-blank lines" in str(e)
        return
    assert skipped == 0 and lines and all("\n" not in s and s.strip() for s in lines)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                                blacklist_characters="\n\r"), max_size=20),
                max_size=10), st.booleans(), st.booleans())
def test_utf8_text_round_trips_with_bom_and_crlf(lines, bom, crlf):
    end = "\r\n" if crlf else "\n"
    raw = (("\ufeff" if bom else "") + "".join(s + end for s in lines)).encode("utf-8")
    want = [s for s in lines if s.strip()]
    if not want:
        with pytest.raises(UserError, match="no non-blank lines"):
            read(raw)
        return
    assert read(raw) == (want, 0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.text(alphabet="山水月a b", min_size=1, max_size=5).map(str.encode),
                          st.just(b"\xff\xfe"), st.just(b"\xc3")), min_size=1, max_size=8))
def test_skip_bad_lines_drops_exactly_the_invalid_ones(chunks):
    raw = b"\n".join(chunks)
    bad = sum(1 for c in chunks if c in (b"\xff\xfe", b"\xc3"))
    good = [c.decode() for c in chunks if c not in (b"\xff\xfe", b"\xc3") and c.decode().strip()]
    if not good:
        with pytest.raises(UserError):
            read(raw, skip_bad_lines=True)
        return
    assert read(raw, skip_bad_lines=True) == (good, bad)


def test_written_files_get_the_usual_mode_not_mkstemps_0600(tmp_path):
    from textvae.files import UMASK, atomic_write_bytes
    atomic_write_bytes(tmp_path / "f.bin", b"x")
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o666 & ~UMASK
