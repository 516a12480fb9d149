"""Classical forms: tone templates, rhyme tables, constrained poems, acrostics."""
import json
from types import SimpleNamespace

import pytest
import torch

from bench.poetry import fault, heads_ok, parse, rhymes, tone_verdict
from textvae import poetry
from textvae.errors import UserError
from textvae.sampling import acrostic_patterns
from textvae.poetry import PoemConfig, couplets, write_poems
from textvae.prosody import VERSE_FORMS, PING, ZE, faultless, table, templates, xinyun_group

from .conftest import run_cli

DENG_GUAN_QUE_LOU = "白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。"


def test_templates_are_the_standard_patterns():
    assert templates(VERSE_FORMS["wujue"], "ze") == ["仄仄平平仄", "平平仄仄平", "平平平仄仄", "仄仄仄平平"]
    # 七绝 平起, first line rhyming: the textbook pattern.
    assert templates(VERSE_FORMS["qijue"], "ping") == [
        "平平仄仄仄平平", "仄仄平平仄仄平", "仄仄平平平仄仄", "平平仄仄仄平平"]
    lv = templates(VERSE_FORMS["qilv"], "ze")
    assert len(lv) == 8 and lv[4] == "仄仄平平平仄仄" and lv[5:] == lv[1:4]  # textbook 七律


def test_pingshui_table_knows_tones_and_groups():
    t = table("pingshui")
    assert t.tones("东") == {PING} and t.groups("东") == {"一東"}
    assert t.tones("白") == {ZE}          # an 入声 character is 仄
    assert t.groups("流") & t.groups("楼")  # 登鹳雀楼 rhymes in 尤
    assert t.tones("看") == {PING, ZE}     # two readings


@pytest.mark.parametrize("syllable,group", [
    ("zhong", "庚"), ("shi", "支"), ("xi", "齐"), ("yue", "皆"), ("jun", "文"),
    ("you", "尤"), ("wei", "微"), ("hua", "麻"), ("lv", "齐"), ("wo", "波"), ("yuan", "寒")])
def test_xinyun_groups_follow_the_finals(syllable, group):
    assert xinyun_group(syllable) == group


def test_faultless_positions_rule_out_gu_ping_and_san_ping_wei():
    assert faultless("仄仄仄平平") == {2: ZE}          # 仄仄平平平 would be 三平尾
    assert faultless("平平仄仄平") == {0: PING}        # 仄平仄仄平 would be 孤平
    assert faultless("仄仄平平仄仄平") == {2: PING}
    assert faultless("平平仄仄仄平平") == {4: ZE}
    assert faultless("仄仄平平仄") == {}


def test_the_fault_checker_finds_both_faults():
    tab = table("pingshui")
    assert fault("白日依山尽", tab) is None          # ends 仄: no rule applies
    assert fault("黄河入海流", tab) is None
    assert fault("白日开东流", tab) == "三平尾"       # 开东流 all 平
    assert fault("月明落叶流", tab) == "孤平"         # 明 the one 平 before the rhyme


def test_the_checker_passes_a_real_quatrain():
    tab, form = table("pingshui"), VERSE_FORMS["wujue"]
    clauses = parse(DENG_GUAN_QUE_LOU, form)
    assert clauses is not None and rhymes(clauses, tab)
    assert tone_verdict(clauses, form, tab) == (True, 1.0)
    assert parse(DENG_GUAN_QUE_LOU.replace("。", "，"), form) is None


def test_constrained_poems_keep_form_rhyme_tones_and_acrostic(overfit_run):
    assert_forms_kept(overfit_run)


def assert_forms_kept(run):
    """8 五绝 of the run with rhyme, tones and an acrostic keep all three."""
    tab, form = table("pingshui"), VERSE_FORMS["wujue"]
    pc = PoemConfig(form, rhyme="pingshui", tones=True, acrostic="白黄欲更")
    for poem in write_poems(run, pc, 8):
        text = "\n".join(couplets(poem))
        clauses = parse(text, form)
        assert clauses is not None, text
        assert rhymes(clauses, tab), text
        assert tone_verdict(clauses, form, tab)[0], text
        assert all(fault(c, tab) is None for c in clauses), text
        assert heads_ok(text, form, "白黄欲更"), text


def test_lines_do_not_reuse_the_poems_earlier_characters(overfit_run):
    # 40 characters to choose 20 from; a doubled character inside a line (处处) is
    # the repeat penalty's business, not this rule's.
    for poem in write_poems(overfit_run, PoemConfig(VERSE_FORMS["wujue"], rhyme="off"), 8):
        for i in range(1, 4):
            assert not set(poem[i]) & set("".join(poem[:i])), poem


def test_an_acrostic_character_is_left_to_its_own_line(overfit_run, monkeypatch):
    # Written earlier, it would stand twice in the poem once its line opens with it: the
    # first line may not hold the later lines' 黄, 欲 or 更 anywhere but where given.
    allowed, write = [], poetry.write_lines

    def spy(run, z, noise, sc, **kw):
        allowed.append(kw["allowed"])
        return write(run, z, noise, sc, **kw)
    monkeypatch.setattr(poetry, "write_lines", spy)
    heads = "白黄欲更"
    pc = PoemConfig(VERSE_FORMS["wujue"], rhyme="off", acrostic=heads)
    poem = next(write_poems(overfit_run, pc, 1))
    later = [overfit_run.tokenizer.index[c] for c in heads[1:]]
    assert not allowed[0][:, 1:5, later].any() and allowed[-1][:, 1:5, later].any()
    for i in range(1, 4):
        assert heads[i] not in "".join(poem[:i]), poem


