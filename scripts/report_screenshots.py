"""Screenshots of `bimt view` reports in headless Chromium (docs/report/*.png).

    python scripts/report_screenshots.py OUT_DIR RUN_DIR [RUN_DIR ...]

Needs chromium + chromium-driver (Debian) and selenium (the test extra).
"""

import sys
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from bimt.training.view import write_report

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
opts = webdriver.ChromeOptions()
for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
            "--window-size=1280,1000", "--hide-scrollbars"):
    opts.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
try:
    for run in map(Path, sys.argv[2:]):
        page = write_report(run)
        driver.get(page.resolve().as_uri())
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1280, min(height + 40, 1400))
        driver.save_screenshot(str(out / f"{run.name}.png"))
        print(f"{run.name}: {page.stat().st_size / 1e6:.2f} MB report, {out / run.name}.png")
finally:
    driver.quit()
