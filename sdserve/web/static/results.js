// What a finished prediction offers beside its images: zoom to full size (tiny images
// enlarged without blur), compare an output with its input image on a slider, send an
// output back to the form as the input of a task, download all, copy a seed; and which
// of its parameters applied (the parameters table leaves out the ones that did nothing).

import { el } from "./form.js";

const OUTPAINT = ["outpaint_left", "outpaint_right", "outpaint_up", "outpaint_down"];
const SMALL = 256; // images narrower than this are enlarged in the zoom view

// The task a prediction ran, from its input.
export function taskOf(input) {
  if (!input.image) return "txt2img";
  if (OUTPAINT.some((name) => input[name] > 0)) return "outpaint";
  return input.mask ? "inpaint" : "img2img";
}

// [name, value] of the inputs that applied to this prediction, in their order.
export function appliedParams(input) {
  const task = taskOf(input);
  const refine = input.refine || "no_refiner";
  const skip = (name, value) => {
    if (value === null || value === undefined) return true;
    if (OUTPAINT.includes(name)) return task !== "outpaint" || !(value > 0);
    if (name === "prompt_strength") return task === "txt2img" || task === "outpaint";
    if (name === "refine") return refine === "no_refiner";
    if (name === "high_noise_frac") return refine !== "expert_ensemble_refiner";
    if (name === "refine_steps") return refine !== "base_image_refiner";
    if (name === "lora_scale") return !input.lora;
    if (name === "ip_adapter_scale" || name === "ip_adapter") return !input.ip_adapter_image;
    if (name === "hires_strength" || name === "hires_steps") return input.hires_scale == null;
    if (name === "controlnets") return !(Array.isArray(value) && value.length);
    if (name === "return_control_maps") return !(input.controlnets || []).length;
    if (name === "negative_prompt") return value === "";
    return false;
  };
  return Object.entries(input).filter(([name, value]) => !skip(name, value));
}

// zoom and compare dialog ------------------------------------------------------------------

let dialog = null;

function zoomDialog() {
  if (dialog) return dialog;
  const close = el("button", { type: "button", class: "zoom-close", text: "Close" });
  dialog = el("dialog", { id: "zoom-dialog", class: "zoom-dialog", "aria-labelledby": "zoom-title" },
    el("div", { class: "progress-head" }, el("h2", { id: "zoom-title" }), close),
    el("div", { class: "zoom-body" }));
  close.addEventListener("click", () => dialog.close());
  // a click on the backdrop (outside the dialog's box) closes it too
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close();
  });
  document.body.append(dialog);
  return dialog;
}

// Open the dialog with `title` and `content`; focus goes back to `opener` when it closes
// (Esc, Close, or a click beside it). showModal() keeps the keyboard inside the dialog.
function openDialog(title, content, opener) {
  const box = zoomDialog();
  box.querySelector("#zoom-title").textContent = title;
  box.querySelector(".zoom-body").replaceChildren(content);
  box.addEventListener("close", () => opener && opener.focus(), { once: true });
  box.showModal();
  box.querySelector(".zoom-close").focus();
}

// An image at its full resolution; tiny ones enlarged by a whole factor, pixels kept sharp.
function fullImage(url, alt, natural) {
  const image = el("img", { src: url, alt, class: "zoom-image" });
  const [width] = natural;
  if (width && width < SMALL) {
    const factor = Math.max(1, Math.floor(Math.min(512, window.innerWidth * 0.85) / width));
    image.style.width = `${width * factor}px`;
    image.classList.add("enlarged");
  }
  return image;
}

export function openZoom(url, alt, natural, opener) {
  const [width, height] = natural;
  const size = width ? ` (${width}×${height})` : "";
  openDialog(`${alt}${size}`, el("div", { class: "zoom-stage" }, fullImage(url, alt, natural)), opener);
}

