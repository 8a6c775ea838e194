"""A screenshot of the playground for the README: serve a run or bundle on a loopback port, ask it a sentence
and a pair in headless Chromium (Debian's chromium + chromium-driver), save the page as a PNG.

    .venv/bin/python benchmarks/playground_screenshot.py runs/demo benchmarks/results/playground.png
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import manytask as mt  # noqa: E402
from manytask.serving.protocol import protocol_with  # noqa: E402

FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="a run or bundle directory")
    p.add_argument("out", help="PNG to write")
    p.add_argument("--text", default="A gem of a film, warm and funny.")
    p.add_argument("--pair", nargs=2, default=["A man is playing a guitar.", "Someone plays an instrument."])
    p.add_argument("--size", default="1280,1000")
    args = p.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(mt.app(args.source), host="127.0.0.1", port=port, log_level="warning",
                                           http=protocol_with(10.0), limit_concurrency=None))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in FLAGS + [f"--window-size={args.size}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#tasks tbody tr"))
        for text, pair in ((args.text, ""), (args.pair[0], args.pair[1])):  # the page keeps the last answers
            driver.execute_script("document.getElementById('answers').dataset.done = ''")
            driver.find_element(By.ID, "text").clear()
            driver.find_element(By.ID, "text").send_keys(text)
            driver.find_element(By.ID, "pair").clear()
            if pair:
                driver.find_element(By.ID, "pair").send_keys(pair)
            driver.find_element(By.ID, "ask").click()
            WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "answers").get_attribute("data-done") == "1")
        driver.execute_script("loadStats()")
        time.sleep(0.5)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(args.out)
        print(f"wrote {args.out}")
    finally:
        driver.quit()
        server.should_exit = True


if __name__ == "__main__":
    main()
