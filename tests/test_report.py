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
    m = re.search(r'<script type="application/json" id="bimt-data">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


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
    from bimt.models.drawing import drawing_of

    rep = report(animated_run)
    data = rep.data
    blob = base64.b64decode(data["blob"])
    final = data["frames"][-1]
    off = sum(n * (ib + 1) for f in data["frames"][:-1] for n, _, ib in f["blocks"])
    drawing = drawing_of(load_model(animated_run)[0].bimt)
    for (n, scale, ib), W in zip(final["blocks"], [e.W for e in drawing.edges]):
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
            pytest.fail("BIMT_REQUIRE_BROWSER is set but chromium or chromedriver is missing: "
                        "apt-get install chromium chromium-driver")
        pytest.skip("the browser test needs Debian's chromium and chromium-driver: "
                    "apt-get install chromium chromium-driver (.ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000"):
        opts.add_argument(arg)
    opts.binary_location = binary
    # the performance log lists every request the page makes (Network.requestWillBeSent)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    d = webdriver.Chrome(service=Service(chromedriver), options=opts)
    # dialogs are recorded, not shown, in every page and frame this driver opens
    d.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": (
        "window.__dialogs = [];"
        "for (const f of ['alert', 'confirm', 'prompt'])"
        "  window[f] = (m) => { window.__dialogs.push(f + ':' + m); };")})
    yield d
    d.quit()


@pytest.mark.browser
def test_report_in_headless_chromium(animated_run, driver, tmp_path):
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
    _hover(driver, canvas, driver.execute_script("return bimtReport.findNode('layer3', 0)"))
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
    assert data["kind"] == "2d" and len(data["frames"]) == 1 and len(data["streams"]) == 4
    assert [r["name"] for r in data["rows"]] == [
        "input", "Embed", "Atn0", "Res1", "MLP0", "Res2", "Atn1", "Res3", "MLP1", "Res4", "output"]
    assert data["rows"][2]["fold"] == 3  # Q, K and V share their slots
    assert data["modules"] and data["knockout"] is None  # no evaluator given
    g = bimt.BioMLP([16, 9, 4], layout="grid")
    rep = viz.report(g, evaluate=lambda m: float(m(torch.ones(1, 16)).abs().sum()))
    assert rep.data["kind"] == "3d" and len(rep.data["rows"][0]["xy"]) == 16
    assert rep.data["knockout"]["metric"] == "test loss"


# -- run data is untrusted: hostile strings in every field a run carries ---------------------------
HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "</script>", "<!--",
           "<!--<script>", "]]>", "\u2028", "\u2029"]
MEGA_LABEL = "<b>" + "x" * 1_000_000  # a 1 MB label


@pytest.fixture(scope="module")
def trap():
    """An HTTP server on 127.0.0.1 that records every request; hostile markup points at it."""
    import http.server
    import threading

    hits = []

    class Record(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Record)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    strings = HOSTILE + [f'"><img src={url}/img onerror=alert(2)>', f"<script src={url}/js></script>"]
    yield dict(url=url, hits=hits, strings=strings)
    server.shutdown()


