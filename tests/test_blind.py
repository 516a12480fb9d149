"""bench/blind.py: a pack hides its key, and the scores are the readers' ratings joined
with it."""
import json
import subprocess
import sys

import pytest

from .conftest import POEM_LINES, ROOT

BLIND = ROOT / "bench" / "blind.py"


def _blind(*args):
    return subprocess.run([sys.executable, str(BLIND), *map(str, args)], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_pack_hides_the_systems_and_score_joins_ratings_with_the_key(tmp_path):
    good = [POEM_LINES[:4], POEM_LINES[4:]] * 3
    bad = [["一一一一一", "二二二二二", "三三三三三", f"{c}{c}{c}{c}{c}"] for c in "四五六七八九"]
    (tmp_path / "good.json").write_text(json.dumps(good, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "bad.json").write_text(json.dumps(bad, ensure_ascii=False), encoding="utf-8")
    panel = tmp_path / "panel"
    r = _blind("pack", panel, "--n", 5, "--system", f"alpha=file:{tmp_path / 'good.json'}",
               "--system", f"omega=file:{tmp_path / 'bad.json'}")
    assert r.returncode == 0, r.stderr
    pack = (panel / "pack.md").read_text(encoding="utf-8")
    assert "alpha" not in pack and "omega" not in pack and "good.json" not in pack
    key = json.loads((panel / "key.json").read_text(encoding="utf-8"))
    assert len(key["items"]) == 10 and f"[{len(key['items'])}]" in pack
    order = [it["system"] for it in key["items"]]
    assert order not in (sorted(order), sorted(order, reverse=True))  # shuffled
    # Reader a rates alpha 5/4/R and omega 1/1/G; reader b alpha 3/4/G, omega 1/2/G.
    for reader, (hi, lo) in {"a": ("5 4 R", "1 1 G"), "b": ("3 4 G", "1 2 G")}.items():
        rows = [f"{it['item']} {hi if it['system'] == 'alpha' else lo}" for it in key["items"]]
        (panel / f"ratings-{reader}.txt").write_text("\n".join(["noise"] + rows) + "\n")
    r = _blind("score", panel)
    assert r.returncode == 0, r.stderr
    res = json.loads((panel / "scores.json").read_text())
    alpha, omega = res["systems"]["alpha"], res["systems"]["omega"]
    assert alpha["fluency"][0] == 4.0 and alpha["coherence"][0] == 4.0 and alpha["real"] == 0.5
    assert omega["fluency"][0] == 1.0 and omega["coherence"][0] == 1.5 and omega["real"] == 0.0
    assert alpha["by_reader"] == {"a": 5.0, "b": 3.0} and res["unrated"] == {"a": 0, "b": 0}


@pytest.mark.slow
def test_a_used_panel_folder_is_refused(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps([POEM_LINES[:4]], ensure_ascii=False))
    args = ("pack", tmp_path / "panel", "--system", f"x=file:{tmp_path / 'p.json'}")
    assert _blind(*args).returncode == 0
    r = _blind(*args)
    assert r.returncode != 0 and "already holds a panel" in r.stderr


@pytest.mark.slow
def test_report_writes_the_run_and_the_panel_with_its_items(tmp_path, overfit_run):
    panel = tmp_path / "panel"
    (tmp_path / "p.json").write_text(json.dumps([POEM_LINES[:4], POEM_LINES[4:]],
                                                ensure_ascii=False), encoding="utf-8")
    assert _blind("pack", panel, "--n", 2, "--system",
                  f"mine=file:{tmp_path / 'p.json'}").returncode == 0
    (panel / "ratings-a.txt").write_text("1 4 3 R\n2 2 1 G\n")
    assert _blind("score", panel).returncode == 0
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text((overfit_run.dir / "config.json").read_text())
    (run / "summary.json").write_text(json.dumps({"steps": 120, "train_s": 9.5, "lines": 8,
                                                  "acc_mu": 0.5, "kl": 3.25, "iw_nll": 30.0}))
    out = tmp_path / "results.md"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "report.py"), "--run", run,
                        "--panels", panel, "--poems-json", tmp_path / "none.json",
                        "--out", out, "--compute", run], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    text = out.read_text(encoding="utf-8")
    assert "120 steps" in text and "| char accuracy from mu | 0.500 |" in text
    assert "| mine | 2 | 3.00 ± 1.00 | 2.00 ± 1.00 | 50% |" in text
    assert "\n".join(POEM_LINES[:4]) in text and "commit" in text
    # The summaries come first; each panel has a row linking to its section below.
    assert "| [panel](#blind-panel-panel-poems) | mine 3.00 / 2.00 (50%) |" in text
    assert (text.index("## Quality against compute") < text.index("## Blind panels at a glance")
            < text.index("## Blind panel `panel`"))
    # The panel read a file, not this run: its row has no readers' scores.
    assert f"| `{run}` | " in text and "| 120 | 0 | 30.00 | 0.500 | - / - | - | - |" in text


def test_the_compute_table_finds_a_runs_free_poems_and_its_form(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import report
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    panel = tmp_path / "panel"
    panel.mkdir()
    (panel / "key.json").write_text("{}")  # packed after the run was written
    sources = {"a": f"run:{run}", "b": f"form:{run}:wujue", "c": f"form:{run}-other:wujue",
               "d": "real:quatrain5", "e": f"lm:{run}"}
    (panel / "scores.json").write_text(json.dumps({"kind": "poems", "sources": sources,
                                                   "systems": {k: k for k in sources}}))
    found = [(how, scores) for _, _, how, scores in report._panel_scores([panel], run)]
    assert found == [("free", "a"), ("wujue", "b")]
    # A file of poems counts where key.json says this run's form writer made it.
    sources["f"] = "file:poems.json"
    (panel / "scores.json").write_text(json.dumps({"kind": "poems", "sources": sources,
                                                   "systems": {k: k for k in sources}}))
    (panel / "key.json").write_text(json.dumps({"written_by": {"f": f"form:{run}:wujue"}}))
    found = [(how, scores) for _, _, how, scores in report._panel_scores([panel], run)]
    assert found == [("free", "a"), ("wujue", "b"), ("wujue", "f")]
