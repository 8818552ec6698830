"""Upscalers in the playground, in a real browser: picked from their own group of the model
picker, they get an upscale form (an image and a scale, no task or prompt), run through the
same upload flow as the image tasks, and show the upscaled image at exactly the asked size;
a diffusion model picked after it gets its own form back.

Screenshots go under ``artifacts/playground/`` (``upscale-*.png``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import test_playground as playground
from tests.e2e.test_playground import (
    Page,
    expect,
    loaded_size,
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

UPSCALER = "upscalers/tiny-realesr-x4"
INPUT_SIZE = (64, 48)


def test_upscale_an_image_then_back_to_a_diffusion_model(
    page: Page, base_url: str, artifacts: Path, tmp_path: Path
) -> None:
    # the upscalers sit in a group of their own, apart from the models that draw
    in_group = page.eval_on_selector_all(
        '#model optgroup[label="Upscalers"] option', "os => os.map(o => o.value)"
    )
    assert UPSCALER in in_group
    assert "sdserve/tiny-sd" not in in_group
    page.select_option("#model", UPSCALER)
    expect(page.locator("#model-help")).to_contain_text("upscaler")
    # the upscale form: no task, prompt, examples, LoRA or sampling; the image and a scale
    expect(page.locator("#tasks")).to_be_hidden()
    expect(page.get_by_label("Text to image", exact=True)).to_be_hidden()
    assert page.locator("#in-prompt").count() == 0
    for panel in ("#prompt-examples", "#group-settings", "#group-lora", "#group-controlnet"):
        expect(page.locator(panel)).to_be_hidden()
    expect(page.locator("#image-file")).to_be_visible()
    expect(page.get_by_label("Scale", exact=True)).to_have_value("4")  # the upscaler's own
    expect(page.locator("#group-upscale-size")).to_be_visible()
    expect(page.locator("#in-upscale_width")).to_be_hidden()  # folded: scale is the usual way
    options = page.eval_on_selector_all("#in-upscaler_2 option", "os => os.map(o => o.value)")
    assert options[0] == "" and "upscalers/lanczos" in options
    shot(page, artifacts, "upscale-01-form", full_page=False)

    # Run without an image says so beside the image input
    page.click("#run")
    expect(page.locator("#image-error")).to_contain_text("Choose an image")

    photo = write_photo(tmp_path / "small.png", INPUT_SIZE)
    page.set_input_files("#image-file", str(photo))
    expect(page.locator("#image-help")).to_contain_text("64×48")
    page.get_by_label("Scale", exact=True).fill("2")
    page.click("#run")
    result = result_of(page)
    expected = (INPUT_SIZE[0] * 2, INPUT_SIZE[1] * 2)
    assert loaded_size(page, "#result .images img") == expected
    expect(result.locator("figcaption")).to_contain_text("64×48 → 128×96")
    prediction_id = result.get_attribute("data-id")
    assert prediction_id
    record = prediction(base_url, prediction_id)
    assert record["model"] == UPSCALER
    assert record["input"]["scale"] == 2
    assert "/files/" in record["input"]["image"]  # uploaded as the image tasks do
    # what an upscale has, not the generation fields stored beside it at their defaults
    params = result.locator("table.params th").all_inner_texts()
    assert "scale" in params and "image" in params
    assert "prompt" not in params and "num_inference_steps" not in params
    expect(result.get_by_role("button", name="Copy seed")).to_have_count(0)
    snippet = result.locator(".snippet pre").first.inner_text()
    assert '"scale": 2' in snippet and "seed" not in snippet and "prompt" not in snippet
    # the history card says what was done, not "(no prompt)"
    card = page.locator(f'#gallery .card[data-id="{prediction_id}"]')
    expect(card.locator(".card-prompt")).to_have_text("upscale 2x: 64×48 → 128×96")
    expect(card.locator(".card-task")).to_have_text("upscale")
    card.screenshot(path=str(artifacts / "upscale-02-history-card.png"))
    shot(page, artifacts, "upscale-02-result", full_page=False)
    result.screenshot(path=str(artifacts / "upscale-02-result-pane.png"))
    # compare with the input: the input under the output, on a slider
    result.get_by_role("button", name="Compare with input").click()
    expect(page.locator("#compare-split")).to_be_visible()
    shot(page, artifacts, "upscale-03-compare", full_page=False)
    page.keyboard.press("Escape")

    # a reload keeps the upscaler and its form, as the page keeps any model's
    playground.open_playground(page, base_url)
    expect(page.locator("#model")).to_have_value(UPSCALER)
    expect(page.locator("#tasks")).to_be_hidden()
    expect(page.get_by_label("Scale", exact=True)).to_have_value("2")

    # back to a diffusion model: its form as it was
    page.select_option("#model", "sdserve/tiny-sd")
    expect(page.locator("#tasks")).to_be_visible()
    expect(page.get_by_label("Text to image", exact=True)).to_be_checked()
    expect(page.locator("#in-prompt")).to_be_visible()
    expect(page.locator("#prompt-examples")).to_be_visible()
    expect(page.locator("#image-section")).to_be_hidden()
    expect(page.locator("#group-scale")).to_be_hidden()
    expect(page.locator("#group-output summary")).to_have_text("Output and safety")
    shot(page, artifacts, "upscale-04-back-to-diffusion", full_page=False)
