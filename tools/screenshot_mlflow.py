#!/usr/bin/env python
"""Take screenshots of the MLflow UI showing our runs, for docs/notebooks.md.

Starts ``mlflow ui`` on a free loopback port against a SQLite tracking store, drives
headless Chromium over the DevTools protocol (a pipe, no extra packages) at a few pages
of the UI, and saves PNGs:

* ``mlflow_runs.png``     the experiment's runs compared in the chart view (test NDCG@K);
* ``mlflow_metrics.png``  the run with the longest training history: its validation curves;
* ``mlflow_artifact.png`` the ALS run's plot artifact (``plots/popularity.png``) in the artifact viewer.

Usage::

    # screenshots of an existing store (e.g. the one `make run` writes in the repo root)
    .venv/bin/python tools/screenshot_mlflow.py --tracking-uri sqlite:///mlruns.db --out docs/images

    # make fresh runs first: `recsys run --config configs/default.toml` on the embedded
    # MovieLens latest-small into a temporary directory and store (--fast: TF-IDF encoder)
    .venv/bin/python tools/screenshot_mlflow.py --make-runs --out docs/images

Needs the ``chromium`` binary (Debian/Ubuntu: ``apt-get install chromium``); the script
installs nothing and exits with status 2 and that hint when it is missing. Not part of
the test run. Exit status: 0 ok, 1 the UI did not come up or a screenshot failed, 2 bad
arguments or no Chromium.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FAST = ["--set", 'content.encoder="tfidf"', "--set", "models.als.factors=64", "--set", "models.bpr.iterations=50",
        "--set", "index.n_queries=300"]


def find_chromium(explicit: str | None) -> str | None:
    """The Chromium binary: ``--chromium``, else the first of :data:`CHROMIUM_NAMES` on PATH."""
    if explicit:
        return explicit if Path(explicit).is_file() or shutil.which(explicit) else None
    return next((p for n in CHROMIUM_NAMES if (p := shutil.which(n))), None)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mlflow_ui(tracking_uri: str, host: str, port: int, log_file: Path, timeout_s: float = 180.0) -> Iterator[str]:
    """Run ``mlflow ui`` in the background; yield its base URL once it answers, stop it after."""
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "ui", "--backend-store-uri", tracking_uri,
           "--host", host, "--port", str(port), "--workers", "1",
           "--allowed-hosts", f"{host}:{port}", "--cors-allowed-origins", f"http://{host}:{port}"]
    with log_file.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow ui exited with {proc.returncode}; see {log_file}:\n{log_file.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow ui did not answer on {base} within {timeout_s:.0f}s; see {log_file}")
            time.sleep(1.0)
        yield base
    finally:  # the server runs in its own session: stop its whole group (uvicorn workers too)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def api(base: str, endpoint: str, body: dict | None = None) -> dict:
    """Call the tracking server's REST API (GET without body, POST with)."""
    url = f"{base}/api/2.0/mlflow/{endpoint}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (no extra Python packages).

    ``--remote-debugging-pipe`` makes Chromium read JSON commands from fd 3 and write
    replies to fd 4, each message terminated by a NUL byte; that is all the plumbing
    needed to open a page, wait for the MLflow JS app to render, type into its search box
    and capture a PNG.
    """

    def __init__(self, chromium: str, profile: Path, size: tuple[int, int]) -> None:
        cmd_r, self._cmd_w = os.pipe()
        self._res_r, res_w = os.pipe()

        def wire() -> None:  # in the child: its fd 3 reads our commands, fd 4 carries replies
            high = [fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(res_w, fcntl.F_DUPFD, 10)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--disable-dev-shm-usage", "--remote-debugging-pipe", f"--user-data-dir={profile}",
             f"--window-size={size[0]},{size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=wire, close_fds=False)
        os.close(cmd_r)
        os.close(res_w)
        self._buf = b""
        self._id = 0
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False}, self.session)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout_s: float = 60.0) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            while b"\0" not in self._buf:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"no reply from Chromium to {method}")
                ready, _, _ = select.select([self._res_r], [], [], 1.0)
                if ready:
                    chunk = os.read(self._res_r, 1 << 20)
                    if not chunk:
                        raise RuntimeError("Chromium closed the DevTools pipe")
                    self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def js(self, expression: str) -> object:
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, self.session)
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.js(expression):
                return True
            time.sleep(0.5)
        return False

    def open(self, url: str, ready_text: str, timeout_s: float) -> None:
        """Navigate and wait until ``ready_text`` shows on the page (the JS app rendered)."""
        self.call("Page.navigate", {"url": url}, self.session)
        if not self.wait_for(f"document.body && document.body.innerText.includes({json.dumps(ready_text)})", timeout_s):
            raise RuntimeError(f"{url} did not show {ready_text!r} within {timeout_s:.0f}s")

    def type_into(self, placeholder: str, text: str) -> bool:
        """Type into a (React) input found by its placeholder; False when there is none."""
        return bool(self.js(
            "(() => { const i = document.querySelector(" + json.dumps(f'input[placeholder*="{placeholder}"]') + ");"
            " if (!i) return false;"
            " Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(i, " + json.dumps(text) + ");"
            " i.dispatchEvent(new Event('input', {bubbles: true})); return true; })()"))

    def click_text(self, text: str) -> bool:
        """Click the first button-like element whose text is exactly ``text``; False when none."""
        return bool(self.js(
            "(() => { const e = [...document.querySelectorAll('button, [role=radio], [role=tab], label, a')]"
            ".find(x => x.textContent.trim() === " + json.dumps(text) + "); if (!e) return false; e.click(); return true; })()"))

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png"}, self.session)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self.call("Browser.close", timeout_s=5)
        with contextlib.suppress(OSError):
            os.close(self._cmd_w)
            os.close(self._res_r)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def shrink(path: Path, max_bytes: int) -> None:
    """Re-save with an adaptive palette when a PNG is over ``max_bytes`` (Pillow, if present)."""
    if path.stat().st_size <= max_bytes:
        return
    try:
        from PIL import Image
    except ImportError:
        print(f"warning: {path} is {path.stat().st_size} bytes and Pillow is not installed to shrink it", file=sys.stderr)
        return
    with Image.open(path) as im:
        im.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def make_runs(work: Path, fast: bool) -> str:
    """``recsys run`` on the embedded dataset into ``work``; returns its tracking URI."""
    uri = f"sqlite:///{(work / 'mlruns.db').as_posix()}"
    cmd = [sys.executable, "-m", "pipelines.cli", "--log-level", "WARNING", "run", "--config",
           str(ROOT / "configs" / "default.toml"), "--out", str(work / "run"), "--tracking-uri", uri,
           "--no-progress", *(FAST if fast else [])]
    print("making runs:", " ".join(cmd), flush=True)
    res = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if res.returncode != 0:
        raise RuntimeError(f"recsys run exited with {res.returncode}")
    return uri


def pick_runs(base: str, experiment: str | None) -> tuple[str, list[dict]]:
    """The experiment (by name, else the one with most runs) and its top-level finished runs."""
    exps = api(base, "experiments/search", {"max_results": 100}).get("experiments", [])
    if experiment:
        exps = [e for e in exps if e["name"] == experiment]
    best, runs = None, []
    for e in exps:
        found = api(base, "runs/search", {"experiment_ids": [e["experiment_id"]], "max_results": 200,
                                          "filter": "attributes.status = 'FINISHED'"}).get("runs", [])
        top = [r for r in found if not any(t["key"] == "mlflow.parentRunId" for t in r["data"].get("tags", []))]
        if len(top) > len(runs):
            best, runs = e, top
    if best is None:
        raise RuntimeError(f"no finished runs in {'experiment ' + experiment if experiment else 'any experiment'}")
    return best["experiment_id"], runs


def curve_run(runs: list[dict]) -> dict:
    """The run whose metrics have the longest per-step history (training curves), e.g. BPR."""
    def name(r: dict) -> str:
        return next((t["value"] for t in r["data"].get("tags", []) if t["key"] == "mlflow.runName"), "")
    def score(r: dict) -> tuple[int, int]:
        steps = max((int(m.get("step", 0)) for m in r["data"].get("metrics", [])), default=0)
        return (steps, name(r) in ("bpr", "als", "two-tower"))
    return max(runs, key=score)


def default_host() -> str:
    """127.0.0.2 on Linux (any 127/8 address is loopback there): the MLflow UI opens its
    assistant side panel only on ``localhost``/``127.0.0.1``, and it would cover a third of
    every screenshot. Elsewhere 127.0.0.1."""
    return "127.0.0.2" if sys.platform.startswith("linux") else "127.0.0.1"


def take(browser: Browser, base: str, out: Path, exp_id: str, runs: list[dict], wait_s: float, max_bytes: int) -> list[Path]:
    """The three screenshots; returns the files written."""
    names = {r["info"]["run_id"]: next((t["value"] for t in r["data"].get("tags", []) if t["key"] == "mlflow.runName"), "")
             for r in runs}
    first = sorted(names.values())[0]
    curve = curve_run(runs)
    rid, rname = curve["info"]["run_id"], names[curve["info"]["run_id"]]
    plot_run = next((r for r in runs if names[r["info"]["run_id"]] == "als"), curve)["info"]["run_id"]
    arts = api(base, f"artifacts/list?run_id={plot_run}&path=plots").get("files", [])
    prefer = ("popularity.png", "metrics_at_k.png")  # the long-tail plot says the most in one picture
    plot = next((a["path"] for name in prefer for a in arts if a["path"].endswith(name)), arts[0]["path"] if arts else None)
    written = []

    def shot(name: str, url: str, ready: str, search: str | None = None, charts: int = 0) -> None:
        browser.open(url, ready, wait_s)
        if browser.click_text("Model training"):  # the sidebar of classic ML, not GenAI (best effort)
            browser.open(url, ready, wait_s)
        if search and browser.type_into("Search metric", search):
            time.sleep(2.0)
        if charts and not browser.wait_for(f"document.querySelectorAll('.js-plotly-plot').length >= {charts}", wait_s):
            print(f"warning: fewer than {charts} charts rendered on {url}", file=sys.stderr)
        time.sleep(3.0)  # charts animate in
        path = out / name
        browser.screenshot(path)
        shrink(path, max_bytes)
        written.append(path)
        print(f"{path} ({path.stat().st_size // 1024} KB) <- {url}")

    shot("mlflow_runs.png", f"{base}/#/experiments/{exp_id}/runs?compareRunsMode=CHART", first, search="test_ndcg", charts=2)
    shot("mlflow_metrics.png", f"{base}/#/experiments/{exp_id}/runs/{rid}/model-metrics", rname, search="valid_", charts=2)
    if plot:
        shot("mlflow_artifact.png", f"{base}/#/experiments/{exp_id}/runs/{plot_run}/artifacts/{plot}", Path(plot).name)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tracking-uri", help="an existing store, e.g. sqlite:///mlruns.db")
    src.add_argument("--make-runs", action="store_true", help="first run `recsys run` on the embedded dataset into a temp dir")
    p.add_argument("--fast", action="store_true", help="with --make-runs: TF-IDF encoder, smaller models (default: configs/default.toml as is)")
    p.add_argument("--experiment", help="experiment name (default: the one with most runs)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="output folder (default: %(default)s)")
    p.add_argument("--chromium", help="Chromium binary (default: chromium on PATH)")
    p.add_argument("--host", default=default_host(), help="address mlflow ui listens on (default %(default)s)")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=860)
    p.add_argument("--wait", type=float, default=90.0, help="seconds a page may take to render (default %(default)s)")
    p.add_argument("--max-bytes", type=int, default=450_000, help="shrink PNGs above this size (default %(default)s)")
    args = p.parse_args(argv)

    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("Chromium was not found. Install it first, e.g. `sudo apt-get install chromium` on Debian/Ubuntu "
              "(or pass --chromium /path/to/chrome); this script installs nothing.", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="recsys-screens-") as tmp:
        work = Path(tmp)
        browser = None
        try:
            uri = make_runs(work, fast=args.fast) if args.make_runs else args.tracking_uri
            args.out.mkdir(parents=True, exist_ok=True)
            with mlflow_ui(uri, args.host, free_port(args.host), work / "mlflow-ui.log") as base:
                exp_id, runs = pick_runs(base, args.experiment)
                browser = Browser(chromium, work / "chromium-profile", (args.width, args.height))
                take(browser, base, args.out, exp_id, runs, args.wait, args.max_bytes)
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        finally:
            if browser is not None:
                browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
