"""The web playground in a real browser (Debian's Chromium via Playwright) on a demo server.

Each test leaves a screenshot of what a person sees under ``artifacts/playground/`` in the
repository root; the folder is printed at the start of the session.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import ServerProcess, free_port

playwright_sync = pytest.importorskip("playwright.sync_api")
Browser = playwright_sync.Browser
Page = playwright_sync.Page
expect = playwright_sync.expect

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "playground"
RUN_TIMEOUT_MS = 240_000  # a first request loads the tiny pipeline on a shared CPU

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason="needs Debian's chromium (apt-get install chromium)"
)


# fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nplayground screenshots: {ARTIFACTS}")
    return ARTIFACTS


@pytest.fixture(scope="session")
def base_url(request: pytest.FixtureRequest) -> str:
    """The demo server; ``SDSERVE_E2E_URL`` points the tests at one already running."""
    given = os.environ.get("SDSERVE_E2E_URL")
    if given:
        return given.rstrip("/")
    server: ServerProcess = request.getfixturevalue("server")
    return server.url


# module scope: Playwright's sync API keeps an event loop running in this thread while it
# lives, which would break asyncio.run() in every test collected after this module
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with playwright_sync.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, base_url: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    open_playground(page, base_url)
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def open_playground(page: Page, base_url: str) -> None:
    page.goto(base_url + "/")
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)


# helpers --------------------------------------------------------------------------------


def shot(page: Page, artifacts: Path, name: str, *, full_page: bool = True) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=full_page)


def open_settings(page: Page) -> None:
    """Unfold "Size and sampling" (folded below Run until a person opens it)."""
    page.locator("#group-settings").evaluate("details => { details.open = true; }")


def fill_small(page: Page, *, steps: int = 2, size: bool = True) -> None:
    """Keep runs cheap: a tiny image and few steps."""
    open_settings(page)
    if size:
        page.fill("#in-width", "64")
        page.fill("#in-height", "64")
    page.fill("#in-num_inference_steps", str(steps))


def result_of(page: Page, status: str = "succeeded") -> Any:
    locator = page.locator(f"#result .prediction[data-status={status}]")
    locator.wait_for(timeout=RUN_TIMEOUT_MS)
    return locator


def prediction(base_url: str, prediction_id: str) -> dict[str, Any]:
    response = httpx.get(f"{base_url}/v1/predictions/{prediction_id}", timeout=30)
    response.raise_for_status()
    return dict(response.json())


def prediction_count(base_url: str) -> int:
    return len(httpx.get(f"{base_url}/v1/predictions", timeout=30).json()["results"])


def loaded_size(page: Page, selector: str) -> tuple[int, int]:
    """Natural size of an image once the browser decoded it (0x0 if it failed)."""
    page.wait_for_function(
        "s => { const i = document.querySelector(s); return i && i.complete; }",
        arg=selector,
        timeout=30_000,
    )
    size = page.eval_on_selector(selector, "i => [i.naturalWidth, i.naturalHeight]")
    return int(size[0]), int(size[1])


def write_photo(path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    """A small picture with structure (a gradient and a square) to upload."""
    image = Image.new("RGB", size)
    for x in range(size[0]):
        for y in range(size[1]):
            image.putpixel((x, y), (x * 4 % 256, y * 4 % 256, 128))
    for x in range(16, 40):
        for y in range(20, 44):
            image.putpixel((x, y), (240, 240, 30))
    image.save(path)
    return path


def decode_data_uri(uri: str) -> Image.Image:
    header, _, payload = uri.partition(",")
    assert header == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(payload)))


# tests ----------------------------------------------------------------------------------


def test_page_builds_the_form_from_the_model_schema(page: Page, base_url: str) -> None:
    models = httpx.get(f"{base_url}/v1/models", timeout=30).json()["results"]
    names = [f"{model['owner']}/{model['name']}" for model in models]
    options = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    assert options == names
    schema = models[0]["latest_version"]["openapi_schema"]["components"]["schemas"]["Input"]
    width = schema["properties"]["width"]
    # the field shows the schema's default and range, and its description beside it
    expect(page.locator("#in-width")).to_have_value(str(width["default"]))
    assert page.get_attribute("#in-width", "max") == str(width["maximum"])
    expect(page.locator("#in-width-help")).to_contain_text(str(width["maximum"]))
    expect(page.locator("#in-guidance_scale-help")).to_contain_text("guidance")
    for name in (
        "prompt",
        "negative_prompt",
        "seed",
        "scheduler",
        "num_outputs",
        "lora",
        "lora_scale",
        "output_format",
        "apply_watermark",
        "disable_safety_checker",
    ):
        assert page.locator(f"#in-{name}").count() == 1, name


def test_generate_from_text_shows_image_and_seed(
    page: Page, base_url: str, artifacts: Path
) -> None:
    page.fill("#in-prompt", "a lighthouse at dusk")
    fill_small(page)
    page.fill("#in-seed", "1234")
    # keyboard only: Enter in a field submits the form
    page.focus("#in-num_inference_steps")
    page.keyboard.press("Enter")
    result = result_of(page)
    assert loaded_size(page, "#result .images img") == (64, 64)
    expect(result.locator("figcaption")).to_contain_text("Seed 1234")
    expect(result.locator(".facts")).to_contain_text("1234")
    expect(result.locator("figcaption a")).to_have_text("Download")
    prediction_id = result.get_attribute("data-id")
    assert prediction_id
    record = prediction(base_url, prediction_id)
    assert record["input"]["seed"] == 1234
    assert record["input"]["prompt"] == "a lighthouse at dusk"
    expect(result.locator(".facts")).to_contain_text(f"{record['metrics']['predict_time']:.2f} s")
    # the snippets reproduce the request with the same seed
    curl = result.locator(".snippet pre").nth(0).inner_text()
    python = result.locator(".snippet pre").nth(1).inner_text()
    assert f"/v1/models/{record['model']}/predictions" in curl and '"seed": 1234' in curl
    assert f'"{record["model"]}"' in python and '"seed": 1234' in python
    shot(page, artifacts, "01-txt2img-result")

    # "reuse" puts the same settings back in the form, seed included
    page.fill("#in-prompt", "something else")
    page.fill("#in-seed", "")
    result.get_by_role("button", name="Reuse these settings (same seed)").click()
    expect(page.locator("#in-seed")).to_have_value("1234")
    expect(page.locator("#in-prompt")).to_have_value("a lighthouse at dusk")


def test_live_progress_and_cancel_a_long_job(page: Page, base_url: str, artifacts: Path) -> None:
    page.fill("#in-prompt", "a very long job")
    fill_small(page, steps=500)  # minutes of work on a CPU: long enough to cancel mid-way
    with page.expect_response(lambda r: r.url.endswith("/predictions") and r.status == 201) as made:
        page.click("#run")
    prediction_id = made.value.json()["id"]
    try:
        expect(page.locator("#progress")).to_be_visible()
        expect(page.locator("#progress-steps")).to_contain_text("of 500", timeout=RUN_TIMEOUT_MS)
        expect(page.locator("#progress-eta")).to_contain_text("left", timeout=RUN_TIMEOUT_MS)
        assert int(page.eval_on_selector("#progress-bar", "p => p.value")) >= 1
        expect(page.locator("#progress-preview")).to_be_visible()
        shot(page, artifacts, "02-progress")
        page.get_by_role("button", name="Cancel").click()
        result = result_of(page, "canceled")
        expect(result.locator(".badge").first).to_have_text("canceled")
        expect(page.locator("#progress")).to_be_hidden()
        assert result.get_attribute("data-id") == prediction_id
        assert prediction(base_url, prediction_id)["status"] == "canceled"
        shot(page, artifacts, "03-canceled")
    finally:
        # never leave minutes of work queued in front of the next tests
        httpx.post(f"{base_url}/v1/predictions/{prediction_id}/cancel", timeout=30)


def test_img2img_with_an_uploaded_file(
    page: Page, base_url: str, artifacts: Path, tmp_path: Path
) -> None:
    photo = write_photo(tmp_path / "photo.png")
    page.get_by_label("Image to image", exact=True).check()
    expect(page.locator("#in-prompt_strength")).to_be_visible()
    page.set_input_files("#image-file", str(photo))
    expect(page.locator("#image-help")).to_contain_text("64×64")
    page.fill("#in-prompt", "the same picture, in watercolour")
    page.fill("#in-prompt_strength", "0.6")
    fill_small(page, size=False)
    page.click("#run")
    result = result_of(page)
    assert loaded_size(page, "#result .images img") == (64, 64)
    prediction_id = result.get_attribute("data-id")
    assert prediction_id
    record = prediction(base_url, prediction_id)
    assert record["input"]["prompt_strength"] == 0.6
    assert "/files/" in record["input"]["image"]  # uploaded through /v1/files
    uploaded = httpx.get(record["input"]["image"], timeout=30)
    assert Image.open(io.BytesIO(uploaded.content)).size == (64, 64)
    shot(page, artifacts, "04-img2img-result")


def test_paint_a_mask_and_inpaint(
    page: Page, base_url: str, artifacts: Path, tmp_path: Path
) -> None:
    photo = write_photo(tmp_path / "photo.png")
    page.select_option("#model", "sdserve/tiny-sd-inpaint")
    page.get_by_label("Inpaint", exact=True).check()
    page.set_input_files("#image-file", str(photo))
    canvas = page.locator("#mask-view")
    expect(canvas).to_be_visible()
    page.fill("#brush-size", "8")
    page.dispatch_event("#brush-size", "input")
    # one stroke across the upper-left quarter of the picture
    box = canvas.bounding_box()
    assert box
    page.mouse.move(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.2, steps=8)
    page.mouse.up()
    shot(page, artifacts, "05-mask-painted")
    page.fill("#in-prompt", "a red door")
    fill_small(page, size=False)
    page.click("#run")
    result = result_of(page)
    assert loaded_size(page, "#result .images img") == (64, 64)
    prediction_id = result.get_attribute("data-id")
    assert prediction_id
    mask = decode_data_uri(prediction(base_url, prediction_id)["input"]["mask"]).convert("L")
    # the mask has the image's size: white where painted, black elsewhere
    assert mask.size == (64, 64)
    assert mask.getpixel((int(64 * 0.25), int(64 * 0.2))) == 255
    assert mask.getpixel((60, 60)) == 0
    shot(page, artifacts, "06-inpaint-result")


def test_mask_tools_invert_and_clear(page: Page, tmp_path: Path) -> None:
    page.get_by_label("Inpaint", exact=True).check()
    page.set_input_files("#image-file", str(write_photo(tmp_path / "photo.png")))
    expect(page.locator("#mask-tools")).to_be_visible()
    painted = (
        "() => { const d = document.getElementById('mask-view').getContext('2d')"
        ".getImageData(0, 0, 64, 64).data; let n = 0; for (let i = 3; i < d.length; i += 4)"
        " if (d[i] > 0) n++; return n; }"
    )
    assert page.evaluate(painted) == 0
    page.get_by_role("button", name="Invert").click()
    assert page.evaluate(painted) == 64 * 64
    page.get_by_role("button", name="Clear").click()
    assert page.evaluate(painted) == 0
    # running without paint explains what is missing instead of sending an empty mask
    page.fill("#in-prompt", "nothing painted")
    page.click("#run")
    expect(page.locator("#mask-error")).to_contain_text("Paint the area")


def test_validation_error_shown_beside_its_field(
    page: Page, base_url: str, artifacts: Path
) -> None:
    before = prediction_count(base_url)
    page.fill("#in-prompt", "too narrow")
    open_settings(page)
    page.fill("#in-width", "100")
    page.click("#run")
    error = page.locator("#in-width-error")
    expect(error).to_contain_text("multiple of 8")
    expect(page.locator("#in-width")).to_have_attribute("aria-invalid", "true")
    # focus moves to the field to fix (checked in the DOM: a headless window may be "inactive")
    assert page.evaluate("document.activeElement.id") == "in-width"
    shot(page, artifacts, "07-validation-error")
    assert prediction_count(base_url) == before  # nothing was sent
    page.fill("#in-width", "99999")
    page.click("#run")
    expect(error).to_contain_text("at most")
    page.fill("#in-width", "64")
    page.click("#run")
    expect(error).to_be_empty()
    result_of(page)


def test_server_side_input_error_shown_beside_its_field(
    page: Page, base_url: str, artifacts: Path
) -> None:
    # the scheduler is a select of the schema's names; a name the server does not know
    # (a page built from an older schema) is refused when the prediction is created (a
    # 422, no failed job), and the answer names the accepted ones, cut short
    before = prediction_count(base_url)
    page.fill("#in-prompt", "unknown sampler")
    fill_small(page)
    page.eval_on_selector(
        "#in-scheduler", "s => s.append(new Option('NoSuchSampler', 'NoSuchSampler'))"
    )
    page.select_option("#in-scheduler", "NoSuchSampler")
    page.click("#run")
    error = page.locator("#in-scheduler-error")
    expect(error).to_contain_text("unknown scheduler 'NoSuchSampler'")
    expect(error).to_contain_text("K_EULER")  # the names it accepts
    expect(error).to_contain_text("more)")
    shot(page, artifacts, "08-server-error")
    assert prediction_count(base_url) == before


def test_gallery_lists_the_new_predictions(page: Page, base_url: str, artifacts: Path) -> None:
    page.fill("#in-prompt", "for the gallery")
    fill_small(page)
    page.click("#run")
    newest = result_of(page).get_attribute("data-id")
    page_json = httpx.get(f"{base_url}/v1/predictions", timeout=30).json()
    listed = [item["id"] for item in page_json["results"]]
    expect(page.locator(f"#gallery .card[data-id='{newest}']")).to_be_visible()
    cards = page.eval_on_selector_all("#gallery .card", "cs => cs.map(c => c.dataset.id)")
    assert cards[: len(listed)] == listed  # newest first, as the API lists them
    # failed and canceled predictions carry their status (and error) in the gallery
    statuses = page.eval_on_selector_all(
        "#gallery .card .badge", "bs => bs.map(b => b.textContent)"
    )
    assert "succeeded" in statuses
    for card in page.locator("#gallery .card").all():
        if card.locator(".badge").inner_text() == "failed":
            expect(card.locator(".card-error")).not_to_be_empty()
    shot(page, artifacts, "09-gallery")
    # a card opens its details in the result panel and the address names it
    oldest = cards[-1]
    page.locator(f"#gallery .card[data-id='{oldest}']").click()
    expect(page.locator(f"#result .prediction[data-id='{oldest}']")).to_be_visible()
    assert page.url.endswith(f"#/predictions/{oldest}")
    # the prediction's own web URL opens the same details
    page.goto(f"{base_url}/#/predictions/{newest}")
    page.reload()
    expect(page.locator(f"#result .prediction[data-id='{newest}']")).to_be_visible()


def test_phone_sized_viewport(browser: Browser, base_url: str, artifacts: Path) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    page = context.new_page()
    try:
        open_playground(page, base_url)
        # nothing wider than the screen: no sideways scrolling
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        run = page.get_by_role("button", name="Run")
        expect(run).to_be_visible()
        box = run.bounding_box()
        assert box and box["height"] >= 36  # big enough to tap
        shot(page, artifacts, "10-phone", full_page=False)
        shot(page, artifacts, "11-phone-full")
    finally:
        context.close()


def test_page_asks_for_a_token_when_the_server_has_tokens(
    browser: Browser, tmp_path_factory: pytest.TempPathFactory, artifacts: Path
) -> None:
    server = ServerProcess(
        data_dir=tmp_path_factory.mktemp("token-server"),
        port=free_port(),
        extra_args=["--token", "s3cret-token"],
    )
    server.start()
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    page = context.new_page()
    try:
        assert httpx.get(f"{server.url}/v1/models", timeout=30).status_code == 401
        page.goto(server.url + "/")  # the page itself is public
        dialog = page.locator("#token-dialog")
        expect(dialog).to_be_visible()
        shot(page, artifacts, "12-token-dialog", full_page=False)
        page.fill("#token-input", "s3cret-token")
        page.get_by_role("button", name="Save").click()
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        expect(page.locator("#model option")).not_to_have_count(0)
        # kept for this tab only
        stored = page.evaluate("sessionStorage.getItem('sdserve.token')")
        assert stored == "s3cret-token"
        # the page keeps the form in localStorage, never the token
        assert "s3cret-token" not in page.evaluate("JSON.stringify(localStorage)")
        # with a token the page polls (EventSource cannot send headers) and still finishes
        page.fill("#in-prompt", "behind a token")
        fill_small(page)
        page.click("#run")
        result_of(page)
    finally:
        context.close()
        server.stop()


def test_static_files_are_served_and_confined(base_url: str) -> None:
    page = httpx.get(base_url + "/", timeout=30)
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    script = httpx.get(base_url + "/static/app.js", timeout=30)
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    escaped = httpx.get(base_url + "/static/..%2f..%2fapi%2fapp.py", timeout=30)
    assert escaped.status_code == 404
