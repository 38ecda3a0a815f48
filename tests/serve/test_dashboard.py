"""The web dashboard at ``/`` in a real browser, against a real server and a real model.

Debian's chromium (``/usr/bin/chromium``, never a downloaded browser) driven by Playwright
opens the page served by ``resnetkit serve`` for a briefly trained Fashion-MNIST model held
in a temporary registry (two aliases, a drift reference). A real photo goes through the
upload panel; real Fashion-MNIST test images are posted as traffic; the page must show the
predictions, the Grad-CAM overlay, live charts, the drift verdict and the alias history,
with nothing logged to the console.

``RESNETKIT_UPDATE_SCREENSHOT=1`` writes the screenshot to ``docs/dashboard.png``.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import skimage.data
from PIL import Image
from playwright import sync_api

from resnetkit.contract import read_summary, write_summary
from resnetkit.data import load_dataset
from resnetkit.evaluate import predict_embeddings
from resnetkit.models import load_model
from resnetkit.registry import RegistrationOptions, open_registry
from resnetkit.serve.metrics import quantile_from_buckets
from resnetkit.train.rundir import write_drift_reference
from tests.export.rundir import trained_run_dir
from tests.serve.server import ServerProcess, png, serving

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
MODEL = "fashion"
TRAFFIC_IMAGES = 50
DRIFT_WAIT_MS = 120_000  # the first drift verdict: about 100 requests, then the test
REFERENCE_IMAGES = 500  # test images after the traffic's, as the drift reference
WAIT_MS = 20_000  # the longest any one thing on the page may take to appear
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"


@pytest.fixture(scope="module")
def registry_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A registry holding the trained run as ``fashion:1``, with a drift reference and a test
    accuracy as training writes them, at ``@staging`` and then ``@production``."""
    folder = tmp_path_factory.mktemp("dashboard")
    run = folder / MODEL
    shutil.copytree(trained_run_dir(str(tmp_path_factory.getbasetemp())), run)
    model, card = load_model(run)
    test = load_dataset("fashion-mnist", "test", limit=TRAFFIC_IMAGES + REFERENCE_IMAGES)
    held_out, labels = test.images[TRAFFIC_IMAGES:], test.labels[TRAFFIC_IMAGES:]
    embeddings, probabilities = predict_embeddings(model, held_out, card.spec())
    write_drift_reference(
        run, {"embeddings": embeddings, "probabilities": probabilities, "labels": labels}
    )
    accuracy = float((probabilities.argmax(dim=1) == labels).float().mean())
    write_summary(run, {**read_summary(run), "test_accuracy": accuracy})
    url = f"sqlite:///{folder / 'registry.db'}"
    with open_registry(url, folder / "artifacts") as store:
        store.register(run, MODEL, RegistrationOptions(aliases=("staging",), reason="first run"))
        store.set_alias(MODEL, "production", 1, reason="passed review", actor="alice")
    return {"RESNETKIT_REGISTRY": url, "RESNETKIT_ARTIFACTS": str(folder / "artifacts")}