// The output over its input, the split on a slider: left of it the input, right the output.
export function openCompare(output, input, natural, opener) {
  const [width] = natural;
  const before = el("img", { src: input.image, alt: "Input image", class: "compare-before" });
  const after = fullImage(output.url, output.alt, natural);
  after.classList.add("compare-after");
  const line = el("div", { class: "compare-line", "aria-hidden": "true" });
  const stage = el("div", { class: "compare-stage" }, before, after, line);
  const box = el("div", { class: "compare" });
  if (width) box.style.width = after.style.width || `${width}px`;
  if (taskOf(input) === "outpaint") placeOutpaintInput(before, input, natural);
  const slider = el("input", { type: "range", min: "0", max: "100", value: "50", id: "compare-split",
    "aria-label": "Split between the input (left) and the output (right), in percent" });
  const split = () => {
    after.style.clipPath = `inset(0 0 0 ${slider.value}%)`;
    line.style.left = `${slider.value}%`;
  };
  slider.addEventListener("input", split);
  split();
  const label = el("p", { class: "help", text: "Left of the line: the input image. Right: the output. Move the slider (arrow keys) to compare." });
  box.append(stage, slider, label);
  openDialog(`Compare: ${output.alt}`, box, opener);
  slider.focus();
}

// an outpainted output is larger than its input: the input sits where it was extended from
function placeOutpaintInput(image, input, [width, height]) {
  if (!width || !height) return;
  const left = input.outpaint_left || 0;
  const up = input.outpaint_up || 0;
  const innerWidth = width - left - (input.outpaint_right || 0);
  const innerHeight = height - up - (input.outpaint_down || 0);
  Object.assign(image.style, {
    left: `${(left / width) * 100}%`,
    top: `${(up / height) * 100}%`,
    width: `${(innerWidth / width) * 100}%`,
    height: `${(innerHeight / height) * 100}%`,
  });
  image.classList.add("placed");
}

// the result's buttons -------------------------------------------------------------------

async function copyText(text, button, label) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    // no clipboard without https: show the seed selected for Ctrl+C
    window.prompt("Copy the seed:", text);
  }
  setTimeout(() => { button.textContent = label; }, 1500);
}

// Add zoom, compare, copy seed and "use as input" to each output figure of `root`, and
// "Download all" beside the images. `uses`: [{task, label}] the form offers now;
// `useAsInput(task, url)` fills the form with the image for that task; `seeds`: false for
// a prediction whose seed did nothing (an upscale).
export function decorateResult(root, prediction, { uses, useAsInput, seeds = true }) {
  const input = prediction.input || {};
  const images = root.querySelector(".images");
  if (!images) return;
  const figures = [...images.querySelectorAll("figure:not(.map)")];
  figures.forEach((figure, index) => {
    const image = figure.querySelector("img");
    const url = image.getAttribute("src");
    const alt = image.getAttribute("alt");
    const zoom = el("button", { type: "button", class: "zoom-button", "aria-label": `Zoom: ${alt}`,
      title: "Click to see it at full size" });
    image.replaceWith(zoom);
    zoom.append(image);
    const natural = () => [image.naturalWidth, image.naturalHeight];
    zoom.addEventListener("click", () => openZoom(url, alt, natural(), zoom));
    const caption = figure.querySelector("figcaption");
    const seed = !seeds || input.seed === undefined || input.seed === null ? null : input.seed + index;
    const tools = el("div", { class: "image-tools" });
    if (seed !== null) {
      const copy = el("button", { type: "button", class: "small", text: "Copy seed",
        "aria-label": `Copy seed ${seed}` });
      copy.addEventListener("click", () => copyText(String(seed), copy, "Copy seed"));
      tools.append(copy);
    }
    if (input.image) {
      const compare = el("button", { type: "button", class: "small", text: "Compare with input" });
      compare.addEventListener("click", () => openCompare({ url, alt }, input, natural(), compare));
      tools.append(compare);
    }
    caption.after(tools);
    if (!uses.length) return;
    // the visible words are part of each button's name (WCAG "label in name")
    const useRow = el("div", { class: "image-tools", role: "group", "aria-label": `Use output ${index + 1} as an input` },
      el("span", { class: "help", text: "Use as input:" }));
    for (const { task, label } of uses) {
      const use = el("button", { type: "button", class: "small", text: label,
        "aria-label": `Use output ${index + 1} in ${label}` });
      use.addEventListener("click", () => useAsInput(task, url));
      useRow.append(use);
    }
    tools.after(useRow);
  });
  if (figures.length > 1 || images.querySelector("figure.map")) {
    const all = el("button", { type: "button", text: "Download all" });
    all.addEventListener("click", () => {
      for (const link of images.querySelectorAll("figcaption a[download]")) link.click();
    });
    images.before(el("div", { class: "button-row" }, all));
  }
}
