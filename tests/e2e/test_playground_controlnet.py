"""ControlNet units in the web playground, in real Chromium on a demo server.

The demo serves ``tiny-sd-canny`` and ``tiny-sd-scribble`` for ``sdserve/tiny-sd`` and
``tiny-sdxl-canny`` for ``sdserve/tiny-sdxl``; a server with an empty ControlNet folder
has none. Screenshots land beside the other playground ones (``artifacts/playground/``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageChops

from tests.e2e import test_playground as playground
from tests.e2e.conftest import ServerProcess, free_port
from tests.e2e.test_playground import (
    RUN_TIMEOUT_MS,
    Browser,
    Page,
    expect,
    fill_small,
    loaded_size,
    open_playground,
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


def input_schema(base_url: str, model: str) -> dict[str, Any]:
    response = httpx.get(f"{base_url}/v1/models/{model}", timeout=30)
    response.raise_for_status()
    return dict(
        response.json()["latest_version"]["openapi_schema"]["components"]["schemas"]["Input"]
    )


def open_section(page: Page) -> None:
    section = page.locator("#group-controlnet")
    expect(section).to_be_visible()
    if section.get_attribute("open") is None:
        section.locator("summary").click()


def add_unit(page: Page) -> Any:
    page.get_by_role("button", name="Add a ControlNet unit").click()
    return page.locator("#controlnet-units > li").last


def pixels(url: str) -> Image.Image:
    response = httpx.get(url, timeout=30)
    response.raise_for_status()
    return Image.open(io.BytesIO(response.content)).convert("RGB")


def run_small(page: Page, prompt: str, seed: int) -> Any:
    """Run and wait for this run's own result (an earlier one may still be shown)."""
    page.fill("#in-prompt", prompt)
    fill_small(page)
    page.fill("#in-seed", str(seed))
    with page.expect_response(lambda r: r.url.endswith("/predictions") and r.status == 201) as made:
        page.click("#run")
    prediction_id = made.value.json()["id"]
    locator = page.locator(f"#result .prediction[data-id='{prediction_id}'][data-status=succeeded]")
    locator.wait_for(timeout=RUN_TIMEOUT_MS)
    return locator


# tests ----------------------------------------------------------------------------------


def test_section_offers_the_controlnets_that_fit_the_model(page: Page, base_url: str) -> None:
    schema = input_schema(base_url, "sdserve/tiny-sd")
    fitting = [name for name in schema["properties"]["controlnet_1"]["enum"] if name != "none"]
    most = schema["properties"]["controlnets"]["maxItems"]
    page.select_option("#model", "sdserve/tiny-sd")
    open_section(page)
    # the section stands for the flat controlnet_N inputs: they are not repeated as fields
    assert page.locator("[id^='in-controlnet']").count() == 0
    assert page.locator("#in-return_control_maps").count() == 0
    expect(page.get_by_label("Also return the control maps")).to_be_hidden()  # no unit yet
    unit = add_unit(page)
    expect(unit.locator("legend").first).to_have_text("ControlNet unit 1")
    offered = unit.get_by_label("ControlNet", exact=True).locator("option")
    assert offered.evaluate_all("os => os.map(o => o.value)") == fitting
    preprocessors = unit.get_by_label("Preprocessor", exact=True).locator("option")
    modules = httpx.get(f"{base_url}/controlnet/module_list", timeout=30).json()["module_list"]
    # the IP-Adapter modules are no ControlNet preprocessor: not offered
    modules = [name for name in modules if not name.startswith("ip-adapter")]
    assert preprocessors.evaluate_all("os => os.map(o => o.value)") == ["auto", *modules]
    expect(unit.get_by_label("Control weight", exact=True)).to_have_value("0.75")
    expect(unit.get_by_label("Start (share of steps)")).to_have_value("0")
    expect(unit.get_by_label("End (share of steps)")).to_have_value("1")
    # the input image is for image tasks only
    expect(unit.get_by_label("Use the input image")).to_be_disabled()
    page.get_by_label("Image to image", exact=True).check()
    expect(unit.get_by_label("Use the input image")).to_be_enabled()
    expect(page.get_by_label("Also return the control maps")).to_be_visible()
    # up to maxItems units, then "Add" is off; a removed unit's place is free again
    for _ in range(most - 1):
        add_unit(page)
    expect(page.locator("#controlnet-units > li")).to_have_count(most)
    expect(page.get_by_role("button", name="Add a ControlNet unit")).to_be_disabled()
    page.get_by_role("button", name="Remove unit 2").click()
    expect(page.locator("#controlnet-units > li")).to_have_count(most - 1)
    expect(page.locator("#controlnet-units > li > fieldset > legend").last).to_have_text(
        f"ControlNet unit {most - 1}"
    )
    expect(page.get_by_role("button", name="Add a ControlNet unit")).to_be_enabled()
    # another family: its own ControlNets
    sdxl = input_schema(base_url, "sdserve/tiny-sdxl")
    page.select_option("#model", "sdserve/tiny-sdxl")
    first = page.locator("#controlnet-units > li").first
    expected = [name for name in sdxl["properties"]["controlnet_1"]["enum"] if name != "none"]
    options = first.get_by_label("ControlNet", exact=True).locator("option")
    assert options.evaluate_all("os => os.map(o => o.value)") == expected
    assert "tiny-sd-canny" not in expected