@pytest.fixture(scope="module")
def server(
    registry_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("dashboard-server") / "server.log"
    with serving([f"{MODEL}@production", "--threads", "1"], log, registry_env) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert CHROMIUM.is_file(), f"no chromium at {CHROMIUM}: run `make system-deps`"
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield page
    context.close()


class Traffic:
    """Fashion-MNIST test images posted to the server from a thread until stopped."""

    def __init__(self, url: str, images: list[bytes], pause_s: float = 0.02) -> None:
        self.url, self.images, self.pause_s = url, images, pause_s
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                image = self.images[len(self.statuses) % len(self.images)]
                files = {"file": ("item.png", image, "image/png")}
                answer = client.post(f"{self.url}/v1/models/{MODEL}/predict", files=files)
                self.statuses.append(answer.status_code)
                self._stop.wait(self.pause_s)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def _chart(page: Any, name: str) -> dict[str, str]:
    return dict(page.eval_on_selector(f"#chart-{name}", "e => ({...e.dataset})"))


def test_dashboard_shows_models_traffic_drift_and_an_uploaded_photo(
    server: ServerProcess, page: Any, tmp_path: Path
) -> None:
    """The whole page with real data: nothing logged to the console, nothing left blank."""
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    page.goto(f"{server.url}/")
    page.wait_for_selector("#models-table")
    page.wait_for_function("Number(document.body.dataset.polls) >= 2")  # a first interval

    photo = tmp_path / "chelsea.jpg"
    Image.fromarray(skimage.data.chelsea()).save(photo, format="JPEG")
    page.set_input_files("#upload-file", str(photo))
    page.wait_for_selector("#predictions li:nth-child(5)")
    page.wait_for_function("document.querySelector('#overlay-image').naturalWidth > 0")

    test = load_dataset("fashion-mnist", "test", limit=TRAFFIC_IMAGES)
    images = [png(pixels) for pixels in test.images[:, 0].numpy()]
    with Traffic(server.url, images) as traffic:
        # A few intervals with traffic in them (one every 2 s), so the lines have a shape.
        page.wait_for_function("Number(document.getElementById('chart-throughput').dataset.max)")
        page.wait_for_function(
            "document.querySelector('#chart-throughput path.line').getAttribute('d').split('L')"
            ".length >= 4"
        )
        # About 100 requests fill the drift window past its minimum and make a test due; on
        # a loaded machine the traffic is slower and the test (permutations) too.
        page.wait_for_selector(
            "#drift [data-verdict='false'], #drift [data-verdict='true']", timeout=DRIFT_WAIT_MS
        )
        page.wait_for_function("Number(document.getElementById('chart-latency').dataset.points)")
        updating = os.environ.get("RESNETKIT_UPDATE_SCREENSHOT") == "1"
        page.screenshot(path=SCREENSHOT if updating else tmp_path / "dashboard.png", full_page=True)
    assert traffic.statuses and set(traffic.statuses) == {200}, set(traffic.statuses)

    top5 = page.locator("#predictions .plabel").all_inner_texts()
    assert len(top5) == 5 and set(top5) <= set(test.classes), top5
    models = page.inner_text("#models-table")
    assert MODEL in models and "@production" in models and "@staging" in models
    assert "ready" in models and "onnx" in models
    history = page.inner_text("#history-table")
    assert "passed review" in history and "alice" in history and "first run" in history
    assert page.locator("#drift tbody tr").count() == 4  # one row per detector
    assert "No rollout." in page.inner_text("#rollouts")
    throughput = _chart(page, "throughput")
    assert float(throughput["max"]) > 0 and int(throughput["points"]) > 0
    assert page.locator("#chart-throughput path.line").first.get_attribute("d")
    assert int(_chart(page, "batches")["total"]) > 0
    assert not page.is_visible("#banner")
    assert problems == []


ROLLOUT = {
    "model": MODEL,
    "state": "progressing",
    "step": 1,
    "steps": [5, 25, 50, 100],
    "canary_weight": 25.0,
    "stable_version": 1,
    "canary_version": 2,
    "reason": "<img src=x onerror=alert(1)> step 2 of 4",
    "checks": [
        {"name": "error_rate", "value": 0.002, "threshold": 0.01, "passed": True},
        {"name": "<script>agreement</script>", "value": 0.61, "threshold": 0.7, "passed": False},
        {"name": "latency_p95_ratio", "value": None, "threshold": 1.5, "passed": None},
    ],
}


EVENT = {
    "id": 7, "name": MODEL, "alias": "production", "kind": "rollback", "from_version": 2,
    "to_version": 1, "actor": "<b>mallory</b>", "created_at": "2026-01-02T03:04:05Z",
    "reason": "<img src=x onerror=alert(2)>",
}  # fmt: skip


def test_dashboard_shows_rollout_checks_and_api_errors_as_text(
    server: ServerProcess, page: Any
) -> None:
    """A rollout in the documented shape and an alias log with markup in it (answered by the
    browser: a live rollout takes minutes), failing routes, then no server at all: all shown
    as readable text, server strings never as markup."""
    page.route(
        "**/v1/rollouts", lambda route: route.fulfill(json={"rollouts": [ROLLOUT]}, status=200)
    )
    page.route(
        f"**/v1/models/{MODEL}/history",
        lambda route: route.fulfill(json={"name": MODEL, "events": [EVENT]}, status=200),
    )
    page.route(
        "**/v1/stats",
        lambda route: route.fulfill(json={"error": "stats <i>unavailable</i>"}, status=500),
    )
    uncaught: list[str] = []
    page.on("pageerror", lambda exc: uncaught.append(str(exc)))
    page.goto(f"{server.url}/")
    page.wait_for_selector("#rollouts .rollout[data-state='progressing']")
    rollout = page.inner_text("#rollouts")
    assert "v1 → canary v2" in rollout and "25%" in rollout
    assert "<img src=x onerror=alert(1)>" in rollout and "<script>agreement</script>" in rollout
    assert page.locator("#rollouts img, #rollouts script").count() == 0
    history = page.inner_text("#history-table")
    assert "<b>mallory</b>" in history and "<img src=x onerror=alert(2)>" in history
    assert "v2 → v1" in history and "rollback" in history
    assert page.locator("#history-table b, #history-table img").count() == 0
    verdicts = page.locator("#rollouts tbody tr td:nth-child(4)").all_inner_texts()
    assert verdicts == ["pass", "fail", "not enough data"]
    assert page.locator("#rollouts .step-done").all_inner_texts() == ["5%"]
    assert page.locator("#rollouts .step-current").inner_text() == "25%"
    page.wait_for_selector("#headline .error")
    assert page.inner_text("#headline .error") == "stats <i>unavailable</i>"
    assert page.locator("#models-table").count() == 1  # the other panels still work

    page.unroute("**/v1/rollouts")  # a server without the rollout routes
    page.route("**/v1/rollouts", lambda route: route.fulfill(json={"error": "no"}, status=404))
    page.wait_for_function("document.getElementById('rollouts').textContent === 'No rollout.'")

    page.route("**/v1/**", lambda route: route.abort())  # the server is gone
    page.wait_for_selector("#banner:has-text('cannot reach the server')")
    assert uncaught == []


BUCKET_CASES = [
    [[0.001, 0], [0.0025, 1], [0.005, 5], [0.01, 6], ["+Inf", 6]],
    [[0.005, 0], [0.01, 0], [0.025, 40], [0.05, 90], [0.1, 99], ["+Inf", 100]],
    [[0.1, 0], [0.5, 3], ["+Inf", 10]],  # the p95 rank falls in the overflow bucket
    [[0.1, 0], ["+Inf", 0]],  # no observations
]


QUANTILES = [0.5, 0.95, 0.99]


def test_dashboard_quantiles_match_the_servers_histogram_quantile(
    server: ServerProcess, page: Any
) -> None:
    """The page's windowed p50/p95 use the same estimate as the server's own quantiles."""
    page.goto(f"{server.url}/")
    ours = page.evaluate(
        """async ([qs, cases]) => {
            const stats = await import("./static/stats.js");
            const quantile = (q, c) => stats.quantileFromBuckets(q, stats.parseBuckets(c));
            return qs.map((q) => cases.map((c) => quantile(q, c)));
        }""",
        [QUANTILES, BUCKET_CASES],
    )
    for q, found in zip(QUANTILES, ours, strict=True):
        for case, value in zip(BUCKET_CASES, found, strict=True):
            expected = quantile_from_buckets(q, [(float(b), float(n)) for b, n in case])
            assert value == (None if expected is None else pytest.approx(expected)), (q, case)
