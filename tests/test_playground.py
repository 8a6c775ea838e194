"""The playground page at ``/``, driven in a real headless Chromium (Debian's chromium and chromium-driver,
through Selenium): the tasks listed as the API lists them, a sentence and a pair asked, the answers shown equal
to ``/v1/predict``'s, the server's own error text shown for bad input and for a task gone from the bundle."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from manytask.api import train
from manytask.bundles import Bundle
from manytask.serving.app import create_app
from manytask.serving.predictor import MergedPredictor
from tests.conftest import TINY, write_mini_glue
from tests.test_serving_faults import LiveServer
from tests.test_tagging import conll_task

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
if not (CHROMIUM and DRIVER):
    pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver; "
                ".ci/run does it)", allow_module_level=True)

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

TOKEN = "an-admin-token-of-32-characters!"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A bundle of every kind the page draws (classes, a score, tags) served by a live server."""
    base = tmp_path_factory.mktemp("playground")
    glue = write_mini_glue(base / "glue")
    cfg = {"seed": 1, "glue_dir": str(glue), "tasks": ["sst2", "mrpc", "stsb", conll_task(base)], "model": dict(TINY),
           "train": {"batch_size": 8, "steps": 4, "progress": False, "eval_every": None}}
    bundle = train(cfg, out=base / "run").to_bundle(base / "bundle")
    with LiveServer(create_app(MergedPredictor(Bundle(bundle.root)), admin_token=TOKEN)) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _ask(browser, text: str, pair: str = "") -> None:
    browser.execute_script("document.getElementById('answers').dataset.done = '';"
                           "document.getElementById('error').hidden = true;")
    for field, value in (("text", text), ("pair", pair)):
        box = browser.find_element(By.ID, field)
        box.clear()
        if value:
            box.send_keys(value)
    browser.find_element(By.ID, "ask").click()
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "answers").get_attribute("data-done") == "1"
                                     or d.find_element(By.ID, "error").is_displayed())


def _shown(browser) -> dict:
    """Each answer card as the page holds it: the label and bars, the score, or the tags."""
    out = {}
    for card in browser.find_elements(By.CSS_SELECTOR, "#answers .answer"):
        task, shown = card.get_attribute("data-task"), {}
        if card.get_attribute("data-tags"):
            shown["tags"] = json.loads(card.get_attribute("data-tags"))
            shown["tokens"] = [w.text.split("\n")[0].removesuffix(w.find_elements(By.TAG_NAME, "sub")[0].text)
                               if w.find_elements(By.TAG_NAME, "sub") else w.text
                               for w in card.find_elements(By.CSS_SELECTOR, ".word")]
            shown["highlighted"] = len(card.find_elements(By.CSS_SELECTOR, ".word.tagged"))
        elif card.get_attribute("data-score"):
            shown["score"] = float(card.get_attribute("data-score"))
            shown["text"] = card.find_element(By.CSS_SELECTOR, ".score").text
        else:
            shown["label"] = json.loads(card.get_attribute("data-label"))
            shown["probs"] = {b.get_attribute("data-label"): float(b.get_attribute("data-prob"))
                              for b in card.find_elements(By.CSS_SELECTOR, ".bar")}
            shown["text"] = card.find_element(By.CSS_SELECTOR, ".chosen").text
        out[task] = shown
    return out


def test_the_playground_shows_what_the_api_answers(served, browser, tmp_path):
    api = httpx.Client(base_url=served.url, timeout=30)
    browser.get(served.url + "/")
    listed = api.get("/v1/tasks").json()["tasks"]
    WebDriverWait(browser, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#tasks tbody tr")) == len(listed))
    rows = browser.find_elements(By.CSS_SELECTOR, "#tasks tbody tr")
    assert [r.get_attribute("data-task") for r in rows] == [t["name"] for t in listed]
    assert [r.find_elements(By.TAG_NAME, "td")[2].text for r in rows] == [t["kind"] for t in listed]

    sentence = "bob smith saw a gem of a film in rome"
    _ask(browser, sentence)
    want = api.post("/v1/predict", json={"inputs": [{"text": sentence}]}).json()
    shown = _shown(browser)
    assert set(shown) == set(want["tasks"]) == {"sst2", "ner"}
    sst2 = want["results"][0]["sst2"]
    assert shown["sst2"]["label"] == sst2["label"] and shown["sst2"]["text"] == sst2["label"]
    assert shown["sst2"]["probs"] == pytest.approx(sst2["probs"], abs=1e-12)
    ner = want["results"][0]["ner"]
    assert shown["ner"]["tags"] == ner["tags"] and shown["ner"]["tokens"] == sentence.split()
    assert shown["ner"]["highlighted"] == sum(t not in (None, "O") for t in ner["tags"])

    _ask(browser, "A man is playing a guitar.", "Someone plays an instrument.")
    want = api.post("/v1/predict", json={"inputs": [{"text": "A man is playing a guitar.",
                                                      "text_pair": "Someone plays an instrument."}]}).json()
    shown = _shown(browser)
    assert set(shown) == {"mrpc", "stsb"}
    assert shown["stsb"]["score"] == pytest.approx(want["results"][0]["stsb"]["score"], abs=1e-12)
    assert shown["stsb"]["text"] == f"{want['results'][0]['stsb']['score']:.3f}"
    assert shown["mrpc"]["label"] == want["results"][0]["mrpc"]["label"]

    _ask(browser, "   ")  # bad input: the server's own 422 text
    error = api.post("/v1/predict", json={"inputs": [{"text": "   "}]}).json()["error"]
    assert browser.find_element(By.ID, "error").is_displayed()
    assert browser.find_element(By.ID, "error").text == error and "text is empty" in error

    browser.find_element(By.CSS_SELECTOR, "tr[data-task=sst2] input.choose").click()  # ask sst2 alone ...
    assert api.delete("/v1/tasks/sst2", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    _ask(browser, "A gem of a film.")  # ... after it left the bundle: the server's 404 text
    assert browser.find_element(By.ID, "error").text == "unknown task(s): sst2 (serving: mrpc, ner, stsb)"
    assert not browser.find_elements(By.CSS_SELECTOR, "#answers .answer")
    WebDriverWait(browser, 10).until(  # and the task list is read again: sst2 is gone from it
        lambda d: [r.get_attribute("data-task") for r in d.find_elements(By.CSS_SELECTOR, "#tasks tbody tr")]
        == ["mrpc", "ner", "stsb"])

    browser.execute_script("loadStats()")
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "requests").text.isdigit())
    assert browser.find_element(By.ID, "precision").text == "fp32"
    assert browser.find_element(By.ID, "ready").text == "yes"
    assert int(browser.find_element(By.ID, "requests").text) >= 7
    browser.save_screenshot(str(tmp_path / "playground.png"))
    assert (tmp_path / "playground.png").stat().st_size > 10_000
