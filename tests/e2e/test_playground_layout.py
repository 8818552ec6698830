"""The playground as a tool, in real Chromium on the demo server (issue 18): Run under the
prompt and the output pane in view, jobs that survive a reload (live progress, a working
Cancel, live history cards, the queue position), zoom and compare by keyboard, outputs
sent back to the form, a phone without sideways scrolling.

Screenshots of each state (desktop and phone: before Run, during, after) land beside the
other playground ones (``artifacts/playground/layout-*.png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import test_playground as playground
from tests.e2e.test_playground import (
    RUN_TIMEOUT_MS,
    Browser,
    Page,
    expect,
    fill_small,
    loaded_size,
    open_playground,
    prediction,
    result_of,
    shot,
    write_photo,
)

# the playground tests' fixtures (a demo server, Chromium, a page on it), used by name
artifacts = playground.artifacts
base_url = playground.base_url
browser = playground.browser
page = playground.page

pytestmark = pytest.mark.skipif(
    not Path("/usr/bin/chromium").is_file(),
    reason="needs Debian's chromium (apt-get install chromium)",
)

#: steps enough for minutes of work on a CPU: a job that is surely still running when the
#: test reloads, cancels or queues behind it (the test cancels it; nothing waits for it)
LONG_STEPS = 500


def in_viewport(page: Page, selector: str) -> bool:
    """The element's box lies inside the window as it is now (nothing scrolled)."""
    return bool(
        page.eval_on_selector(
            selector,
            "e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.top >= 0"
            " && r.left >= 0 && r.bottom <= innerHeight && r.right <= innerWidth; }",
        )
    )


def scroll_y(page: Page) -> float:
    return float(page.evaluate("scrollY"))


