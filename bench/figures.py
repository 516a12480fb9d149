"""The README's pictures, made from a trained run so they can be made again.

    python bench/figures.py [--run runs/tang5] [--out docs]

Writes, into --out:
  map.png   the latent map of 2,000 of the run's test lines (`generate.py map --labels 0`,
            coloured by season)
  web.png   the web page (`generate.py serve`) after "Write", photographed in a headless
            Chromium (Debian's `chromium`, or $TEXTVAE_CHROMIUM) driven by Playwright
The training curves (curves.png) are copied by bench/report.py with the results.
"""
import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def latent_map(run, out):
    # --labels 0: the repository carries no corpus text, so no test line is written on it.
    subprocess.run([sys.executable, str(ROOT / "generate.py"), "map", "--run", str(run),
                    "--labels", "0", "--out", str(out / "map.png")], check=True)


def chromium():
    return os.environ.get("TEXTVAE_CHROMIUM") or shutil.which("chromium") or \
        shutil.which("chromium-browser")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    pass


@contextlib.contextmanager
def serving(run):
    """`generate.py serve --run RUN` on a free port, until the block ends: its URL."""
    port = free_port()
    # The server's output goes to a file: a pipe nobody reads blocks it once full.
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "generate.py"), "serve", "--run",
                                 str(run), "--port", str(port)], stdout=log,
                                stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        url = f"http://127.0.0.1:{port}/"
        try:
            _wait_for(url, proc, log)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _wait_for(url, proc, log, timeout=120):
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            log.seek(0)
            raise ServerError(f"the web page's server stopped: {log.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise ServerError(f"the web page did not answer on {url} within {timeout} s")


def web_page(run, out):
    """A photograph of the page with the poems of its first "Write"."""
    from playwright.sync_api import sync_playwright
    if not chromium():
        raise SystemExit("no Chromium executable (apt-get install chromium, or set "
                         "TEXTVAE_CHROMIUM)")
    with serving(run) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True)
        page = browser.new_page(viewport={"width": 1000, "height": 820})
        page.goto(url)
        page.click("#write-btn")
        page.wait_for_function("document.querySelector('#poems textarea').value.length > 0",
                               timeout=120_000)
        page.wait_for_timeout(2000)  # the page greys an output until its event ends
        page.screenshot(path=str(out / "web.png"), full_page=True)
        browser.close()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/tang5")
    p.add_argument("--out", default="docs")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    latent_map(args.run, out)
    try:
        web_page(args.run, out)
    except ServerError as e:
        raise SystemExit(str(e)) from None
    print(f"wrote {out / 'map.png'} and {out / 'web.png'}")


if __name__ == "__main__":
    main()
