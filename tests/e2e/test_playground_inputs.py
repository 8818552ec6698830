"""The playground's inputs and history in a real browser: dropping and pasting images, the
scheduler select from the model's schema, size presets, example prompts, the LoRA picker,
the mask tools (download, undo/redo, colour, relative brush), server errors that stay, and
the history cards with their filters and removal.

Screenshots go under ``artifacts/playground/`` (``inputs-*.png``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.e2e import test_playground as playground
from tests.e2e.test_playground import (
    Page,
    expect,
    fill_small,
    open_settings,
    prediction,
    prediction_count,
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

# a real DataTransfer carrying a PNG of the given size, dropped on (or pasted into) a target
SEND_IMAGE = (
    "async ([selector, kind, width, height]) => {"
    " const c = document.createElement('canvas'); c.width = width; c.height = height;"
    " const x = c.getContext('2d'); x.fillStyle = '#2a6'; x.fillRect(0, 0, width, height);"
    " x.fillStyle = '#fff'; x.fillRect(0, 0, width / 2, height);"
    " const blob = await new Promise(r => c.toBlob(r, 'image/png'));"
    " const data = new DataTransfer();"
    " data.items.add(new File([blob], 'sent.png', { type: 'image/png' }));"
    " const target = document.querySelector(selector);"
    " const event = kind === 'drop'"
    "   ? new DragEvent('drop', { dataTransfer: data, bubbles: true, cancelable: true })"
    "   : new ClipboardEvent('paste', { clipboardData: data, bubbles: true, cancelable: true });"
    " target.dispatchEvent(event); return event.defaultPrevented; }"
)
# pixels with some paint on the visible mask overlay
PAINTED = (
    "() => { const v = document.getElementById('mask-view');"
    " const d = v.getContext('2d').getImageData(0, 0, v.width, v.height).data;"
    " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }"
)
OVERLAY_ALPHA = (
    "() => { const v = document.getElementById('mask-view');"
    " const d = v.getContext('2d').getImageData(0, 0, v.width, v.height).data;"
    " const a = []; for (let i = 3; i < d.length; i += 4) a.push(d[i] > 0 ? 1 : 0); return a; }"
)


def send_image(page: Page, selector: str, kind: str, size: tuple[int, int]) -> None:
    assert page.evaluate(SEND_IMAGE, [selector, kind, size[0], size[1]]), "not taken"


def input_schema(base_url: str, model: str) -> dict[str, Any]:
    body = httpx.get(f"{base_url}/v1/models/{model}", timeout=30).json()
    return dict(body["latest_version"]["openapi_schema"]["components"]["schemas"]["Input"])


def paint_stroke(page: Page) -> None:
    canvas = page.locator("#mask-view")
    box = canvas.bounding_box()
    assert box
    page.mouse.move(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.3)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.3, steps=8)
    page.mouse.up()


# tests ----------------------------------------------------------------------------------


def test_image_task_before_upload_shows_no_broken_image(page: Page, artifacts: Path) -> None:
    page.get_by_label("Image to image", exact=True).check()
    expect(page.locator("#image-file")).to_be_visible()
    expect(page.locator("#image-drop")).to_be_visible()
    # no stage (and so no empty <img>, drawn as a broken image) until there is an image
    expect(page.locator("#image-stage")).to_be_hidden()
    expect(page.locator("#image-preview")).to_be_hidden()
    shot(page, artifacts, "inputs-01-img2img-before-upload", full_page=False)


def test_drop_and_paste_the_input_image_and_a_mask(page: Page, artifacts: Path) -> None:
    page.get_by_label("Image to image", exact=True).check()
    send_image(page, "#image-drop", "drop", (48, 40))
    expect(page.locator("#image-help")).to_contain_text("48×40")
    expect(page.locator("#image-stage")).to_be_visible()
    # a paste anywhere in the input image section (the drop zone takes focus on click)
    send_image(page, "#image-drop", "paste", (40, 32))
    expect(page.locator("#image-help")).to_contain_text("40×32")
    shot(page, artifacts, "inputs-02-image-dropped-and-pasted", full_page=False)
    # a mask file dropped on the mask tools fills the mask (white half = repaint)
    page.get_by_label("Inpaint", exact=True).check()
    expect(page.locator("#mask-drop")).to_be_visible()
    assert page.evaluate(PAINTED) == 0
    send_image(page, "#mask-drop", "drop", (40, 32))
    page.wait_for_function(f"({PAINTED})() > 0")
    assert page.evaluate(PAINTED) == 20 * 32  # the white left half
    send_image(page, "#mask-drop", "paste", (40, 32))
    expect(page.locator("#mask-undo")).to_be_enabled()


def test_scheduler_is_a_grouped_select_of_the_schema_names(
    page: Page, base_url: str, artifacts: Path
) -> None:
    schema = input_schema(base_url, "sdserve/tiny-sd")
    scheduler = schema["properties"]["scheduler"]
    options = page.eval_on_selector_all("#in-scheduler option", "os => os.map(o => o.value)")
    assert sorted(options) == sorted(scheduler["enum"]) and len(options) > 30
    groups = page.eval_on_selector_all(
        "#in-scheduler optgroup",
        "gs => gs.map(g => [g.label, [...g.querySelectorAll('option')].map(o => o.value)])",
    )
    assert [label for label, _ in groups] == ["Replicate", "AUTOMATIC1111"]
    assert dict(groups) == scheduler["x-enum-groups"]
    expect(page.locator("#in-scheduler")).to_have_value(scheduler["default"])
    open_settings(page)  # "Size and sampling" is folded below Run
    page.select_option("#in-scheduler", "DPM++ 2M Karras")
    page.fill("#in-prompt", "a select, not a text box")
    fill_small(page)
    page.click("#run")
    result = result_of(page)
    prediction_id = result.get_attribute("data-id")
    assert prediction_id
    assert prediction(base_url, prediction_id)["input"]["scheduler"] == "DPM++ 2M Karras"
    page.locator("#in-scheduler").scroll_into_view_if_needed()
    shot(page, artifacts, "inputs-03-scheduler-select", full_page=False)


def test_size_presets_stay_within_the_model_budget(page: Page, base_url: str) -> None:
    schema = input_schema(base_url, "sdserve/tiny-sd")
    width, height = schema["properties"]["width"], schema["properties"]["height"]
    budget = width["default"] * height["default"]
    open_settings(page)
    presets = page.locator("#size-presets button")
    assert presets.count() >= 5
    for index in range(presets.count()):
        button = presets.nth(index)
        button.click()
        expect(button).to_have_attribute("aria-pressed", "true")
        w = int(page.input_value("#in-width"))
        h = int(page.input_value("#in-height"))
        assert w % 8 == 0 and h % 8 == 0
        # within the budget, unless a side would fall below the 64-pixel minimum
        assert w * h <= budget or min(w, h) == 64, (w, h)
        across, down = (int(part) for part in button.locator("span").inner_text().split(":"))
        if min(w, h) > 64:
            assert abs(w / h - across / down) < 0.15
    page.click("#size-presets button:has-text('1:1')")
    assert (page.input_value("#in-width"), page.input_value("#in-height")) == ("64", "64")
    # the same rule at a real budget: SDXL's 1024x1024 in 64-pixel steps, SD 1.5's 512x512
    sizes = page.evaluate(
        "async () => { const m = await import('/static/inputs.js');"
        " return [m.presetSize(16, 9, 1024 * 1024, m.sideStep(1024, 1024)),"
        " m.presetSize(9, 16, 1024 * 1024, 64),"
        " m.presetSize(3, 2, 512 * 512, m.sideStep(512, 512))]; }"
    )
    assert sizes == [[1344, 768], [768, 1344], [576, 384]]
    for w, h in sizes:
        assert w * h <= 1024 * 1024 and w % 64 == 0 and h % 64 == 0


def test_example_prompts_and_the_lora_picker(page: Page, artifacts: Path) -> None:
    chips = page.locator("#prompt-examples button")
    assert chips.count() >= 3
    chips.first.click()
    expect(page.locator("#in-prompt")).to_have_value(chips.first.inner_text())
    page.locator("#group-lora summary").click()
    picker = page.locator("#lora-picker")
    expect(picker.locator("option[value='lora:tiny-style']")).to_have_count(1)
    picker.select_option("lora:tiny-style")
    expect(page.locator("#in-lora")).to_have_value("tiny-style")
    page.fill("#in-lora", "")
    expect(picker).to_have_value("")
    picker.select_option("lora:tiny-style")
    shot(page, artifacts, "inputs-04-examples-and-lora-picker", full_page=False)


def test_a_server_side_field_error_stays_visible(page: Page, artifacts: Path) -> None:
    page.fill("#in-prompt", "a bad LoRA name")
    fill_small(page)
    page.locator("#group-lora summary").click()
    # type and press Enter at once: the client's delayed check must not wipe the answer
    page.locator("#in-lora").press_sequentially("no-such-lora", delay=10)
    page.keyboard.press("Enter")
    error = page.locator("#in-lora-error")
    expect(error).to_contain_text("no-such-lora", timeout=playground.RUN_TIMEOUT_MS)
    page.wait_for_timeout(1500)  # three times the client check's delay
    expect(error).to_contain_text("no-such-lora")
    expect(page.locator("#in-lora")).to_have_attribute("aria-invalid", "true")
    shot(page, artifacts, "inputs-05-server-error-stays", full_page=False)
    # a 422 answers within the client check's delay: choose a name the server refuses (a
    # page built from an older schema) and run at once; the answer must stay
    page.fill("#in-lora", "")
    page.eval_on_selector(
        "#in-scheduler", "s => s.append(new Option('NoSuchSampler', 'NoSuchSampler'))"
    )
    page.select_option("#in-scheduler", "NoSuchSampler")
    page.click("#run")
    error = page.locator("#in-scheduler-error")
    expect(error).to_contain_text("NoSuchSampler")
    page.wait_for_timeout(1500)
    expect(error).to_contain_text("unknown scheduler 'NoSuchSampler'")


def test_long_allowed_lists_are_shortened(page: Page, base_url: str, artifacts: Path) -> None:
    # an unknown scheduler can no longer be typed; a page built from an older schema could
    # still send one: the server's 422 shows beside the field, its list of names cut short
    before = prediction_count(base_url)
    page.eval_on_selector(
        "#in-scheduler", "s => s.append(new Option('NoSuchSampler', 'NoSuchSampler'))"
    )
    open_settings(page)
    page.select_option("#in-scheduler", "NoSuchSampler")
    page.fill("#in-prompt", "unknown sampler")
    fill_small(page)
    page.click("#run")
    error = page.locator("#in-scheduler-error")
    expect(error).to_contain_text("unknown scheduler 'NoSuchSampler'")
    expect(error).to_contain_text("K_EULER")
    expect(error).to_contain_text("more)")
    assert len(error.inner_text()) < 300
    shot(page, artifacts, "inputs-06-short-allowed-list", full_page=False)
    assert prediction_count(base_url) == before
    message = page.evaluate(
        "async () => (await import('/static/inputs.js')).readableMessage("
        "'invalid_input: lora: no LoRA named x (allowed: a, b, c, d, e, f, g, h, i, j)')"
    )
    assert message.endswith("(allowed: a, b, c, d, e, f, g, h …and 2 more)")


def test_mask_download_undo_redo_colour_and_brush(
    page: Page, artifacts: Path, tmp_path: Path
) -> None:
    page.select_option("#model", "sdserve/tiny-sd-inpaint")
    page.get_by_label("Inpaint", exact=True).check()
    page.set_input_files("#image-file", str(write_photo(tmp_path / "photo.png")))
    expect(page.locator("#mask-tools")).to_be_visible()
    # the brush is a share of the image: 10% of 64 px
    expect(page.locator("#brush-size-value")).to_contain_text("10% of the image (6 px)")
    page.fill("#in-prompt", "nothing painted yet")
    page.click("#run")
    expect(page.locator("#mask-error")).to_contain_text("Paint the area")
    paint_stroke(page)
    expect(page.locator("#mask-error")).to_be_empty()  # the hint goes once there is paint
    painted = page.evaluate(PAINTED)
    assert painted > 0
    overlay = page.evaluate(OVERLAY_ALPHA)
    shot(page, artifacts, "inputs-07-mask-magenta", full_page=False)

    # the downloaded mask: a PNG of the image's size, white exactly where it is painted
    with page.expect_download() as download:
        page.click("#mask-download")
    assert download.value.suggested_filename == "mask.png"
    mask = Image.open(io.BytesIO(Path(download.value.path()).read_bytes()))
    assert mask.format == "PNG" and mask.size == (64, 64)
    white = [1 if value >= 128 else 0 for value in mask.convert("L").getdata()]
    assert white == overlay

    # undo and redo, by button and by keyboard
    page.click("#mask-undo")
    assert page.evaluate(PAINTED) == 0
    page.click("#mask-redo")
    assert page.evaluate(PAINTED) == painted
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("Control+z")
    assert page.evaluate(PAINTED) == 0
    page.keyboard.press("Control+Shift+z")
    assert page.evaluate(PAINTED) == painted
    page.click("#mask-invert")
    assert page.evaluate(PAINTED) == 64 * 64 - painted
    page.click("#mask-undo")
    assert page.evaluate(PAINTED) == painted

    # another colour for dark or magenta images; the outline is opaque
    page.select_option("#mask-colour", label="Cyan")
    colours = page.evaluate(
        "() => { const v = document.getElementById('mask-view');"
        " const d = v.getContext('2d').getImageData(0, 0, v.width, v.height).data;"
        " const seen = new Set(); for (let i = 0; i < d.length; i += 4)"
        " if (d[i + 3] > 0) seen.add([d[i], d[i + 1], d[i + 2], d[i + 3]].join());"
        " return [...seen]; }"
    )
    rgba = [[int(part) for part in colour.split(",")] for colour in colours]
    assert {alpha for *_, alpha in rgba} == {120, 255}  # translucent inside, opaque outline
    # canvases keep premultiplied alpha: a unit off here and there
    assert all(abs(r - 0) <= 2 and abs(g - 220) <= 2 and abs(b - 255) <= 2 for r, g, b, _ in rgba)
    expect(page.locator("#mask-help")).to_contain_text("cyan")
    shot(page, artifacts, "inputs-08-mask-cyan", full_page=False)


def test_history_cards_filter_and_remove(page: Page, base_url: str, artifacts: Path) -> None:
    page.fill("#in-prompt", "for the history filters")
    fill_small(page)
    page.click("#run")
    newest = result_of(page).get_attribute("data-id")
    card = page.locator(f"#gallery .card[data-id='{newest}']")
    expect(card).to_be_visible()
    expect(card).to_contain_text("sdserve/tiny-sd")
    expect(card).to_contain_text("text to image")
    expect(card.locator(".card-size")).to_have_text("64×64")
    expect(card.locator(".card-count")).to_have_text("1 image")
    expect(card.locator("time")).not_to_be_empty()
    item = page.locator(f"#gallery li:has(.card[data-id='{newest}'])")
    expect(item).to_be_visible()
    page.select_option("#history-status", "failed")
    expect(item).to_be_hidden()
    expect(page.locator("#history-note")).to_contain_text("match")
    page.select_option("#history-status", "succeeded")
    expect(item).to_be_visible()
    page.select_option("#history-model", "sdserve/tiny-sdxl")
    expect(item).to_be_hidden()
    page.select_option("#history-model", "sdserve/tiny-sd")
    expect(item).to_be_visible()
    page.locator("#history").scroll_into_view_if_needed()
    shot(page, artifacts, "inputs-09-history-filtered", full_page=False)
    page.select_option("#history-model", "")
    page.select_option("#history-status", "")
    # remove: gone from this browser's list (after a reload too), kept on the server
    item.get_by_role("button", name=f"Remove {newest} from this list").click()
    expect(card).to_have_count(0)
    page.reload()
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    expect(page.locator("#gallery .card").first).to_be_visible()
    expect(page.locator(f"#gallery .card[data-id='{newest}']")).to_have_count(0)
    assert prediction(base_url, newest or "")["status"] == "succeeded"


def test_token_dialog_and_model_help_on_a_server_without_tokens(
    page: Page, artifacts: Path
) -> None:
    help_text = page.locator("#model-help").inner_text()
    assert "sd1" in help_text and "/" not in help_text.replace("sdserve/", "")
    page.click("#token-button")
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).not_to_contain_text("needs a token")
    expect(dialog).to_contain_text("does not ask for a token")
    shot(page, artifacts, "inputs-10-token-dialog-no-tokens", full_page=False)
    page.click("#token-close")
