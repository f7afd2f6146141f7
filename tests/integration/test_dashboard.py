"""The dashboard in a real browser: Debian's Chromium driven by Playwright against a real
stack (the API's uvicorn and two worker processes on the embedded default). Sign in, watch a
running job's curve gain points from the event stream, open each experiment kind's page and
count the series of every plot it drew. Screenshots land in each test's tmp_path.

Chromium comes from apt (``.ci/run`` installs it; never ``playwright install``). Without it
the tests skip, and fail when TRAINYARD_REQUIRE_SERVICES=1."""

from __future__ import annotations

import secrets
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.plots.experiments import EXPERIMENT_PLOTS
from tests.api.test_plots import expected_series
from tests.conftest import FAST, Stack, need, tiny_spec, wait_for

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
MOONS = {"data": {"source": {"synthetic": "moons", "n_samples": 200, "noise": 0.25}},
         "model": {"kind": "mlp", "hidden": [8]}, "optimizer": {"kind": "adam", "lr": 0.02},
         "training": {"epochs": 3, "batch_size": 32}}
SINE = {"data": {"source": {"synthetic": "function", "n_samples": 150, "noise": 0.1}},
        "model": {"kind": "mlp", "hidden": [8], "activation": "tanh"}, "loss": {"kind": "mse"},
        "optimizer": {"kind": "adam", "lr": 0.02}, "training": {"epochs": 3, "batch_size": 32}}