@pytest.fixture(scope="module")
def hostile_runs(tmp_path_factory, trap):
    """Two runs whose every string is hostile: an attached module (bimt.fit; group and module
    names, labels with a 1 MB one) and a registered task (its name, its data's labels, an
    animated run in a hostile directory name); then metrics.json, the checkpoint's history and
    config, and history.csv edited to carry hostile keys and values.
    Returns ``[(run_dir, expected)]``."""
    import csv
    import dataclasses

    import numpy as np
    import torch
    from torch import nn

    import bimt
    from bimt import Group, PermutationSpec
    from bimt.training.runs import load_checkpoint
    from bimt.tasks import TASKS

    strings = trap["strings"]
    every = "".join(strings)
    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    n_in, n_out = len(strings) + 1, len(strings)

    # 1. a module of your own, attached with hostile group names and labels
    torch_name = "".join(HOSTILE)  # torch refuses "." in a module name, so no URL here
    first, second = torch_name + "a", torch_name + "b"

    class Hostile(nn.Module):
        def __init__(self):
            super().__init__()
            self.add_module(first, nn.Linear(n_in, 6))
            self.add_module(second, nn.Linear(6, n_out))

        def forward(self, x):
            return getattr(self, second)(torch.tanh(getattr(self, first)(x)))

    g_in, g_hid, g_out = "in" + every, "hidden" + every, "out" + every
    groups = [Group(g_in, bimt.core.geometry.line(n_in), frozen=True), Group(g_hid, bimt.core.geometry.line(6)),
              Group(g_out, bimt.core.geometry.line(n_out), frozen=True)]
    axes = {f"{first}.weight": (g_hid, g_in), f"{first}.bias": (g_hid,),
            f"{second}.weight": (g_out, g_hid), f"{second}.bias": (g_out,)}
    charges = {k: k.rsplit(".", 1)[1] for k in axes}
    model = Hostile()
    bimt.attach(model, PermutationSpec(groups, axes, charges), A=1.0, y_star=0.2,
                input_labels=strings + [MEGA_LABEL], output_labels=strings)
    X, Y = torch.rand(100, n_in), torch.rand(100, n_out)
    run_a = root / "module"
    # plots=False: the 1 MB label would make graph.png 11 million pixels tall (matplotlib refuses)
    bimt.fit(model=model, data=(X[:80], Y[:80], X[80:], Y[80:]), loss="mse", steps=20,
             out=str(run_a), progress=False, plots=False)

    # 2. a registered task with a hostile name and hostile data labels, animated
    rng = np.random.default_rng(0)
    task = bimt.task_from_arrays("task" + every, rng.uniform(-1, 1, (200, len(strings))).astype("float32"),
                                 rng.integers(0, len(strings), 200), hidden=(8,),
                                 input_labels=strings, output_labels=strings)
    bimt.register_task(task, replace=True)
    run_b = root / ("run" + "".join(s for s in strings if "/" not in s))  # no "/" in a file name
    bimt.fit(task=task.name, steps=20, eval_every=5, animate=True, animate_frames=4,
             out=str(run_b), progress=False)

    # 3. edited files: metrics.json (both runs), history in the checkpoint (b) or history.csv (a),
    # the task's name in the checkpoint's config (b; a task of that name is known in-process)
    edited = dataclasses.replace(task, name=task.name + "<!--edited")
    bimt.register_task(edited, replace=True)
    expected = []
    for run, name in ((run_a, "module"), (run_b, edited.name)):
        metrics = json.loads((run / "metrics.json").read_text())
        metrics.update({s: s for s in strings})
        metrics["test_loss"] = every
        metrics["nested" + every] = {every: [every]}
        (run / "metrics.json").write_text(json.dumps(metrics))
        state = load_checkpoint(run / "checkpoint.pt")
        history = [{"step": r["step"], **{s: float(i) for i, s in enumerate(strings)}}
                   for r in state["history"]]
        if run is run_a:
            state["history"] = []  # so the view reads history.csv
            with (run / "history.csv").open("w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(history[0]))
                w.writeheader()
                w.writerows(history)
        else:
            state["history"] = history
            state["config"]["task"] = edited.name  # and config.json too, as an editor would
            (run / "config.json").write_text(json.dumps(state["config"]))
        torch.save(state, run / "checkpoint.pt")
        what = f"{name} [bimt, seed 0]"  # the directory's name only when it adds something
        expected.append((run, dict(title=what if name in run.name else f"{run.name}: {what}", metrics=metrics,
                                   groups=[g_in, g_hid, g_out] if run is run_a else None,
                                   history=list(history[0]))))
    yield expected
    TASKS.pop(task.name, None)
    TASKS.pop(edited.name, None)


def _requests(driver) -> list[str]:
    """URLs the page loaded or tried to since the performance log was last read, less those the
    browser blocked before sending (a ``loadingFailed`` with a ``blockedReason``, e.g. "csp")."""
    urls, blocked = {}, set()
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls[msg["params"]["requestId"]] = msg["params"]["request"]["url"]
        elif msg["method"] == "Network.loadingFailed" and msg["params"].get("blockedReason"):
            blocked.add(msg["params"]["requestId"])
    return [u for r, u in urls.items() if r not in blocked]


def _hover(driver, canvas, j):
    from selenium.webdriver.common.action_chains import ActionChains

    x, y = driver.execute_script("return bimtReport.nodeScreen(arguments[0])", j)
    rect = driver.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.left, r.top, r.width, r.height]", canvas)
    ActionChains(driver).move_to_element_with_offset(
        canvas, int(round(x - rect[0] - rect[2] / 2)), int(round(y - rect[1] - rect[3] / 2))).perform()


