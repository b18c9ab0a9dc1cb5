"""End to end in a real headless Chromium: ``ner demo`` on a free port with the tiny
pipeline, tag a pasted text, correct an entity, accept, export JSONL and check the file.
A screenshot is saved next to the test's files (and to $NER_DEMO_SCREENSHOT when set,
which is how docs/images/demo.png is made)."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_demo_page import TEXT, tiny_pipeline  # noqa: F401  (the same saved pipeline)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Chromium at /usr/bin/chromium (Debian: apt-get install chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright for Python (pip install playwright)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def demo(tiny_pipeline, tmp_path):  # noqa: F811
    """``ner demo`` running in its own process; yields (url, database path)."""
    port, database, log = free_port(), tmp_path / "annotations.sqlite", tmp_path / "demo.log"
    command = [sys.executable, "-m", "ner.cli", "demo", "--pipeline", str(tiny_pipeline), "--db", str(database),
               "--port", str(port)]
    with open(log, "w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                pytest.fail(f"ner demo exited with {server.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
                    if response.read() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ner demo did not answer on {url} within 90 s:\n{log.read_text()}")
            time.sleep(0.3)
        yield url, database
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def settle(page) -> None:
    """Wait until Streamlit has finished the script run a click started (call it once the
    click's effect shows: until then the page may still read "not running")."""
    page.locator("[data-testid=stApp][data-test-script-state=notRunning]").wait_for()


def test_tag_correct_accept_export_in_chromium(demo, tmp_path):
    url, database = demo
    expect = sync_api.expect
    expect.set_options(timeout=90_000)  # generous: a 2-core machine may be busy
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1300}, accept_downloads=True)
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.set_default_timeout(90_000)
            page.goto(url)
            settle(page)
            page.get_by_placeholder("Paste a text to tag…").fill(TEXT)
            page.get_by_role("button", name="Tag this text").click()
            marks = page.locator("mark[data-label]")
            expect(marks).to_have_count(3)
            expect(marks.nth(1)).to_have_attribute("data-label", "PER")
            settle(page)

            # Correct the second entity: Tim Cook is an organisation here.
            page.locator(".st-key-entity-1 [role=combobox]").click()
            page.get_by_role("option", name="ORG", exact=True).click()
            expect(page.locator("mark[data-label='ORG']")).to_have_text(re.compile(r"^Tim Cook ORG"))
            settle(page)
            screenshot = tmp_path / "demo.png"
            page.screenshot(path=screenshot)

            page.get_by_role("button", name="Accept").click()
            expect(page.get_by_text("Every document here is reviewed")).to_be_visible()
            settle(page)
            with page.expect_download() as download:
                page.get_by_role("button", name="JSONL (1)").click()
            exported = tmp_path / download.value.suggested_filename
            download.value.save_as(exported)
        finally:
            browser.close()

    assert exported.name == "pasted.jsonl"
    [row] = [json.loads(line) for line in exported.read_text().splitlines()]
    assert (row["id"], row["text"]) == ("pasted:1", TEXT)
    assert [(e["text"], e["label"]) for e in row["entities"]] == [
        ("Angela Merkel", "PER"), ("Tim Cook", "ORG"), ("Berlin", "LOC")]
    assert row["entities"][1]["score"] is None and 0.5 < row["entities"][0]["score"] <= 1
    assert all(TEXT[e["start"]:e["end"]] == e["text"] for e in row["entities"])
    assert database.exists()

    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size < 200_000
    if os.environ.get("NER_DEMO_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["NER_DEMO_SCREENSHOT"])