def no_sideways_scroll(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= innerWidth"))


def create_job(base_url: str, prompt: str, *, steps: int) -> dict[str, Any]:
    """A 64x64 text-to-image job of ``steps`` steps, created by another caller (the API)."""
    response = httpx.post(
        f"{base_url}/v1/models/sdserve/tiny-sd/predictions",
        json={"input": {"prompt": prompt, "num_inference_steps": steps, "width": 64, "height": 64}},
        timeout=30,
    )
    response.raise_for_status()
    return dict(response.json())


def cancel_quietly(base_url: str, prediction_id: str) -> None:
    httpx.post(f"{base_url}/v1/predictions/{prediction_id}/cancel", timeout=30)


def test_run_progress_and_image_stay_in_view_on_a_desktop(page: Page, artifacts: Path) -> None:
    # Run sits under the prompt: reachable without scrolling at 1280x900
    assert in_viewport(page, "#run")
    assert page.get_attribute("#run", "aria-keyshortcuts")
    shot(page, artifacts, "layout-desktop-1-before", full_page=False)
    page.fill("#in-prompt", "a lighthouse at dusk")
    fill_small(page)
    page.fill("#in-seed", "99")
    page.evaluate("scrollTo(0, 0)")
    page.focus("#in-prompt")
    page.keyboard.press("Control+Enter")  # runs from the prompt without leaving it
    expect(page.locator("#progress")).to_be_visible()
    assert in_viewport(page, "#progress-status") and in_viewport(page, "#cancel")
    assert scroll_y(page) == 0
    shot(page, artifacts, "layout-desktop-2-during", full_page=False)
    result = result_of(page)
    assert loaded_size(page, "#result .images img") == (64, 64)
    assert in_viewport(page, "#result .images img")
    assert scroll_y(page) == 0
    # the parameters that applied: no strengths or outpaint sides on text to image
    names = result.locator(".params th").all_inner_texts()
    assert "prompt" in names and "seed" in names
    for name in ("prompt_strength", "outpaint_left", "high_noise_frac", "refine_steps"):
        assert name not in names
    expect(result.get_by_role("button", name="Copy seed 99")).to_be_visible()
    shot(page, artifacts, "layout-desktop-3-after", full_page=False)


def test_a_reload_reattaches_to_the_running_job_and_its_cancel_works(
    page: Page, base_url: str, artifacts: Path
) -> None:
    page.fill("#in-prompt", "a job that outlives a reload")
    fill_small(page, steps=LONG_STEPS)
    with page.expect_response(lambda r: r.url.endswith("/predictions") and r.status == 201) as made:
        page.click("#run")
    long_id = made.value.json()["id"]
    queued_id = ""
    try:
        expect(page.locator("#progress-steps")).to_contain_text(
            f"of {LONG_STEPS}", timeout=RUN_TIMEOUT_MS
        )
        # another caller's job waits behind it: its card says so
        created = create_job(base_url, "behind the long one", steps=2)
        queued_id = created["id"]
        assert created["sdserve_standing"]["queue_position"] == 1

        page.reload()
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        # the form is as it was, and the running job is followed again: live steps, Cancel
        expect(page.locator("#in-prompt")).to_have_value("a job that outlives a reload")
        expect(page.locator("#progress")).to_be_visible()
        steps = page.locator("#progress-steps")
        expect(steps).to_contain_text(f"of {LONG_STEPS}", timeout=RUN_TIMEOUT_MS)
        first = int(page.eval_on_selector("#progress-bar", "p => p.value"))
        page.wait_for_function(
            f"() => document.getElementById('progress-bar').value > {first}",
            timeout=RUN_TIMEOUT_MS,
        )
        # history cards of unfinished jobs are live: steps of the one, the place of the other
        expect(page.locator(f".card[data-id='{long_id}'] .card-live")).to_contain_text("Step")
        expect(page.locator(f".card[data-id='{queued_id}'] .card-live")).to_contain_text(
            "Queued #1"
        )
        shot(page, artifacts, "layout-desktop-4-reattached", full_page=False)
        shot(page, artifacts, "layout-desktop-5-live-cards")

        page.get_by_role("button", name="Cancel", exact=True).click()
        result = result_of(page, "canceled")
        assert result.get_attribute("data-id") == long_id
        assert prediction(base_url, long_id)["status"] == "canceled"
        # the queued job runs now; its card follows it to its image
        card = page.locator(f".card[data-id='{queued_id}']")
        expect(card.locator("img")).to_be_visible(timeout=RUN_TIMEOUT_MS)
        expect(card.locator(".badge")).to_have_text("succeeded")
    finally:
        # never leave minutes of work queued in front of the next tests
        cancel_quietly(base_url, long_id)
        if queued_id:
            cancel_quietly(base_url, queued_id)


def test_zoom_compare_and_use_as_input_by_keyboard(
    page: Page, base_url: str, artifacts: Path, tmp_path: Path
) -> None:
    page.get_by_label("Image to image", exact=True).check()
    page.set_input_files("#image-file", str(write_photo(tmp_path / "photo.png")))
    page.fill("#in-prompt", "the same picture, in watercolour")
    fill_small(page, size=False)
    page.click("#run")
    result = result_of(page)
    assert loaded_size(page, "#result .images img") == (64, 64)
    names = result.locator(".params th").all_inner_texts()
    assert "prompt_strength" in names and "outpaint_left" not in names

    # zoom: Enter on the image opens it enlarged and sharp; Esc closes; focus comes back
    zoom = result.locator(".zoom-button").first
    zoom.focus()
    page.keyboard.press("Enter")
    dialog = page.locator("#zoom-dialog")
    expect(dialog).to_be_visible()
    image = dialog.locator("img.zoom-image")
    assert image.evaluate("i => getComputedStyle(i).imageRendering") == "pixelated"
    assert image.bounding_box()["width"] >= 128  # type: ignore[index]
    expect(dialog.get_by_role("heading")).to_contain_text("64×64")
    shot(page, artifacts, "layout-desktop-6-zoom", full_page=False)
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert page.evaluate("document.activeElement.classList.contains('zoom-button')")

    # compare: the slider has the keyboard, arrows move the split
    compare = result.get_by_role("button", name="Compare with input")
    compare.focus()
    page.keyboard.press("Enter")
    expect(dialog).to_be_visible()
    slider = page.locator("#compare-split")
    expect(slider).to_be_focused()
    page.keyboard.press("ArrowRight")
    expect(slider).to_have_value("51")
    clip = dialog.locator(".compare-after").evaluate("i => i.style.clipPath")
    assert "51%" in clip
    shot(page, artifacts, "layout-desktop-7-compare", full_page=False)
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(compare).to_be_focused()

    # use as input: the output becomes the image of an inpainting
    output_url = result.locator(".images img").first.get_attribute("src")
    result.get_by_role("button", name="Use output 1 in Inpaint").click()
    expect(page.get_by_label("Inpaint", exact=True)).to_be_checked()
    expect(page.locator("#image-preview")).to_be_visible()
    expect(page.locator("#image-help")).to_contain_text("64×64")
    assert page.eval_on_selector("#image-preview", "i => i.naturalWidth") == 64
    assert output_url


def test_queued_and_running_states_in_the_output_pane(page: Page, base_url: str) -> None:
    blocker = create_job(base_url, "in front", steps=LONG_STEPS)["id"]
    try:
        page.wait_for_function(
            "async id => (await (await fetch('/v1/predictions/' + id)).json()).status"
            " === 'processing'",
            arg=blocker,
            timeout=RUN_TIMEOUT_MS,
        )
        page.fill("#in-prompt", "waits its turn")
        fill_small(page)
        page.click("#run")
        expect(page.locator("#progress-status")).to_contain_text("Queued #1")
    finally:
        cancel_quietly(base_url, blocker)
    result_of(page)


def test_phone_layout_scrolls_to_the_output_and_never_sideways(
    browser: Browser, base_url: str, artifacts: Path
) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    phone = context.new_page()
    errors: list[str] = []
    phone.on("pageerror", lambda error: errors.append(str(error)))
    try:
        open_playground(phone, base_url)
        assert no_sideways_scroll(phone)
        assert in_viewport(phone, "#run")
        shot(phone, artifacts, "layout-phone-1-before", full_page=False)
        phone.fill("#in-prompt", "a lighthouse on a phone")
        fill_small(phone)
        phone.fill("#in-seed", "5")
        phone.click("#run")
        expect(phone.locator("#progress")).to_be_visible()
        # Run brought the output pane into view (the form is above it, a screen or more)
        assert scroll_y(phone) > 0
        assert in_viewport(phone, "#progress-status") and in_viewport(phone, "#cancel")
        shot(phone, artifacts, "layout-phone-2-during", full_page=False)
        result_of(phone)
        assert in_viewport(phone, "#result .images img")
        assert no_sideways_scroll(phone)
        shot(phone, artifacts, "layout-phone-3-after", full_page=False)
        # a zoomed image scrolls inside its dialog, never the page
        phone.locator("#result .zoom-button").first.click()
        expect(phone.locator("#zoom-dialog")).to_be_visible()
        assert no_sideways_scroll(phone)
        shot(phone, artifacts, "layout-phone-4-zoom", full_page=False)
        phone.keyboard.press("Escape")
        shot(phone, artifacts, "layout-phone-5-full")
        assert not errors, errors
    finally:
        context.close()


def test_the_refiner_stage_is_labelled(page: Page, base_url: str, artifacts: Path) -> None:
    # base_image_refiner numbers the refiner's steps on from the base's: the page says
    # "Refining: step k of n" instead of a step count that jumps from "6 of 6" to "7 of 7"
    page.select_option("#model", "sdserve/tiny-sdxl")
    page.fill("#in-prompt", "refined slowly")
    fill_small(page, steps=2)
    page.locator("#group-refiner").evaluate("details => { details.open = true; }")
    page.select_option("#in-refine", "base_image_refiner")
    page.fill("#in-refine_steps", str(LONG_STEPS))
    with page.expect_response(lambda r: r.url.endswith("/predictions") and r.status == 201) as made:
        page.click("#run")
    job_id = made.value.json()["id"]
    try:
        expect(page.locator("#progress-steps")).to_contain_text(
            "Refining: step", timeout=RUN_TIMEOUT_MS
        )
        expect(page.locator("#progress-status")).to_have_text("Refining")
        shot(page, artifacts, "layout-desktop-8-refining", full_page=False)
    finally:
        cancel_quietly(base_url, job_id)
    result_of(page, "canceled")