def _assert_nothing_ran_or_left(driver, trap, allowed=()):
    import time

    from selenium.common.exceptions import NoAlertPresentException

    time.sleep(0.3)  # give an injected <img> time to load
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018 (raises when no dialog is open)
    assert driver.execute_script("return window.__dialogs") == []
    assert trap["hits"] == []
    assert [u for u in _requests(driver) if u not in allowed and not u.startswith("data:")] == []


@pytest.mark.browser
def test_hostile_run_strings_stay_text_in_chromium(hostile_runs, driver, trap):
    from selenium.webdriver.common.by import By

    for run, want in hostile_runs:
        assert main(["view", str(run)]) == 0
        page = run / "report.html"
        driver.get_log("performance"), driver.get_log("browser")  # start both logs afresh
        uri = page.resolve().as_uri()
        driver.get(uri)
        _assert_nothing_ran_or_left(driver, trap, allowed=(uri,))
        assert [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []

        # the page works: graph drawn, title and metrics shown as the literal strings
        assert driver.execute_script("return bimtReport.draws") >= 1
        painted = driver.execute_script(
            "const c = document.getElementById('graph'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n;")
        assert painted > 1000
        assert driver.execute_script("return [document.title, document.getElementById('title').textContent]") \
            == [want["title"]] * 2
        shown = driver.execute_script(
            "return [...document.querySelectorAll('#metrics tr')].map((r) => [...r.cells].map((c) => c.textContent))")
        assert [k for k, _ in shown] == list(want["metrics"])
        assert all(v == want["metrics"][k] for k, v in shown if isinstance(want["metrics"][k], str))
        assert driver.execute_script("return document.querySelectorAll('#metrics *:not(tr):not(td)').length") == 0
        assert driver.execute_script("return document.getElementById('metricsline').textContent") \
            .startswith("test loss " + want["metrics"]["test_loss"])
        if want["groups"]:  # a module's row tooltip lists its groups by name
            titles = driver.execute_script("return [...document.querySelectorAll('tr.module')].map((r) => r.title)")
            assert titles and all(any(g in t for g in want["groups"]) for t in titles)

        data = _data(page.read_text())
        assert list(data["history"]) == want["history"]  # hostile column names arrive as data

        # every input and output neuron's tooltip shows its label literally
        canvas = driver.find_element(By.ID, "graph")
        labels = data["frames"][-1]["labels"]
        assert sorted(labels["0"]) == sorted(trap["strings"] + ([MEGA_LABEL] if want["groups"] else []))
        top = str(len(data["rows"]) - 1)
        assert sorted(labels[top]) == sorted(trap["strings"]) and set(labels) == {"0", top}
        for row, s, label in [(int(r), s, t) for r in ("0", top) for s, t in enumerate(labels[r])]:
            _hover(driver, canvas, driver.execute_script("return bimtReport.findNode(arguments[0], arguments[1])",
                                                         data["rows"][row]["group"], s))
            assert driver.execute_script(
                "const t = document.getElementById('tooltip');"
                "return [t.style.display, [...t.querySelectorAll('b')].some((b) =>"
                "          b.textContent === arguments[0] && b.previousSibling.textContent === 'label: '),"
                "        [...t.querySelectorAll('*')].every((e) => e.tagName === 'B' || e.tagName === 'BR')]",
                label) == ["block", True, True]
        _assert_nothing_ran_or_left(driver, trap, allowed=(uri,))
        assert [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []


@pytest.mark.browser
def test_policy_blocks_markup_that_gets_into_the_page(animated_run, driver, trap, tmp_path):
    """The second line: markup pasted into the page can neither run nor fetch, and the page's
    own script (allowed by its hash) still draws."""
    assert main(["view", str(animated_run)]) == 0
    url = trap["url"]
    pasted = (f'<img src="{url}/img" onerror="alert(3)"><script>alert(4)</script>'
              f'<script src="{url}/js"></script><link rel="stylesheet" href="{url}/css">'
              f'<iframe src="{url}/frame"></iframe><div style="background:url({url}/bg)">x</div>'
              f'<form action="{url}/form"><input type="image" src="{url}/input"></form>')
    page = tmp_path / "pasted.html"
    page.write_text((animated_run / "report.html").read_text().replace("</body>", pasted + "</body>"))
    driver.get_log("performance"), driver.get_log("browser")
    driver.get(page.as_uri())
    assert driver.execute_script("return bimtReport.draws") >= 1
    blocked = driver.execute_script(f"return fetch('{url}/fetch').then(() => 'fetched', () => 'blocked')")
    assert blocked == "blocked"
    _assert_nothing_ran_or_left(driver, trap, allowed=(page.as_uri(),))
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors and all("Content Security Policy" in m for m in errors)


@pytest.mark.browser
def test_hostile_report_in_a_jupyter_iframe(hostile_runs, driver, trap, tmp_path):
    """``_repr_html_``: the page in a sandboxed srcdoc iframe keeps its policy and still works."""
    from selenium.webdriver.common.by import By

    run, want = hostile_runs[1]
    if not (run / "report.html").exists():
        assert main(["view", str(run)]) == 0
    host = tmp_path / "notebook.html"
    host.write_text("<!DOCTYPE html><html><body>" + Report((run / "report.html").read_text(), {})._repr_html_()
                    + "</body></html>")
    driver.get_log("performance"), driver.get_log("browser")
    driver.get(host.as_uri())
    driver.switch_to.frame(driver.find_element(By.TAG_NAME, "iframe"))
    try:
        assert driver.execute_script("return bimtReport.draws") >= 1
        assert driver.execute_script("return document.getElementById('title').textContent") == want["title"]
        # the sandbox blocks dialogs (and CDP's recorder does not reach an opaque-origin frame),
        # so check that no hostile string became an element: only the page's own two scripts
        assert driver.execute_script(
            "return [document.scripts.length, document.querySelectorAll('img, iframe, object, embed').length]") == [2, 0]
        assert driver.execute_script(
            "return document.querySelector('meta[http-equiv=Content-Security-Policy]').content").startswith("default-src 'none'")
    finally:
        driver.switch_to.default_content()
    _assert_nothing_ran_or_left(driver, trap, allowed=(host.as_uri(), "about:srcdoc"))
    assert [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []


# -- the same guarantees as text, without a browser ---------------------------------------------------
def test_page_keeps_run_strings_out_of_markup():
    import hashlib
    import html

    import torch

    import bimt
    from bimt import viz

    torch.manual_seed(0)
    every = "".join(HOSTILE)
    model = bimt.BioMLP([len(HOSTILE), 3, 2])
    model.input_labels = HOSTILE
    model.output_labels = [every, "\u2028]]>"]
    title = every + " /*BIMT_DATA*/ /*BIMT_CSP*/ /*BIMT_TITLE*/"  # placeholders are filled once
    rep = viz.report(model, history=[{"step": 0, every: 1.0}, {"step": 1, every: 0.5}],
                     metrics={every: every, "test_loss": every}, title=title)
    page = rep.html

    data = re.search(r'<script type="application/json" id="bimt-data">(.*?)</script>', page, re.S).group(1)
    assert not set(data) & set("<>&\u2028\u2029")
    assert "\\u003c/script\\u003e" in data and "\\u003c!--" in data and "\\u2028" in data
    assert json.loads(data) == rep.data and rep.data["frames"][0]["labels"]["0"] == HOSTILE
    assert page.count("<script") == 2 and page.count("</script>") == 2 and "<!--" not in page
    assert re.search("<title>(.*?)</title>", page, re.S).group(1) == html.escape(title)

    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', page).group(1)
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))

    def sha256(tag):
        text = re.search(f"<{tag}>(.*?)</{tag}>", page, re.S).group(1)
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    assert directives == {"default-src": "'none'", "script-src": sha256("script"), "style-src": sha256("style"),
                          "img-src": "data:", "connect-src": "'none'", "base-uri": "'none'",
                          "form-action": "'none'"}
    assert page.index("Content-Security-Policy") < page.index("<style>") < page.index("<script")


def test_template_turns_no_string_into_markup():
    """The page's script has no way to parse a string as HTML or code."""
    from bimt.viz.report import _template

    page = _template()
    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "createContextualFragment",
                 "DOMParser", "srcdoc", "setAttribute", "eval(", "Function(", "setTimeout(\"", "setInterval(\""):
        assert sink not in script, sink
    assert " style=" not in page.split("<body>", 1)[1]  # inline style attributes would need 'unsafe-inline'
