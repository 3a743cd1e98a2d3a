"""``bimt view``: the self-contained interactive report, checked as data and in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil

import pytest

from bimt.cli import main
from bimt.training.view import report
from bimt.viz.report import Report


@pytest.fixture(scope="module")
def animated_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "moons"
    assert main(["train", "two-moons", "--steps", "80", "--animate", "--eval-every", "10",
                 "--swap-every", "10", "--out", str(out), "--quiet"]) == 0
    return out


def _data(html: str) -> dict:
    m = re.search(r"const DATA = (\{.*?\});\n", html, re.S)
    return json.loads(m.group(1).replace("<\\/", "</"))


def test_view_writes_one_self_contained_page(animated_run, capsys):
    assert main(["view", str(animated_run)]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (animated_run / "report.html").read_text()
    # nothing to fetch: no external script, style, image or font
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script src" not in page and "@import" not in page
    data = _data(page)
    assert data["kind"] == "2d" and data["snapshots_stored"]
    assert len(data["frames"]) == 41  # the snapshots --animate stores (40 frames + step 0)
    assert [f["step"] for f in data["frames"]][-1] == 80
    assert data["history"]["step"][-1] == 80 and "test_loss" in data["history"]
    assert data["metrics"]["task"] == "two-moons"
    # the blob holds exactly what the frames announce
    blob = base64.b64decode(data["blob"])
    assert len(blob) == sum(n * (ib + 1) for f in data["frames"] for n, _, ib in f["blocks"])
    # knock-outs were computed with the analysis code, one value per module
    if data["modules"]:
        assert set(data["knockout"]["values"]) == {m["name"] for m in data["modules"]}
        assert data["knockout"]["metric"] == "test accuracy"


def test_weights_round_trip_through_quantisation(animated_run):
    import numpy as np

    from bimt.training.runs import load_model
    from bimt.viz.graph import layered_view

    rep = report(animated_run)
    data = rep.data
    blob = base64.b64decode(data["blob"])
    final = data["frames"][-1]
    off = sum(n * (ib + 1) for f in data["frames"][:-1] for n, _, ib in f["blocks"])
    view = layered_view(load_model(animated_run)[0])
    for (n, scale, ib), W in zip(final["blocks"], view.weights):
        idx = np.frombuffer(blob[off:off + ib * n], "<u2" if ib == 2 else "<u4")
        off += ib * n
        q = np.frombuffer(blob[off:off + n], np.int8)
        off += n
        assert scale == pytest.approx(np.abs(W).max())
        assert np.allclose(q / 127 * scale, W.reshape(-1)[idx], atol=scale / 254 + 1e-12)
        shown = np.zeros(W.size, bool)
        shown[idx] = True  # every weight left out is too thin to see
        assert np.all(np.abs(W.reshape(-1)[~shown]) < 2.5 / 127 * scale)


def test_run_without_snapshots_shows_the_final_state(tmp_path):
    out = tmp_path / "r"
    assert main(["train", "symbolic-independence", "--steps", "5", "--out", str(out), "--quiet"]) == 0
    rep = report(out)
    assert len(rep.data["frames"]) == 1 and not rep.data["snapshots_stored"]
    assert "final state only" in rep.html


def test_repr_html_for_jupyter(animated_run):
    rep = report(animated_run)
    assert isinstance(rep, Report)
    frame = rep._repr_html_()
    assert frame.startswith("<iframe srcdoc=") and "&lt;canvas" in frame


def test_view_of_a_missing_run(tmp_path, capsys):
    assert main(["view", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err == f"bimt view: error: run directory {tmp_path / 'nope'} does not exist\n"


def test_view_open_calls_the_browser(animated_run, monkeypatch, capsys):
    import webbrowser

    opened = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    assert main(["view", str(animated_run), "--open"]) == 0
    assert opened == [(animated_run / "report.html").resolve().as_uri()]


# -- in a real browser ---------------------------------------------------------------------------
def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path, shutil.which("chromedriver")
    return None, None


@pytest.fixture(scope="module")
def driver():
    binary, chromedriver = _browser()
    if binary is None or chromedriver is None:
        if os.environ.get("BIMT_REQUIRE_BROWSER"):
            pytest.fail("BIMT_REQUIRE_BROWSER is set but no chromium + chromedriver was found")
        pytest.skip("no Chromium browser (chromium + chromedriver) on this machine; "
                    "apt-get install chromium chromium-driver, as .ci/run does")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000"):
        opts.add_argument(arg)
    opts.binary_location = binary
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(chromedriver), options=opts)
    yield d
    d.quit()


@pytest.mark.browser
def test_report_in_headless_chromium(animated_run, driver, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    assert main(["view", str(animated_run)]) == 0
    driver.get((animated_run / "report.html").resolve().as_uri())
    hooks = driver.execute_script("return window.bimtReport && [bimtReport.nodeCount, bimtReport.frameCount]")
    assert hooks == [2 + 20 + 20 + 2, 41]
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []

    # hover an output neuron: the tooltip names it and its label
    canvas = driver.find_element(By.ID, "graph")
    j = driver.execute_script("return bimtReport.findNode('layer3', 0)")
    x, y = driver.execute_script(f"return bimtReport.nodeScreen({j})")
    rect = driver.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.left, r.top, r.width, r.height]", canvas)
    ActionChains(driver).move_to_element_with_offset(
        canvas, int(round(x - rect[0] - rect[2] / 2)), int(round(y - rect[1] - rect[3] / 2))).perform()
    tip = driver.find_element(By.ID, "tooltip")
    assert tip.is_displayed()
    assert "neuron layer3[0]" in tip.text and "label:" in tip.text and "importance" in tip.text

    # move the slider to the first snapshot: the step label and the picture change
    before = driver.execute_script("return arguments[0].toDataURL()", canvas)
    slider = driver.find_element(By.ID, "snapshot")
    slider.send_keys(Keys.HOME)
    assert driver.find_element(By.ID, "steplabel").text.startswith("step 0 ")
    after = driver.execute_script("return arguments[0].toDataURL()", canvas)
    assert after != before
    slider.send_keys(Keys.END)
    assert driver.execute_script("return arguments[0].toDataURL()", canvas) == before

    shot = tmp_path / "report.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    assert [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []


def test_report_of_models_in_memory():
    """The transformer rows (every block) and the 3D grid layout, from models without a run."""
    import torch

    import bimt
    from bimt import viz

    torch.manual_seed(0)
    t = bimt.BioTransformer(2, 2, d_model=8, n_blocks=2)
    data = viz.report(t).data
    assert data["kind"] == "transformer" and len(data["frames"]) == 1
    assert [r["name"] for r in data["rows"]] == [
        "input", "Embed", "Atn0", "Res1", "MLP0", "Res2", "Atn1", "Res3", "MLP1", "Res4", "output"]
    assert data["rows"][2]["fold"] == 3  # Q, K and V share their slots
    assert data["modules"] and data["knockout"] is None  # no evaluator given
    g = bimt.BioMLP([16, 9, 4], layout="grid")
    rep = viz.report(g, evaluate=lambda m: float(m(torch.ones(1, 16)).abs().sum()))
    assert rep.data["kind"] == "3d" and len(rep.data["rows"][0]["xy"]) == 16
    assert rep.data["knockout"]["metric"] == "test loss"
