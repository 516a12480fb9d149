import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textvae.errors import UserError
from textvae.tokenizer import PAD, UNK, CharTokenizer

from .conftest import POEM_LINES


def test_round_trip_keeps_unicode_and_spaces_exactly():
    lines = ["白日依山尽", "From fairest  creatures,", "𠀀𪚥 ext-B", "café — naïve", "😀 ok"]
    tok = CharTokenizer.train(lines, vocab_size=200)
    for line in lines:
        ids = tok.encode(line, length=40)
        assert len(ids) == 40
        assert tok.decode(ids) == line


def test_one_id_per_character_even_for_runs_of_unknowns():
    tok = CharTokenizer.train(POEM_LINES, vocab_size=200)
    ids = tok.encode("麒麟麒麟山", length=5)  # four unknowns then a known character
    assert ids[:4] == [UNK] * 4 and ids[4] == tok.index["山"]


def test_vocab_cap_keeps_the_most_frequent_characters():
    lines = ["aaaa", "aab", "abc", "d"]
    tok = CharTokenizer.train(lines, vocab_size=6)  # 4 specials + 2 characters
    assert tok.vocab_size == 6
    assert set(tok.index) == {"a", "b"}
    assert tok.encode("abcd") == [tok.index["a"], tok.index["b"], UNK, UNK]


def test_special_ids_are_fixed():
    tok = CharTokenizer.train(POEM_LINES, vocab_size=100)
    assert [tok.sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert tok.encode("白日", length=4)[2:] == [PAD, PAD]


def test_unknown_character_is_named_unless_allowed():
    tok = CharTokenizer.train(POEM_LINES, vocab_size=100)
    with pytest.raises(UserError, match="'麟'"):
        tok.encode("白日麟山尽", allow_unk=False)
    assert tok.encode("白日麟山尽", allow_unk=True)[2] == UNK


def test_too_long_line_is_an_error_naming_the_limit():
    tok = CharTokenizer.train(POEM_LINES, vocab_size=100)
    with pytest.raises(UserError, match="at most 5"):
        tok.encode("白日依山尽了", length=5)


def test_save_and_load_give_the_same_ids(tmp_path):
    tok = CharTokenizer.train(POEM_LINES, vocab_size=100)
    tok.save(tmp_path / "t.model")
    again = CharTokenizer.load(tmp_path / "t.model")
    assert again.encode("床前明月光") == tok.encode("床前明月光")


@settings(max_examples=80, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                                blacklist_characters="\n\r\u2581"),
                        min_size=1, max_size=12), min_size=1, max_size=8))
def test_any_text_round_trips_or_is_rejected_cleanly(lines):
    """Property: any lines either build a vocabulary in which every line round-trips
    (control characters, which sentencepiece never keeps, as <unk>), or are refused
    with a UserError; nothing else is raised."""
    lines = [s for s in lines if s.strip()]
    if not lines:
        return
    try:
        tok = CharTokenizer.train(lines, vocab_size=1000)
    except UserError:
        assert all(unicodedata.category(c) == "Cc" or c.isspace() for s in lines for c in s)
        return
    for line in lines:
        ids = tok.encode(line, length=12)
        assert len(ids) == 12
        # Every non-control character is in the vocabulary; some control characters
        # (NUL, ...) are not, and those come back as <unk>.
        assert all(c in tok.index for c in line if unicodedata.category(c) != "Cc")
        expected = "".join(c if c in tok.index else "□" for c in line)
        assert tok.decode(ids) == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=8), max_size=12))
def test_a_batch_is_encoded_as_its_lines_one_by_one(lines):
    """encode_batch looks code points up in an array; encode goes through the dict."""
    tok = CharTokenizer.train(["白日依山尽", "From fairest creatures", "𠀀 café\x00"], 200)
    got = tok.encode_batch(lines, 8)
    assert got.shape == (len(lines), 8) and got.dtype.name == "int64"
    assert got.tolist() == [tok.encode(line, 8) for line in lines]