EVERY_KIND = [
    {"kind": "cross_validation", "k": 2, "base": MOONS},
    {"kind": "sweep", "base": MOONS, "parameters": {"optimizer.lr": [0.05, 1e-6, 0.001]},
     "objective": {"metric": "val_accuracy"},
     "early_termination": {"grace_epochs": 1, "min_completed": 1}},
    {"kind": "bagging", "n_models": 2, "base": MOONS},
    {"kind": "boosting", "rounds": 2, "base": MOONS},
    {"kind": "bias_variance", "base": SINE, "values": [[2], [8]], "replicates": 2},
    {"kind": "batch_size", "base": MOONS, "batch_sizes": [16, "full"],
     "sharpness": {"power_iterations": 2, "ascent_steps": 1}},
    {"kind": "optimizer_comparison", "base": MOONS,
     "optimizers": [{"kind": "sgd", "lr": 0.1}, {"kind": "adam"}]},
    {"kind": "depth", "base": MOONS, "depths": [1, 3], "width": 8},
]
# Long enough to be watched training on a fast machine too (it is cancelled once it has been).
LIVE = tiny_spec(name="live digits", data={"source": {"builtin": "digits"}},
                 model={"kind": "mlp", "hidden": [64]},
                 training={"epochs": 1000, "batch_size": 16})


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need("Chromium", CHROMIUM.exists(), f"{CHROMIUM} missing: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        need("Playwright", False, str(exc))
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack for the module: the embedded default, two workers."""
    home = tmp_path_factory.mktemp("dashboard")
    stack = Stack(home, {**FAST, "TRAINYARD_TORCH_THREADS": "1"})
    stack.env.pop("TRAINYARD_DATABASE_URL", None)
    stack.env.pop("TRAINYARD_BROKER_URL", None)
    try:
        stack.cli("migrate")
        stack.key = stack.new_key(f"tenant-{secrets.token_hex(3)}")
        stack.start_api()
        stack.start_worker("w1")
        stack.start_worker("w2")
        yield stack
    finally:
        stack.stop_all()


@pytest.fixture(scope="module")
def submitted(stack: Stack) -> dict[str, Any]:
    """The live job first (so a worker takes it at once), then one experiment per kind."""
    with stack.client() as http:
        live = http.post("/v1/jobs", json=LIVE).json()["id"]
        experiments = {r["kind"]: http.post("/v1/experiments", json=r).json()["id"]
                       for r in EVERY_KIND}
    return {"live": live, "experiments": experiments}


def new_page(browser: Any) -> tuple[Any, list[str]]:
    """A page, and the uncaught script errors it will collect (there must be none)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return page, errors


def signed_in_page(browser: Any, stack: Stack) -> tuple[Any, list[str]]:
    page, errors = new_page(browser)
    page.goto(f"{stack.url}/ui/")
    page.fill("#api-key", stack.key)
    page.click("button[type=submit]")
    page.wait_for_selector("table#jobs tbody tr")
    assert stack.key not in page.url
    assert page.evaluate("sessionStorage.getItem('trainyard.apiKey')") == stack.key
    return page, errors


def canvas_painted(page: Any, selector: str) -> bool:
    """Some pixel of the chart's canvas differs from the first one (not blank)."""
    return bool(page.evaluate("""(selector) => {
        const canvas = document.querySelector(selector);
        const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        for (let i = 4; i < px.length; i += 4)
            if (px[i] !== px[0] || px[i + 1] !== px[1] || px[i + 2] !== px[2]
                || px[i + 3] !== px[3]) return true;
        return false;
    }""", selector))


def test_signing_in_shows_the_jobs_and_a_bad_key_is_refused(browser: Any, stack: Stack,
                                                            submitted: dict[str, Any],
                                                            tmp_path: Path) -> None:
    page, _ = new_page(browser)
    page.goto(f"{stack.url}/ui/")
    page.fill("#api-key", "not-a-key")
    page.click("button[type=submit]")
    page.wait_for_selector("#sign-in-error:has-text('not accepted')")
    page.close()
    page, errors = signed_in_page(browser, stack)
    page.wait_for_selector(f"tr[data-job='{submitted['live']}']")
    page.click("a[href='#/experiments']")
    page.wait_for_selector("table#experiments tbody tr")
    rows = page.locator("table#experiments tbody tr").count()
    assert rows == len(EVERY_KIND)
    page.screenshot(path=str(tmp_path / "experiments.png"))
    page.click("#sign-out")
    page.wait_for_selector("#sign-in-form")
    assert page.evaluate("sessionStorage.getItem('trainyard.apiKey')") is None
    assert errors == []


def test_a_running_jobs_curve_gains_points_as_it_trains(browser: Any, stack: Stack,
                                                        submitted: dict[str, Any],
                                                        tmp_path: Path) -> None:
    job_id = submitted["live"]
    page, errors = signed_in_page(browser, stack)
    page.goto(f"{stack.url}/ui/#/jobs/{job_id}")
    loss = "[data-chart='loss']"

    def points() -> int:
        return int(page.get_attribute(loss, "data-points") or 0)

    wait_for(lambda: points() >= 1, 120, what="the first epoch on the loss chart")
    first = points()
    wait_for(lambda: points() > first, 60, what="more epochs on the loss chart")
    assert page.inner_text("#job-status") == "running"
    assert canvas_painted(page, f"{loss} canvas")
    page.screenshot(path=str(tmp_path / "job.png"))
    with stack.client() as http:
        http.post(f"/v1/jobs/{job_id}/cancel")  # free the worker for the experiments
    page.wait_for_selector("#job-status:has-text('cancelled')", timeout=60_000)
    page.wait_for_selector("#job-after a[data-download$='/plots/loss.png']", timeout=30_000)
    assert errors == []


def wait_experiments(stack: Stack, ids: dict[str, str]) -> dict[str, dict[str, Any]]:
    with stack.client() as http:
        def ended() -> dict[str, dict[str, Any]] | None:
            now = {k: http.get(f"/v1/experiments/{i}").json() for k, i in ids.items()}
            return now if all(x["status"] != "running" for x in now.values()) else None

        return wait_for(ended, 400, 1.0, "every experiment to end")  # type: ignore[no-any-return]


SERIES_COUNT = """(holder) => new Set([...holder.querySelectorAll('[id^="series-"]')]
    .map((node) => node.id.split('--')[0])).size"""


@pytest.mark.timeout(600)  # every kind's children on two workers of a busy 2-core machine
def test_each_experiment_kinds_page_draws_its_plots(browser: Any, stack: Stack,
                                                    submitted: dict[str, Any],
                                                    tmp_path: Path) -> None:
    with stack.client() as http:  # the watched job, if its test did not get to cancel it
        http.post(f"/v1/jobs/{submitted['live']}/cancel")
    done = wait_experiments(stack, submitted["experiments"])
    page, errors = signed_in_page(browser, stack)
    for kind, exp in done.items():
        assert exp["status"] == "succeeded", (kind, exp)
        page.goto(f"{stack.url}/ui/#/experiments/{exp['id']}")
        for name in EXPERIMENT_PLOTS[kind]:
            holder = page.locator(f".plot[data-plot='{name}'][data-state='drawn']")
            holder.wait_for(timeout=60_000)
            box = holder.locator("svg").first.bounding_box()
            assert box is not None and box["width"] > 200 and box["height"] > 100, (kind, box)
            drawn = holder.evaluate(SERIES_COUNT)
            assert drawn == expected_series(kind, name, exp["result"]) > 0, (kind, name, drawn)
        page.screenshot(path=str(tmp_path / f"{kind}.png"), full_page=True)
    assert errors == []
    page.goto(f"{stack.url}/ui/#/experiments/{done['bagging']['id']}")
    download_a_childs_files(page, stack, tmp_path)


def download(page: Any, link: Any, tmp_path: Path) -> Path:
    """Click a download link (fetched with the Bearer header, handed over as a file)."""
    with page.expect_download() as started:
        link.click()
    saved = tmp_path / started.value.suggested_filename
    started.value.save_as(saved)
    return saved


def download_a_childs_files(page: Any, stack: Stack, tmp_path: Path) -> None:
    """From a bagging experiment's page to its first member's: its checkpoint, and its model
    bundle once the worker has exported it (members are exported; folds are not)."""
    page.click("table#children tbody tr:first-child a")
    page.wait_for_selector("#job-status:has-text('succeeded')")
    link = page.locator("#job-after a[data-download*='/checkpoints/']").first
    link.wait_for(timeout=30_000)
    from safetensors.numpy import load_file

    saved = download(page, link, tmp_path)
    assert saved.suffix == ".safetensors" and load_file(saved), "the weights load"
    job_id = page.url.rsplit("/", 1)[-1]
    with stack.client() as http:
        wait_for(lambda: (http.get(f"/v1/jobs/{job_id}").json().get("model") or {}).get(
            "status") == "ready", 120, what="the child's model export")
    page.reload()
    bundle = download(page, page.locator("#job-after a[data-download$='/model']"), tmp_path)
    assert zipfile.ZipFile(bundle).namelist(), "a zip bundle"


def test_trainyard_plot_saves_the_servers_plots(stack: Stack, submitted: dict[str, Any],
                                                tmp_path: Path) -> None:
    """The CLI fetches the same images: the format from -o's suffix, the first plot when
    no name is given, and a wrong name answered with the list of names."""
    env = {**stack.env, "TRAINYARD_URL": stack.url, "TRAINYARD_API_KEY": stack.key}

    def plot(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "trainyard.cli", "plot", *args], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)

    exp_id = submitted["experiments"]["cross_validation"]
    wait_experiments(stack, {"cross_validation": exp_id})
    made = plot(exp_id, "-o", "folds.png")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "folds.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    made = plot(submitted["live"])
    assert made.returncode == 0, made.stderr
    assert (tmp_path / f"{submitted['live']}-loss.svg").read_text().startswith("<?xml")
    wrong = plot(exp_id, "roc")
    assert wrong.returncode == 1 and "its plots are: folds" in wrong.stderr


def test_plots_on_postgres_and_redis(distributed: Stack) -> None:
    """The same plots from a job and an experiment run on Postgres + Redis."""
    distributed.start_worker("w1")
    with distributed.client() as http:
        job_id = http.post("/v1/jobs", json=tiny_spec(training={"epochs": 3})).json()["id"]
        exp_id = http.post("/v1/experiments", json=EVERY_KIND[0]).json()["id"]
        wait_for(lambda: http.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded", 120)
        for plot in http.get(f"/v1/jobs/{job_id}/plots").json()["plots"]:
            svg = http.get(plot["svg"])
            assert svg.status_code == 200 and 'id="series-' in svg.text, plot
        done = wait_experiments(distributed, {"cross_validation": exp_id})["cross_validation"]
        folds = http.get(f"/v1/experiments/{exp_id}/plots/folds.png")
        assert done["status"] == "succeeded" and folds.content.startswith(b"\x89PNG")
