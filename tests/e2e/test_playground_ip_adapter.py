"""The image prompt (IP-Adapter) section and the ControlNet units on a union ControlNet or a
T2I-Adapter in the web playground, in real Chromium on a demo server.

The demo serves ``tiny-sd-ip-adapter`` and ``tiny-sdxl-ip-adapter`` (one per family, so
the adapter select stays hidden), ``tiny-sdxl-union`` (a union ControlNet) and
``tiny-sd-t2i-adapter-canny`` (a T2I-Adapter). Screenshots land beside the other playground
ones (``artifacts/playground/``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import ImageChops

from tests.e2e import test_playground as playground
from tests.e2e.test_playground import (
    Page,
    expect,
    fill_small,
    prediction,
    prediction_count,
    shot,
    write_photo,
)
from tests.e2e.test_playground_controlnet import (
    add_unit,
    input_schema,
    open_section,
    pixels,
    run_small,
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

DROP_A_SQUARE = (
    "async zone => { const c = document.createElement('canvas'); c.width = c.height = 32;"
    " const x = c.getContext('2d'); x.fillStyle = '#2a6'; x.fillRect(0, 0, 32, 32);"
    " const blob = await new Promise(r => c.toBlob(r, 'image/png'));"
    " const data = new DataTransfer(); data.items.add(new File([blob], 'dropped.png',"
    " { type: 'image/png' })); zone.dispatchEvent(new DragEvent('drop', { dataTransfer: data,"
    " bubbles: true, cancelable: true })); }"
)


def open_image_prompt(page: Page) -> None:
    section = page.locator("#group-ipadapter")
    expect(section).to_be_visible()
    if section.get_attribute("open") is None:
        section.locator("summary").click()


# the image prompt -----------------------------------------------------------------------


def test_image_prompt_steers_the_image_and_comes_back_on_reuse(
    page: Page, base_url: str, artifacts: Path, tmp_path: Path
) -> None:
    schema = input_schema(base_url, "sdserve/tiny-sd")
    assert schema["properties"]["ip_adapter"]["enum"] == ["tiny-sd-ip-adapter"]
    page.select_option("#model", "sdserve/tiny-sd")
    # the section stands for the three inputs: none of them is repeated under "Other inputs"
    for name in ("ip_adapter_image", "ip_adapter_scale", "ip_adapter"):
        assert page.locator(f"#group-other [data-field='{name}']").count() == 0
    assert page.locator("[data-field='ip_adapter_image']").count() == 0
    expect(page.locator("#group-ipadapter [data-field='ip_adapter_scale']")).to_have_count(1)
    open_image_prompt(page)
    section = page.locator("#group-ipadapter")
    expect(section.get_by_label("Image prompt scale", exact=True)).to_have_value("0.6")
    expect(section.get_by_label("IP-Adapter", exact=True)).to_be_hidden()  # one fits: no choice

    # the same seed without an image prompt, to compare with
    plain = run_small(page, "a red fox", seed=2468)
    plain_record = prediction(base_url, plain.get_attribute("data-id") or "")
    assert plain_record["input"].get("ip_adapter_image") is None

    section.get_by_label("Image prompt file").set_input_files(
        str(write_photo(tmp_path / "look.png"))
    )
    expect(section.get_by_role("img", name="The image prompt")).to_be_visible()
    section.get_by_label("Image prompt scale", exact=True).fill("1.5")
    shot(page, artifacts, "ipa-01-image-prompt")
    prompted = run_small(page, "a red fox", seed=2468)
    record = prediction(base_url, prompted.get_attribute("data-id") or "")
    sent = record["input"]
    assert "/files/" in sent["ip_adapter_image"]  # uploaded through /v1/files
    assert sent["ip_adapter_scale"] == 1.5
    assert sent.get("ip_adapter") is None  # the server's default: the one fitting the model
    before, after = pixels(plain_record["output"][0]), pixels(record["output"][0])
    assert before.size == after.size == (64, 64)
    assert ImageChops.difference(before, after).getbbox() is not None  # it steered the image
    # the snippets carry it
    curl = prompted.locator(".snippet pre").nth(0).inner_text()
    python = prompted.locator(".snippet pre").nth(1).inner_text()
    assert f'"ip_adapter_image": "{sent["ip_adapter_image"]}"' in curl
    assert '"ip_adapter_scale": 1.5' in curl
    assert f'"ip_adapter_image": "{sent["ip_adapter_image"]}",' in python
    shot(page, artifacts, "ipa-02-result")

    # reuse puts the image and the scale back
    section.get_by_role("button", name="Remove the image prompt").click()
    section.get_by_label("Image prompt scale", exact=True).fill("0.3")
    prompted.get_by_role("button", name="Reuse these settings (same seed)").click()
    expect(section.get_by_role("img", name="The image prompt")).to_be_visible()
    expect(section.get_by_label("Image prompt scale", exact=True)).to_have_value("1.5")
    assert page.locator("#ipa-preview").evaluate("i => i.naturalWidth") > 0
    again = run_small(page, "a red fox", seed=2468)
    repeated = prediction(base_url, again.get_attribute("data-id") or "")
    assert repeated["input"]["ip_adapter_image"] == sent["ip_adapter_image"]  # not uploaded again
    assert ImageChops.difference(pixels(repeated["output"][0]), after).getbbox() is None

    # a dropped image sets it too; removed, neither the image nor its scale is sent
    section.get_by_role("button", name="Remove the image prompt").click()
    expect(section.get_by_role("img", name="The image prompt")).to_be_hidden()
    section.locator("#ipa-drop").evaluate(DROP_A_SQUARE)
    expect(section.get_by_role("img", name="The image prompt")).to_be_visible()
    section.get_by_role("button", name="Remove the image prompt").click()
    with page.expect_request(
        lambda r: r.url.endswith("/predictions") and r.method == "POST"
    ) as sent_off:
        run_small(page, "a red fox", seed=2468)
    body = sent_off.value.post_data_json["input"]
    assert not any(key.startswith("ip_adapter") for key in body), body


# union ControlNets and T2I-Adapters -----------------------------------------------------


def test_union_unit_needs_a_control_type_and_sends_it(
    page: Page, base_url: str, artifacts: Path, tmp_path: Path
) -> None:
    page.select_option("#model", "sdserve/tiny-sdxl")
    open_section(page)
    unit = add_unit(page)
    unit.get_by_label("Control image file").set_input_files(str(write_photo(tmp_path / "p.png")))
    control_type = unit.get_by_label("Control type", exact=True)
    expect(control_type).to_be_hidden()  # the first choice is a plain ControlNet
    unit.get_by_label("ControlNet", exact=True).select_option("tiny-sdxl-union")
    expect(control_type).to_be_visible()
    expect(control_type).to_have_value("")  # auto implies no type
    expect(unit.locator(".cn-kind")).to_contain_text("union ControlNet")

    # without a type it is not sent: the unit says why
    before = prediction_count(base_url)
    page.fill("#in-prompt", "a union unit")
    fill_small(page)
    page.click("#run")
    expect(unit.locator(".field-error").last).to_contain_text("choose the control type")
    expect(control_type).to_be_focused()
    assert prediction_count(base_url) == before
    shot(page, artifacts, "ipa-03-union-needs-a-type")

    # a preprocessor that implies a type picks it; one picked by hand stays
    unit.get_by_label("Preprocessor", exact=True).select_option("canny")
    expect(control_type).to_have_value("canny")
    unit.get_by_label("Preprocessor", exact=True).select_option("none")
    expect(control_type).to_have_value("")
    control_type.select_option("depth")
    unit.get_by_label("Preprocessor", exact=True).select_option("canny")
    expect(control_type).to_have_value("depth")

    # the server's 422 on a union unit's field shows in that unit: units share the weight
    second = add_unit(page)
    second.get_by_label("Control image file").set_input_files(str(write_photo(tmp_path / "q.png")))
    second.get_by_label("ControlNet", exact=True).select_option("tiny-sdxl-union")
    second.get_by_label("Control type", exact=True).select_option("canny")
    second.get_by_label("Control weight", exact=True).fill("1.2")
    page.click("#run")
    expect(second.locator(".field-error").last).to_contain_text("share their weight")
    expect(second.get_by_label("Control weight", exact=True)).to_have_attribute(
        "aria-invalid", "true"
    )
    assert prediction_count(base_url) == before
    page.get_by_role("button", name="Remove unit 2").click()

    steered = run_small(page, "a union unit", seed=99)
    record = prediction(base_url, steered.get_attribute("data-id") or "")
    (sent,) = record["input"]["controlnets"]
    assert sent["model"] == "tiny-sdxl-union"
    assert sent["control_type"] == "depth" and sent["preprocessor"] == "canny"

    # reuse puts the unit back with its type
    page.get_by_role("button", name="Remove unit 1").click()
    steered.get_by_role("button", name="Reuse these settings (same seed)").click()
    restored = page.locator("#controlnet-units > li")
    expect(restored).to_have_count(1)
    expect(restored.get_by_label("ControlNet", exact=True)).to_have_value("tiny-sdxl-union")
    expect(restored.get_by_label("Control type", exact=True)).to_have_value("depth")
    expect(restored.get_by_label("Preprocessor", exact=True)).to_have_value("canny")
    shot(page, artifacts, "ipa-04-union-reused")


def test_union_picked_by_type_needs_no_control_type(page: Page, base_url: str) -> None:
    sdxl = input_schema(base_url, "sdserve/tiny-sdxl")["properties"]["controlnets"]
    assert sdxl["x-controlnets"]["depth"]["picks"] == "tiny-sdxl-union"
    page.select_option("#model", "sdserve/tiny-sdxl")
    open_section(page)
    unit = add_unit(page)
    unit.get_by_label("ControlNet", exact=True).select_option("depth")
    expect(unit.get_by_label("Control type", exact=True)).to_be_hidden()
    expect(unit.locator(".cn-kind")).to_contain_text("union ControlNet")


def test_t2i_adapter_unit_keeps_its_range_and_runs_text_to_image_only(
    page: Page, base_url: str, artifacts: Path, tmp_path: Path
) -> None:
    page.select_option("#model", "sdserve/tiny-sd")
    open_section(page)
    unit = add_unit(page)
    unit.get_by_label("Control image file").set_input_files(str(write_photo(tmp_path / "p.png")))
    start = unit.get_by_label("Start (share of steps)")
    end = unit.get_by_label("End (share of steps)")
    start.fill("0.2")
    end.fill("0.8")
    unit.get_by_label("ControlNet", exact=True).select_option("tiny-sd-t2i-adapter-canny")
    # an SD T2I-Adapter acts on every step: both fixed, and the unit says why
    expect(start).to_be_disabled()
    expect(start).to_have_value("0")
    expect(end).to_be_disabled()
    expect(end).to_have_value("1")
    expect(unit.locator(".cn-kind")).to_contain_text("T2I-Adapter (text to image only)")
    expect(unit.get_by_label("Control type", exact=True)).to_be_hidden()
    shot(page, artifacts, "ipa-05-t2i-adapter")

    # image to image: the server's 422 shows in the unit
    page.get_by_label("Image to image", exact=True).check()
    page.set_input_files("#image-file", str(write_photo(tmp_path / "photo.png")))
    before = prediction_count(base_url)
    page.fill("#in-prompt", "an adapter")
    fill_small(page, size=False)
    page.click("#run")
    expect(unit.locator(".field-error").last).to_contain_text("text to image only")
    assert prediction_count(base_url) == before

    page.get_by_label("Text to image", exact=True).check()
    steered = run_small(page, "an adapter", seed=5)
    record = prediction(base_url, steered.get_attribute("data-id") or "")
    (sent,) = record["input"]["controlnets"]
    assert sent["model"] == "tiny-sd-t2i-adapter-canny"
    assert sent.get("start", 0) == 0 and sent.get("end", 1) == 1

    # back on a ControlNet, the range is free again
    unit.get_by_label("ControlNet", exact=True).select_option("tiny-sd-canny")
    expect(start).to_be_enabled()
    expect(end).to_be_enabled()
    expect(unit.locator(".cn-kind")).to_be_hidden()
