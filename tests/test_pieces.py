"""Word pieces as positions (--units pieces): tokenizer, the auto rule, and a run that
overfits eight English lines through the real train() path."""
import pytest

from tests.conftest import POEM_LINES, overfit
from textvae.errors import UserError
from textvae.tokenizer import PieceTokenizer

# Eight lines of Shakespeare's sonnets (public domain).
VERSE = ["Shall I compare thee to a summer's day?",
         "Thou art more lovely and more temperate:",
         "Rough winds do shake the darling buds of May,",
         "And summer's lease hath all too short a date;",
         "Sometime too hot the eye of heaven shines,",
         "And often is his gold complexion dimm'd;",
         "And every fair from fair sometime declines,",
         "By chance or nature's changing course untrimm'd;"]


def test_pieces_give_lines_back_with_their_spaces():
    tok = PieceTokenizer.train(VERSE * 4, 200)
    for line in VERSE + ["  two  spaces ", "compare thee"]:
        ids = tok.encode(line)
        assert tok.decode(ids) == line
    assert tok.longest(VERSE) < max(map(len, VERSE)) / 2  # pieces, not characters
    rows = tok.encode_batch(VERSE, tok.longest(VERSE))
    assert [tok.decode(r) for r in rows] == VERSE
    assert tok.decode(tok.encode("thee 月")) == "thee □"
    with pytest.raises(UserError, match="outside the model's vocabulary"):
        tok.encode("thee 月", allow_unk=False)
    with pytest.raises(UserError, match="pieces; this model handles at most 2"):
        tok.encode(VERSE[0], 2)


def test_units_auto_are_pieces_for_a_spaced_script_only():
    from textvae.corpora import default_units
    assert default_units("/no/such/file", VERSE) == "pieces"
    assert default_units("/no/such/file", POEM_LINES) == "chars"
    assert default_units("sonnets", []) == "pieces"
    assert default_units("tang5", []) == "chars"


@pytest.fixture(scope="module")
def piece_run(tmp_path_factory):
    return overfit(tmp_path_factory.mktemp("pieces"), VERSE, vocab_size=200)


def test_a_piece_run_writes_its_lines_back_and_new_ones(piece_run):
    assert piece_run.config["train"]["units"] == "pieces"  # saved as resolved
    assert piece_run.tokenizer.units == "pieces"
    assert piece_run.max_len == piece_run.tokenizer.longest(VERSE) < 20
    assert piece_run.reconstruct(VERSE, fit_steps=0) == VERSE
    samples = piece_run.sample(16)
    assert all(s.strip() and "□" not in s for s in samples) and len(set(samples)) > 1


def test_a_piece_run_is_judged_in_characters(piece_run):
    from textvae.evaluate import evaluate
    res = evaluate(piece_run, VERSE, VERSE, iw_samples=0, n_samples=50, n_pairs=2)
    assert res["chars"] == sum(map(len, VERSE))
    assert res["acc_mu"] == 1.0  # every character of every line in its place
    assert 0 < res["known_words"] <= 1


def test_character_features_refuse_a_piece_run(piece_run):
    for call, what in ((lambda: piece_run.complete("Shall I ____"), "completing a pattern"),
                       (lambda: piece_run.poems(1, acrostic="SAND"), "--acrostic"),
                       (lambda: piece_run.sample(2, keywords="a"), "--keywords"),
                       (lambda: piece_run.poems(1, form="wujue"), "--form wujue")):
        with pytest.raises(UserError, match=f"{what} places characters at positions"):
            call()


def test_a_piece_run_samples_at_its_own_default_temperature(piece_run, overfit_run):
    from textvae.decoding import SampleConfig, for_run
    assert for_run(piece_run, SampleConfig()).temperature == 0.8
    assert for_run(overfit_run, SampleConfig()).temperature == 0.7
    assert for_run(piece_run, SampleConfig(temperature=0.3)).temperature == 0.3
    assert piece_run.sample(64, seed=1) == piece_run.sample(64, seed=1, temperature=0.8)
    assert piece_run.sample(64, seed=1) != piece_run.sample(64, seed=1, temperature=3.0)
