// Upscalers in the playground. They are served as models (family "upscaler") whose input
// is an image and a scale, so the page shows them an upscale form: the image input of the
// image tasks and the schema's upscale fields, none of the diffusion controls (task,
// prompt, LoRA, sampling). Here: which model is one, the picker's groups, the panels each
// mode shows, and the words a result or a history card says about an upscale.

import { el } from "./form.js";

export const UPSCALE_TASK = "upscale";

// the form groups (form.js) an upscaler's inputs go into; "output" holds output_format
export const UPSCALE_GROUPS = ["scale", "upscaleSize", "upscaleBlend", "output", "other"];

// panels of the diffusion form an upscaler has no use for (hidden, kept as they were)
const DIFFUSION_PANELS = ["tasks", "prompt-examples", "group-settings", "group-lora"];
// panels of the upscale form
const UPSCALE_PANELS = ["group-scale", "group-upscale-size", "group-upscale-blend"];

export function isUpscaler(model) {
  return Boolean(model) && model.family === "upscaler";
}

// An upscale prediction: its model is an upscaler (or, for a model not listed any more or
// an alias, its input has a scale or a target size and no prompt).
export function isUpscale(prediction, models) {
  const model = models.get(prediction.model);
  if (model) return isUpscaler(model);
  const input = prediction.input || {};
  return !input.prompt && ("scale" in input || "upscale_width" in input);
}

// The inputs an upscale has. Its stored input also holds the canonical generation fields
// at their defaults (prompt "", a seed, steps), which did nothing and are not shown.
const UPSCALE_INPUTS = new Set([
  "image", "scale", "upscale_width", "upscale_height", "upscale_crop", "upscaler_2", "upscaler_2_visibility",
  "output_format",
]);

export function isUpscaleInput(name, input = {}) {
  if (!UPSCALE_INPUTS.has(name)) return false;
  if (name === "upscale_crop") return Boolean(input.upscale_width && input.upscale_height);
  if (name === "upscaler_2_visibility") return Boolean(input.upscaler_2);
  return true;
}

// The model picker: generators first, then the upscalers in a group of their own, so that
// they do not read as models that draw. Options keep the order of the model list.
export function fillModelPicker(select, models) {
  const generators = [];
  const upscalers = [];
  for (const [name, model] of models) {
    (isUpscaler(model) ? upscalers : generators).push(el("option", { value: name, text: name }));
  }
  const groups = upscalers.length ? [el("optgroup", { label: "Upscalers" }, ...upscalers)] : [];
  select.replaceChildren(...generators, ...groups);
}

// Show the upscale form (on) or the diffusion form (off). The diffusion panels are only
// hidden, so switching back finds them as they were. The refiner, ControlNet and image
// prompt panels need no rule here: they hide themselves for a schema without their inputs.
export function showUpscaleForm(on) {
  const $ = (id) => document.getElementById(id);
  for (const id of DIFFUSION_PANELS) $(id).hidden = on;
  for (const id of UPSCALE_PANELS) $(id).hidden = !on || !$(id).querySelector("[data-field]");
  // an upscaler's output group holds the format only: there is no safety checker to turn off
  $("group-output-title").textContent = on ? "Output" : "Output and safety";
}

// "upscale 2x" or "upscale to 256×192", and with the sizes once known:
// "upscale 2x: 64×48 → 128×96". `output` is the result's [width, height].
export function upscaleText(input = {}, output = null) {
  const scale = input.scale;
  const target = input.upscale_width && input.upscale_height
    ? `to ${input.upscale_width}×${input.upscale_height}` : null;
  const what = target ? `upscale ${target}` : scale ? `upscale ${scale}x` : "upscale";
  if (!output || !output[0]) return what;
  const [width, height] = output;
  if (target || !scale) return `${what}: → ${width}×${height}`;
  // the input's size from the output's: a scale of s made round(side × s)
  return `${what}: ${Math.round(width / scale)}×${Math.round(height / scale)} → ${width}×${height}`;
}

// The natural size of an image by URL ([0, 0] if it cannot be read).
export async function imageSize(url) {
  const image = new Image();
  image.src = url;
  try {
    await image.decode();
    return [image.naturalWidth, image.naturalHeight];
  } catch {
    return [0, 0];
  }
}
