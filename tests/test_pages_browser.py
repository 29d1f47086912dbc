"""Both pages in a real browser (Selenium driving Debian's chromium, headless): rate three items, reload, find the
ratings again, finish, and check the database; upload two WAVs to the explain page and get an explanation and a
hallucination view. Screenshots go to work/test-screenshots/ each run, and to docs/screenshots/ (the README's) when
missing there or with UPDATE_SCREENSHOTS=1."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, tiny_config

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTEFACTS = REPO / "work" / "test-screenshots"  # every run's screenshots (git-ignored)
SHOTS = REPO / "docs" / "screenshots"  # the README's: written when missing or with UPDATE_SCREENSHOTS=1

pytestmark = [pytest.mark.skipif(not (CHROMIUM.is_file() and DRIVER.is_file()),
                                 reason="needs Debian's chromium and chromium-driver (scripts/install_chromium.sh)"),
              pytest.mark.usefixtures("one_thread")]


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    # the fake devices give getUserMedia a beeping microphone and grant it without a prompt (the record buttons)
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1300",
              "--autoplay-policy=no-user-gesture-required", "--use-fake-device-for-media-stream",
              "--use-fake-ui-for-media-stream"):
        opts.add_argument(a)
    opts.binary_location = str(CHROMIUM)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def serve(app):
    """Run ``app`` with uvicorn on a free loopback port in a thread; yields the base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, thread