def test_section_absent_where_no_controlnet_fits(
    browser: Browser, tmp_path_factory: pytest.TempPathFactory, artifacts: Path
) -> None:
    empty = tmp_path_factory.mktemp("no-controlnets")
    server = ServerProcess(
        data_dir=tmp_path_factory.mktemp("plain-server"),
        port=free_port(),
        extra_args=["--controlnet-dir", str(empty)],
    )
    server.start()
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        assert "controlnets" not in input_schema(server.url, "sdserve/tiny-sd")["properties"]
        open_playground(page, server.url)
        expect(page.locator("#group-controlnet")).to_be_hidden()
        expect(page.get_by_role("button", name="Add a ControlNet unit")).to_be_hidden()
        page.fill("#in-prompt", "no structure")
        fill_small(page)
        page.click("#run")
        record = prediction(server.url, result_of(page).get_attribute("data-id") or "")
        assert record["input"].get("controlnets", []) == []
        shot(page, artifacts, "cn-01-no-controlnets")
        assert not errors
    finally:
        context.close()
        server.stop()


def test_unit_with_an_uploaded_image_steers_the_image_and_shows_its_map(
    page: Page, base_url: str, artifacts: Path, tmp_path: Path
) -> None:
    page.select_option("#model", "sdserve/tiny-sd")
    # the same seed without a unit, to compare with
    plain = run_small(page, "a red fox", seed=4321)
    plain_record = prediction(base_url, plain.get_attribute("data-id") or "")
    assert len(plain_record["output"]) == 1

    open_section(page)
    unit = add_unit(page)
    unit.get_by_label("Control image file").set_input_files(
        str(write_photo(tmp_path / "photo.png"))
    )
    expect(unit.get_by_role("img", name="Control image of unit 1")).to_be_visible()
    unit.get_by_label("ControlNet", exact=True).select_option("tiny-sd-canny")
    unit.get_by_label("Control weight", exact=True).fill("1.5")
    page.get_by_label("Also return the control maps").check()
    shot(page, artifacts, "cn-02-unit-form")
    steered = run_small(page, "a red fox", seed=4321)

    record = prediction(base_url, steered.get_attribute("data-id") or "")
    (sent,) = record["input"]["controlnets"]
    assert sent["model"] == "tiny-sd-canny"
    assert sent["conditioning_scale"] == 1.5
    assert "/files/" in sent["image"]  # uploaded through /v1/files, as the input image is
    assert record["input"]["return_control_maps"] is True
    image_url, map_url = record["output"]
    # the unit changed the picture: same seed, other pixels
    before, after = pixels(plain_record["output"][0]), pixels(image_url)
    assert before.size == after.size == (64, 64)
    assert ImageChops.difference(before, after).getbbox() is not None

    # the page shows the image, then the map, labelled as a map
    figures = steered.locator(".images figure")
    expect(figures).to_have_count(2)
    expect(figures.nth(0).locator("figcaption")).to_contain_text("Seed 4321")
    expect(figures.nth(1)).to_have_class("map")
    expect(figures.nth(1).locator("figcaption")).to_contain_text(
        "Control map of unit 1 (tiny-sd-canny)"
    )
    assert figures.nth(1).locator("img").get_attribute("src") == map_url
    assert loaded_size(page, "#result .images figure.map img") == pixels(map_url).size
    # the snippets reproduce the unit
    curl = steered.locator(".snippet pre").nth(0).inner_text()
    python = steered.locator(".snippet pre").nth(1).inner_text()
    assert '"controlnets": [' in curl and '"model": "tiny-sd-canny"' in curl
    assert '"conditioning_scale": 1.5' in curl and '"return_control_maps": true' in curl
    assert '"controlnets": [{"model": "tiny-sd-canny"' in python
    assert '"return_control_maps": True' in python
    shot(page, artifacts, "cn-03-result-with-map")

    # reuse puts the unit back, with its image
    page.get_by_role("button", name="Remove unit 1").click()
    expect(page.locator("#controlnet-units > li")).to_have_count(0)
    steered.get_by_role("button", name="Reuse these settings (same seed)").click()
    restored = page.locator("#controlnet-units > li")
    expect(restored).to_have_count(1)
    expect(restored.get_by_label("ControlNet", exact=True)).to_have_value("tiny-sd-canny")
    expect(restored.get_by_label("Control weight", exact=True)).to_have_value("1.5")
    expect(restored.get_by_role("img", name="Control image of unit 1")).to_be_visible()
    expect(page.get_by_label("Also return the control maps")).to_be_checked()