def test_a_position_no_rule_can_fill_takes_any_character_but_never_pad():
    form = VERSE_FORMS["wujue"]
    allowed = torch.zeros(6, 12, dtype=torch.bool)  # no character left at any position
    poetry._constrain(allowed, PoemConfig(form, rhyme="off"), None, None, False, None,
                      torch.zeros(12, dtype=torch.bool))
    assert allowed[:5, 4:].all() and not allowed[:5, :4].any()  # no <pad>, <unk>, <s>, </s>


def test_forms_refuse_runs_and_inputs_that_do_not_fit(overfit_run):
    with pytest.raises(UserError, match="7-character"):
        next(write_poems(overfit_run, PoemConfig(VERSE_FORMS["qijue"]), 1))
    with pytest.raises(UserError, match="4 characters"):
        PoemConfig(VERSE_FORMS["wujue"], acrostic="春夏")
    with pytest.raises(UserError, match="rhyme"):
        PoemConfig(VERSE_FORMS["wujue"], rhyme="tang")


def test_acrostic_on_a_whole_poem_corpus_puts_one_character_per_clause():
    fixed = {"5": "，", "11": "。", "17": "，", "23": "。"}
    run = SimpleNamespace(form=SimpleNamespace(lengths=[24], fixed=fixed))
    assert acrostic_patterns(run, "春夏秋冬") == ["春____，夏____。秋____，冬____。"]
    with pytest.raises(UserError, match="4 characters"):
        acrostic_patterns(run, "春夏")
    line_run = SimpleNamespace(form=SimpleNamespace(lengths=[5], fixed={}))
    assert acrostic_patterns(line_run, "春夏") == ["春____", "夏____"]


@pytest.mark.slow
def test_cli_writes_forms_and_refuses_wrong_ones(overfit_run):
    ok = run_cli("generate.py", "--run", str(overfit_run.dir), "--form", "wujue",
                 "--tones", "--num", "2")
    assert ok.returncode == 0, ok.stderr
    poems = ok.stdout.strip().split("\n\n")
    assert len(poems) == 2 and all(parse(p, VERSE_FORMS["wujue"]) for p in poems)
    bad = run_cli("generate.py", "--run", str(overfit_run.dir), "--form", "qilv")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    # JSON holds a form's lines, not the couplets the text shows.
    ok = run_cli("generate.py", "--run", str(overfit_run.dir), "--form", "wujue",
                 "--format", "json", "--num", "2")
    assert ok.returncode == 0, ok.stderr
    assert [[len(line) for line in p] for p in json.loads(ok.stdout)] == [[5] * 4] * 2
    # A form's flags on free lines are refused, not silently dropped.
    for flags, named in ((["--form", "free", "--tones"], "--tones"),
                         (["--acrostic", "春夏秋冬", "--rhyme", "xinyun"], "--rhyme"),
                         (["--coherence", "0.3"], "--coherence"),
                         (["--form", "wujue", "--lines", "8"], "--lines")):
        bad = run_cli("generate.py", "--run", str(overfit_run.dir), *flags)
        assert bad.returncode != 0 and "Traceback" not in bad.stderr, flags
        assert len(bad.stderr.strip().splitlines()) == 1 and named in bad.stderr, flags


def test_tones_hold_the_faultless_positions_too(overfit_run):
    import torch
    from textvae.poetry import VocabTones, _constrain
    vt = VocabTones(overfit_run.tokenizer, "pingshui")
    pc = PoemConfig(VERSE_FORMS["wujue"], rhyme="off", tones=True)
    V = len(overfit_run.tokenizer.chars)
    for pattern, (pos, tone) in (("平平仄仄平", (0, PING)), ("仄仄仄平平", (2, ZE))):
        allowed = torch.ones(5, V, dtype=torch.bool)
        _constrain(allowed, pc, vt, pattern, False, None, torch.zeros(V, dtype=torch.bool))
        assert not (allowed[pos] & ~vt.tone[tone]).any(), pattern


def test_the_form_written_is_chosen_in_one_place():
    from textvae.decoding import SampleConfig
    from textvae.poetry import chosen_form
    poem_model = SimpleNamespace(chain=object(), tokenizer=SimpleNamespace(units="chars"),
                                 form=SimpleNamespace(lengths=[5]))
    sc = SampleConfig()
    assert chosen_form(poem_model, sc) == ("wujue", True)             # generate.py's default
    assert chosen_form(poem_model, sc, tones=False) == ("wujue", False)  # --no-tones
    assert chosen_form(poem_model, sc, free=True) == (None, False)    # --acrostic, --lines
    assert chosen_form(poem_model, SampleConfig(independent=True)) == (None, False)
    assert chosen_form(poem_model, sc, "free", True) == (None, False)
    assert chosen_form(poem_model, sc, "qijue") == ("qijue", False)   # a named form's tones
    assert chosen_form(poem_model, sc, "qijue", True) == ("qijue", True)  # only when asked
    for change in ({"chain": None}, {"form": SimpleNamespace(lengths=[5, 7])},
                   {"tokenizer": SimpleNamespace(units="pieces")}):
        assert chosen_form(SimpleNamespace(**{**vars(poem_model), **change}), sc) == \
            (None, False), change