def keep_screenshot(src: Path, name: str) -> None:
    """Copy a screenshot to the test artefacts, and to docs/screenshots when it is missing there or asked for
    (pixels differ run to run, so refreshing the README's on every run would leave the tree changed)."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, ARTEFACTS / name)
    if not (SHOTS / name).exists() or os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, SHOTS / name)


def wait_for(driver, cond, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(cond)


def test_listening_page_rates_resumes_and_finishes(tmp_path, browser):
    from selenium.webdriver.common.by import By

    from audiopair.config import StudyConfig
    from audiopair.serve.app import create_app
    from audiopair.serve.study import build_study, load_study
    from test_listening_test import write_predictions

    said = {"adiff": ["Audio 1 has a dog barking over light rain, while audio 2 replaces the dog with a siren that "
                      "is louder and brighter.", "Both audios share steady rain; the second adds a passing siren.",
                      "The first audio is calm rain with barking; the second is tense, with a loud wailing siren."],
            "baseline": ["Audio 1 is rain. Audio 2 is rain.", "The second audio is louder.",
                         "There is rain in both audios and a sound in the second."]}
    rep = write_predictions(tmp_path, "demo", models=("adiff", "baseline"),
                            text=lambda m, r: said[m][int(r["tier"]) - 1])
    cfg = StudyConfig.model_validate({"name": "demo", "output_dir": str(tmp_path / "study"), "pairs_per_tier": 1,
                                      "raters": ["ann"], "scenarios": [{"name": "demo", "predictions": [str(rep)]}]})
    build_study(cfg, say=lambda m: None)
    study = load_study(cfg.output_dir)
    app = create_app(cfg.output_dir)
    base, server, thread = serve(app)
    d = browser
    want = {}  # (item, output, dim) -> score clicked
    try:
        d.get(f"{base}/rate/{study.raters['ann']}")
        for n, it in enumerate(study.items):
            wait_for(d, lambda drv: drv.find_element(By.ID, "progress").text == f"Item {n + 1} of 3")
            assert len(d.find_elements(By.CSS_SELECTOR, "audio")) == 2
            texts = [e.text for e in d.find_elements(By.CSS_SELECTOR, ".output .text")]
            assert texts == [o["text"] for o in it["outputs"]]  # the frozen blind order
            for k, o in enumerate(it["outputs"]):
                for j, dim in enumerate(("cor", "gra", "rdb")):
                    score = (n + 2 * k + j) % 5 + 1
                    d.find_element(By.CSS_SELECTOR, f"label[for='r-{o['key']}-{dim}-{score}']").click()
                    wait_for(d, lambda drv: drv.find_element(By.ID, "status").text == "saved")
                    want[(it["id"], o["key"], dim)] = score
            if n == 1:
                d.find_element(By.ID, "comment").send_keys("the second audio is louder")
                wait_for(d, lambda drv: drv.find_element(By.ID, "status").text == "saved")
            if n < 2:
                d.find_element(By.ID, "next").click()
        d.save_screenshot(str(tmp_path / "listening.png"))
        # a closed browser: reload, land on the last item, and every rating is still checked
        d.refresh()
        wait_for(d, lambda drv: drv.find_element(By.ID, "progress").text == "Item 3 of 3")
        for n in (2, 1, 0):
            it = study.items[n]
            wait_for(d, lambda drv: drv.find_element(By.ID, "progress").text == f"Item {n + 1} of 3")
            checked = {(e.get_attribute("data-output"), e.get_attribute("data-dim")): int(e.get_attribute("value"))
                       for e in d.find_elements(By.CSS_SELECTOR, "input[type=radio]") if e.is_selected()}
            assert checked == {(o, dim): v for (i, o, dim), v in want.items() if i == it["id"]}
            if n == 1:
                assert d.find_element(By.ID, "comment").get_attribute("value") == "the second audio is louder"
            if n:
                d.find_element(By.ID, "back").click()
        d.find_element(By.ID, "finish").click()
        wait_for(d, lambda drv: drv.find_element(By.ID, "done").text == "Thank you: all ratings are in.")
    finally:
        server.should_exit = True
        thread.join(30)
    store = app.state.store
    stored = {(r["item"], r["output"], r["dimension"]): r["score"] for r in store.ratings()}
    assert stored == want and len(stored) == 3 * 2 * 3
    assert store.progress("ann")[1] is not None  # finished
    assert store.comments("ann") == {study.items[1]["id"]: "the second audio is louder"}
    keep_screenshot(tmp_path / "listening.png", "listening_test.png")


def test_explain_page_uploads_two_wavs(tmp_path, browser, tiny_checkpoint):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from audiopair.serve.explain_app import create_explain_app
    from test_explain_page import wav

    a, b = wav(tmp_path / "dog.wav", 1.0, 300.0), wav(tmp_path / "siren.wav", 2.0, 1500.0)
    cfg = tiny_config(tmp_path / "unused", "evaluate.decoding.max_new_tokens=12")
    base, server, thread = serve(create_explain_app({"adiff-tiny": tiny_checkpoint}, cfg))
    d = browser
    try:
        d.get(base + "/")
        d.find_element(By.ID, "audio1").send_keys(str(a))
        d.find_element(By.ID, "audio2").send_keys(str(b))
        Select(d.find_element(By.ID, "prompt-choice")).select_by_index(2)  # tier 3
        d.find_element(By.ID, "go").click()
        img = wait_for(d, lambda drv: drv.find_element(By.ID, "figure") if drv.find_element(
            By.ID, "figure").is_displayed() else False, timeout=120)
        assert d.find_element(By.ID, "error").text == ""
        assert d.execute_script("return arguments[0].naturalWidth", img) > 500
        assert d.find_element(By.ID, "explanation").text.strip()
        d.save_screenshot(str(tmp_path / "explain.png"))
        # a broken upload: the build's reason, naming the file
        bad = tmp_path / "broken.wav"
        bad.write_bytes(b"not audio" * 50)
        d.find_element(By.ID, "audio1").send_keys(str(bad))
        d.find_element(By.ID, "go").click()
        wait_for(d, lambda drv: drv.find_element(By.ID, "error").text.startswith(
            "audio1: broken.wav: unreadable audio"))
        # recording: the page turns the microphone's WebM into a WAV upload
        for rec in ("rec1", "rec2"):
            d.find_element(By.ID, rec).click()
            wait_for(d, lambda drv: drv.find_element(By.ID, rec).text == "Stop")
            time.sleep(1.0)  # a second of the fake microphone's beeps
            d.find_element(By.ID, rec).click()
            wait_for(d, lambda drv: drv.find_element(By.ID, rec).get_attribute("data-done") == "1")
        names = d.execute_script("return [audio1.files[0].name, audio2.files[0].name, audio1.files[0].size]")
        assert names[:2] == ["audio1-recording.wav", "audio2-recording.wav"] and names[2] > 20_000
        d.find_element(By.ID, "go").click()
        wait_for(d, lambda drv: drv.find_element(By.ID, "figure").is_displayed() and not drv.find_element(
            By.ID, "busy").text, timeout=120)
        assert d.find_element(By.ID, "error").text == ""
    finally:
        server.should_exit = True
        thread.join(30)
    keep_screenshot(tmp_path / "explain.png", "explain.png")