def test_preview_map_draw_and_remove_a_unit(
    page: Page, base_url: str, artifacts: Path, tmp_path: Path
) -> None:
    page.select_option("#model", "sdserve/tiny-sd")
    open_section(page)
    first = add_unit(page)
    # a missing control image is explained in the unit, and nothing is sent
    before = prediction_count(base_url)
    page.fill("#in-prompt", "needs a control image")
    fill_small(page)
    page.click("#run")
    expect(first.locator(".field-error").first).to_contain_text("choose a control image")
    assert prediction_count(base_url) == before

    first.get_by_label("Control image file").set_input_files(str(write_photo(tmp_path / "p.png")))
    first.get_by_label("ControlNet", exact=True).select_option("canny")
    first.get_by_role("button", name="Preview map of unit 1").click()
    preview = first.get_by_role("img", name="Preprocessed map of unit 1")
    expect(preview).to_be_visible(timeout=30_000)
    expect(first.get_by_role("status")).to_contain_text("Map by canny")
    width, height = preview.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert width > 0 and height > 0
    # the map is black with white edges, as canny draws them
    colours = preview.evaluate(
        "i => { const c = document.createElement('canvas'); c.width = i.naturalWidth;"
        " c.height = i.naturalHeight; const x = c.getContext('2d'); x.drawImage(i, 0, 0);"
        " const d = x.getImageData(0, 0, c.width, c.height).data; let white = 0, black = 0;"
        " for (let k = 0; k < d.length; k += 4) { if (d[k] > 200) white++; else if (d[k] < 30)"
        " black++; } return [white, black]; }"
    )
    assert colours[0] > 0 and colours[1] > colours[0]
    shot(page, artifacts, "cn-04-preview-map")

    # a second unit drawn as a scribble
    second = add_unit(page)
    second.get_by_label("Draw", exact=True).check()
    second.get_by_label("ControlNet", exact=True).select_option("tiny-sd-scribble")
    pad = second.locator("canvas")
    expect(pad).to_be_visible()
    box = pad.bounding_box()
    assert box
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    shot(page, artifacts, "cn-05-two-units")

    # removing the first unit leaves only the scribble in the request
    page.get_by_role("button", name="Remove unit 1").click()
    expect(page.locator("#controlnet-units > li")).to_have_count(1)
    expect(page.locator("#controlnet-units > li > fieldset > legend").first).to_have_text(
        "ControlNet unit 1"
    )
    page.click("#run")
    record = prediction(base_url, result_of(page).get_attribute("data-id") or "")
    (sent,) = record["input"]["controlnets"]
    assert sent["model"] == "tiny-sd-scribble"
    scribble = pixels(sent["image"]).convert("L")
    assert scribble.size == (64, 64)  # the pad has the output's size
    assert scribble.getpixel((32, 32)) == 255 and scribble.getpixel((32, 5)) == 0
    assert (
        "return_control_maps" not in record["input"] or not record["input"]["return_control_maps"]
    )


def test_unit_uses_the_input_image_and_takes_a_dropped_one(
    page: Page, base_url: str, tmp_path: Path
) -> None:
    page.select_option("#model", "sdserve/tiny-sd")
    page.get_by_label("Image to image", exact=True).check()
    page.set_input_files("#image-file", str(write_photo(tmp_path / "photo.png")))
    open_section(page)
    unit = add_unit(page)
    unit.get_by_label("Use the input image").check()
    expect(unit.get_by_label("Control image file")).to_be_hidden()
    unit.get_by_role("button", name="Preview map of unit 1").click()
    expect(unit.get_by_role("img", name="Preprocessed map of unit 1")).to_be_visible(timeout=30_000)
    # a dropped file makes it the unit's own image
    other = add_unit(page)
    other.locator(".drop-zone").evaluate(
        "async zone => { const c = document.createElement('canvas'); c.width = c.height = 32;"
        " const x = c.getContext('2d'); x.fillStyle = '#fff'; x.fillRect(8, 8, 16, 16);"
        " const blob = await new Promise(r => c.toBlob(r, 'image/png'));"
        " const data = new DataTransfer(); data.items.add(new File([blob], 'dropped.png',"
        " { type: 'image/png' })); zone.dispatchEvent(new DragEvent('drop', { dataTransfer: data,"
        " bubbles: true, cancelable: true })); }"
    )
    expect(other.get_by_role("img", name="Control image of unit 2")).to_be_visible()
    page.fill("#in-prompt", "structure from the picture")
    fill_small(page, size=False)
    page.click("#run")
    record = prediction(base_url, result_of(page).get_attribute("data-id") or "")
    first, second = record["input"]["controlnets"]
    assert first.get("image") is None  # none: the request's own image
    assert pixels(second["image"]).size == (32, 32)
