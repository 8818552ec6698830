// Inputs that help a person fill the form: dropping and pasting images, size presets by
// aspect ratio, example prompts, the LoRA picker and readable lists of allowed values.

import { el } from "./form.js";

// -- images: drop and paste ---------------------------------------------------------------

function imageOf(items) {
  return [...(items || [])].find((item) => item.type && item.type.startsWith("image/")) || null;
}

// Every image input takes a file dropped on `zone` or pasted while the focus is inside
// `pasteTarget` (the zone itself by default; it is focusable, so a click then Ctrl+V works).
export function acceptImages(zone, onFile, { pasteTarget = zone } = {}) {
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = imageOf(event.dataTransfer && event.dataTransfer.files);
    if (file) onFile(file);
  });
  pasteTarget.addEventListener("paste", (event) => {
    if (event.defaultPrevented) return; // an inner input (the mask inside the image section) took it
    const item = [...((event.clipboardData && event.clipboardData.items) || [])]
      .find((entry) => entry.kind === "file" && entry.type.startsWith("image/"));
    if (!item) return;
    event.preventDefault();
    onFile(item.getAsFile());
  });
}

// -- readable errors ----------------------------------------------------------------------

const SHOWN_ALLOWED = 8;

// "a, b, c, … (allowed values)" short enough to read beside a field
export function allowedText(values) {
  if (values.length <= SHOWN_ALLOWED) return values.join(", ");
  return `${values.slice(0, SHOWN_ALLOWED).join(", ")} …and ${values.length - SHOWN_ALLOWED} more`;
}

// shorten an "(allowed: a, b, …)" list inside a server message (a failed job's error)
export function readableMessage(message) {
  return message.replace(/\(allowed: ([^)]*)\)/, (whole, list) => `(allowed: ${allowedText(list.split(", "))})`);
}

// -- size presets -------------------------------------------------------------------------

export const ASPECT_RATIOS = [[1, 1], [4, 3], [3, 2], [16, 9], [3, 4], [2, 3], [9, 16]];
const MIN_SIDE = 64;

// Sides are multiples of 64 for models drawing 512 px and more (what SD 1.5 and SDXL were
// trained on); smaller (tiny) models use the VAE's 8-pixel cells.
export function sideStep(defaultWidth, defaultHeight) {
  return Math.min(defaultWidth, defaultHeight) >= 512 ? 64 : 8;
}

// The size of `across`:`down` with at most `budget` pixels (the model's default size
// squared), sides rounded down to `step`; a side under 64 px becomes 64, the other side
// keeping the ratio (only a model smaller than 64×64 for that ratio goes over its budget).
export function presetSize(across, down, budget, step, maxSide = Infinity) {
  let width = Math.sqrt((budget * across) / down);
  let height = Math.sqrt((budget * down) / across);
  const short = Math.min(width, height);
  if (short < MIN_SIDE) {
    width = (width * MIN_SIDE) / short;
    height = (height * MIN_SIDE) / short;
  }
  const side = (length) => Math.min(maxSide, Math.max(MIN_SIDE, Math.floor(length / step + 1e-6) * step));
  return [side(width), side(height)];
}

// Buttons for the common aspect ratios; each sets width and height for the model shown.
export class SizePresets {
  constructor(container, form) {
    this.container = container;
    this.form = form;
  }

  setModel(schema) {
    const properties = schema.properties || {};
    const width = properties.width;
    const height = properties.height;
    this.container.replaceChildren();
    this.container.hidden = !(width && height && width.default && height.default);
    if (this.container.hidden) return;
    const budget = width.default * height.default;
    const step = sideStep(width.default, height.default);
    const maxSide = Math.min(width.maximum ?? Infinity, height.maximum ?? Infinity);
    this.container.append(el("span", { class: "presets-label", id: "size-presets-label",
      text: `Aspect ratio (about ${budget.toLocaleString("en")} pixels):` }));
    for (const [across, down] of ASPECT_RATIOS) {
      const [w, h] = presetSize(across, down, budget, step, maxSide);
      const button = el("button", { type: "button", class: "chip", "data-width": w, "data-height": h,
        "aria-pressed": "false", title: `${w}×${h}`, "aria-label": `${across}:${down}, ${w} by ${h} pixels` },
      el("span", { text: `${across}:${down}` }), el("small", { text: ` ${w}×${h}` }));
      button.addEventListener("click", () => {
        this.form.set("width", w);
        this.form.set("height", h);
        this.refresh();
      });
      this.container.append(button);
    }
    for (const name of ["width", "height"]) {
      this.form.fields.get(name)?.input.addEventListener("input", () => this.refresh());
    }
    this.refresh();
  }

  // press the button of the size in the form, if one matches
  refresh() {
    const width = String(this.form.has("width") ? this.form.get("width") ?? "" : "");
    const height = String(this.form.has("height") ? this.form.get("height") ?? "" : "");
    for (const button of this.container.querySelectorAll("button")) {
      const on = button.dataset.width === width && button.dataset.height === height;
      button.setAttribute("aria-pressed", String(on));
    }
  }
}

// -- example prompts ----------------------------------------------------------------------

export const EXAMPLE_PROMPTS = [
  "a lighthouse on a cliff at dusk, oil painting",
  "a red fox in fresh snow, soft morning light, photograph",
  "isometric cozy reading room, warm lamps, detailed illustration",
  "a bowl of ramen, studio food photography, steam",
  "an astronaut riding a horse on the moon, watercolour",
];

export function examplePrompts(container, form) {
  container.replaceChildren(el("span", { class: "presets-label", text: "Try:" }));
  for (const prompt of EXAMPLE_PROMPTS) {
    const chip = el("button", { type: "button", class: "chip", text: prompt });
    chip.addEventListener("click", () => {
      form.set("prompt", prompt);
      form.fields.get("prompt")?.input.focus();
    });
    container.append(chip);
  }
}

// -- LoRA picker --------------------------------------------------------------------------

// A select of the LoRA files the server has (A1111's /sdapi/v1/loras) and the models
// trainings published (/v1/trainings): a file goes into the LoRA field; a trained model
// is a served model with its LoRA built in, so picking one selects that model.
export class LoraPicker {
  constructor(select, { form, selectModel }) {
    this.select = select;
    this.form = form;
    this.selectModel = selectModel;
    this.loras = [];
    this.trained = [];
    select.addEventListener("change", () => this.pick());
  }

  setChoices({ loras = this.loras, trained = this.trained } = {}) {
    this.loras = loras;
    this.trained = trained;
    const groups = [];
    if (loras.length) {
      groups.push(el("optgroup", { label: "LoRA files on this server" },
        ...loras.map((name) => el("option", { value: `lora:${name}`, text: name }))));
    }
    if (trained.length) {
      groups.push(el("optgroup", { label: "Trained models (switch the model)" },
        ...trained.map((name) => el("option", { value: `model:${name}`, text: name }))));
    }
    const none = loras.length || trained.length ? "(none)" : "(none found on this server)";
    this.select.replaceChildren(el("option", { value: "", text: none }), ...groups);
    this.sync();
  }

  pick() {
    const [kind, ...rest] = this.select.value.split(":");
    const name = rest.join(":");
    if (kind === "model") this.selectModel(name);
    else if (this.form.has("lora")) this.form.set("lora", kind === "lora" ? name : "");
    this.sync();
  }

  // show what the LoRA field holds (a typed name or path shows as none)
  sync() {
    const value = this.form.has("lora") ? this.form.get("lora") : undefined;
    const option = value ? `lora:${value}` : "";
    this.select.value = [...this.select.options].some((o) => o.value === option) ? option : "";
  }
}
