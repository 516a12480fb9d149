"""The web page (`generate.py serve`), clicked through in a real headless Chromium.

Needs gradio, playwright (the Python package; its own browser download is not used) and
a Chromium executable (Debian's `chromium` package, or $TEXTVAE_CHROMIUM). Without
them the test is skipped, unless TEXTVAE_REQUIRE_BROWSER=1 (as .ci/run sets), where a
missing piece is a failure, so CI cannot pass by skipping.
"""
import os
import subprocess
import sys

import pytest

from bench.figures import chromium, serving

from .conftest import ROOT

# subprocesses, signals, torchrun or a browser: `pytest -m "not slow"` leaves them out
pytestmark = pytest.mark.slow

REQUIRED = os.environ.get("TEXTVAE_REQUIRE_BROWSER") == "1"


def _missing():
    for module in ("gradio", "playwright"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install '.[web,test]')"
    if not chromium():
        return "no Chromium executable (apt-get install chromium, or set TEXTVAE_CHROMIUM)"
    return None


@pytest.fixture(scope="module")
def server(overfit_run):
    why = _missing()
    if why:
        if REQUIRED:
            pytest.fail(why)
        pytest.skip(why)
    with serving(overfit_run.dir) as url:
        yield url


def _value(page, elem_id):
    """The text of a Gradio textbox, once it has some (handlers run asynchronously)."""
    page.wait_for_function(
        f"document.querySelector('#{elem_id} textarea, #{elem_id} input').value.length > 0",
        timeout=60_000)
    return page.input_value(f"#{elem_id} textarea, #{elem_id} input")


def test_page_in_a_real_browser(server, tmp_path):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True)
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.goto(server)

        # Write: two poems of four five-character lines.
        page.click("#write-btn")
        poems = _value(page, "poems").split("\n\n")
        assert len(poems) == 2 and all(len(p.split("\n")) == 4 for p in poems), poems
        assert all(len(line) == 5 for p in poems for line in p.split("\n"))

        # Interpolate: the typed lines (memorised by the fixture run) are the ends, and
        # the slider walks the path.
        page.get_by_role("tab", name="Interpolate").click()
        page.click("#interp-btn")
        path = [row.split()[1] for row in _value(page, "path").split("\n")]
        assert path[0] == "白日依山尽" and path[-1] == "床前明月光", path
        assert _value(page, "here") == "白日依山尽"
        page.fill("#walk input[type=number]", str(len(path) - 1))
        page.press("#walk input[type=number]", "Enter")
        page.wait_for_function("document.querySelector('#here textarea, #here input')"
                               ".value === '床前明月光'", timeout=30_000)

        # Complete: the given characters stay.
        page.get_by_role("tab", name="Complete").click()
        page.click("#complete-btn")
        filled = _value(page, "completions").split("\n")
        assert filled and all(s[:2] == "白日" and s[4] == "尽" for s in filled), filled

        # A bad input gets one readable message, and the server keeps serving.
        page.fill("#pattern textarea, #pattern input", "ABCDE")
        page.click("#complete-btn")
        toast = page.locator(".toast-body").first
        toast.wait_for(timeout=30_000)
        assert "outside the model's vocabulary" in toast.inner_text()
        assert "Traceback" not in page.content()
        page.fill("#pattern textarea, #pattern input", "春眠__晓")
        page.click("#complete-btn")
        page.wait_for_function("document.querySelector('#completions textarea')"
                               ".value.startsWith('春眠')", timeout=60_000)

        # Similar: the reconstruction and the nearest training lines.
        page.get_by_role("tab", name="Similar").click()
        page.click("#similar-btn")
        near = _value(page, "similar")
        assert near.startswith("reconstructed: 白日依山尽") and "0.00  白日依山尽" in near

        # Map: a picture appears.
        page.get_by_role("tab", name="Map").click()
        page.click("#map-btn")
        page.locator("#map img").wait_for(timeout=60_000)

        shot = tmp_path / "web.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_figures_bench_draws_the_readmes_pictures(server, overfit_run, tmp_path):
    # `server` only for its check that a browser is here (skip or fail as CI asks).
    from .test_latent import assert_a_drawn_png
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "figures.py"), "--run",
                        str(overfit_run.dir), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("map.png", "web.png"):
        assert_a_drawn_png(tmp_path / name)
