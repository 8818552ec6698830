// The generation form, built from a model's input schema (the `Input` of its
// openapi_schema): one field per input with its default, range and description.

// Where each input goes; inputs not listed land in "Other inputs", so none is hidden.
const GROUPS = {
  prompt: "main",
  negative_prompt: "main",
  prompt_strength: "strength",
  outpaint_left: "outpaint",
  outpaint_right: "outpaint",
  outpaint_up: "outpaint",
  outpaint_down: "outpaint",
  width: "settings",
  height: "settings",
  num_outputs: "settings",
  scheduler: "settings",
  num_inference_steps: "settings",
  guidance_scale: "settings",
  seed: "settings",
  refine: "refiner",
  high_noise_frac: "refiner",
  refine_steps: "refiner",
  lora: "lora",
  lora_scale: "lora",
  apply_watermark: "output",
  disable_safety_checker: "output",
  output_format: "output",
  ip_adapter_scale: "ipadapter",
  ip_adapter: "ipadapter",
  // an upscaler's inputs (its image is the task's, as for image to image)
  scale: "scale",
  upscale_width: "upscaleSize",
  upscale_height: "upscaleSize",
  upscale_crop: "upscaleSize",
  upscaler_2: "upscaleBlend",
  upscaler_2_visibility: "upscaleBlend",
};
// Image inputs are set by the task controls (upload, mask canvas), not typed; ControlNet
// units by their own section (controlnet.js), which Replicate's flat controlnet_N inputs
// would only repeat; the image prompt by its section (ipadapter.js).
const TASK_INPUTS = new Set(["image", "mask", "controlnets", "return_control_maps", "ip_adapter_image"]);
const FLAT_CONTROLNET = /^controlnet_\d+(?:_|$)/;
const MULTIPLE_OF_8 = new Set([
  "width", "height", "outpaint_left", "outpaint_right", "outpaint_up", "outpaint_down",
]);
// Replicate's scheduler spellings, offered as suggestions; the server has the last word.
const SCHEDULERS = [
  "K_EULER", "K_EULER_ANCESTRAL", "DDIM", "DPMSolverMultistep", "HeunDiscrete", "KarrasDPM", "PNDM",
];
const LABELS = { num_outputs: "Number of images", num_inference_steps: "Steps", lora_scale: "LoRA scale",
  lora: "LoRA", high_noise_frac: "High noise fraction", prompt_strength: "Prompt strength",
  ip_adapter_scale: "Image prompt scale", ip_adapter: "IP-Adapter",
  upscale_width: "Width", upscale_height: "Height", upscale_crop: "Crop to this aspect instead of stretching",
  upscaler_2: "Second upscaler", upscaler_2_visibility: "Second upscaler's share" };
// what an enum without a default sends when left alone: the server's pick, or nothing
const NO_CHOICE = { upscaler_2: "(none)" };

function labelOf(name, prop) {
  if (LABELS[name]) return LABELS[name];
  const words = (prop.title || name).replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1).toLowerCase();
}

// {type, enum, nullable} of a property, looking through anyOf [T, null]
function kindOf(prop) {
  let base = prop;
  let nullable = false;
  if (Array.isArray(prop.anyOf)) {
    const concrete = prop.anyOf.filter((branch) => branch.type !== "null");
    nullable = concrete.length < prop.anyOf.length;
    base = { ...concrete[0], ...prop };
  }
  const choices = base.enum || (base.const !== undefined ? [base.const] : null);
  return {
    type: choices ? "enum" : base.type || "string",
    choices,
    nullable,
    minimum: base.minimum ?? base.exclusiveMinimum,
    maximum: base.maximum ?? base.exclusiveMaximum,
    maxLength: base.maxLength,
    format: base.format,
  };
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  node.append(...children.filter(Boolean));
  return node;
}

export class SchemaForm {
  // `groups` maps a group name to the element the fields of that group go into
  constructor(groups, { loras = [] } = {}) {
    this.groups = groups;
    this.loras = loras;
    this.fields = new Map(); // name -> {prop, kind, input, error, wrapper, group}
    this.pending = new Map(); // name -> timer of its delayed check after typing
  }

  build(schema) {
    for (const container of Object.values(this.groups)) container.replaceChildren();
    // checks still pending from the last model's typing would look up fields gone now
    for (const timer of this.pending.values()) clearTimeout(timer);
    this.pending.clear();
    this.fields.clear();
    const properties = schema.properties || {};
    const names = Object.keys(properties).sort(
      (a, b) => (properties[a]["x-order"] ?? 0) - (properties[b]["x-order"] ?? 0),
    );
    for (const name of names) {
      if (TASK_INPUTS.has(name) || FLAT_CONTROLNET.test(name)) continue;
      const group = GROUPS[name] || "other";
      this.addField(name, properties[name], group);
    }
    for (const [group, container] of Object.entries(this.groups)) {
      if (group === "other") {
        container.closest(".group").hidden = container.children.length === 0;
      }
    }
    this.reset();
  }

  addField(name, prop, group) {
    const kind = kindOf(prop);
    const id = `in-${name}`;
    const help = [prop.description, rangeText(kind, prop)].filter(Boolean).join(" · ");
    const describedBy = `${id}-help ${id}-error`;
    let input;
    if (kind.type === "boolean") {
      input = el("input", { type: "checkbox", id, name, "aria-describedby": describedBy });
    } else if (kind.type === "enum") {
      input = el("select", { id, name, "aria-describedby": describedBy });
      // no default in the schema: the server picks (an IP-Adapter fitting the model)
      if (prop.default === undefined) input.append(el("option", { value: "", text: NO_CHOICE[name] || "(default)" }));
      const groups = prop["x-enum-groups"];
      if (groups) {
        // grouped choices (the scheduler: Replicate's names, then AUTOMATIC1111's)
        for (const [label, names] of Object.entries(groups)) {
          input.append(el("optgroup", { label }, ...names.map((choice) => el("option", { value: choice, text: choice }))));
        }
        const grouped = new Set(Object.values(groups).flat());
        for (const choice of kind.choices.filter((c) => !grouped.has(c))) input.append(el("option", { value: choice, text: choice }));
      } else {
        for (const choice of kind.choices) input.append(el("option", { value: choice, text: choice }));
      }
    } else if (name === "prompt" || name === "negative_prompt") {
      input = el("textarea", { id, name, rows: name === "prompt" ? 3 : 2, "aria-describedby": describedBy });
    } else if (kind.type === "integer" || kind.type === "number") {
      const step = kind.type === "integer" ? (MULTIPLE_OF_8.has(name) ? 8 : 1) : "any";
      input = el("input", {
        type: "number", id, name, step, min: kind.minimum, max: kind.maximum,
        inputmode: kind.type === "integer" ? "numeric" : "decimal",
        placeholder: name === "seed" ? "random" : undefined,
        "aria-describedby": describedBy,
      });
    } else {
      const list = name === "scheduler" ? "scheduler-list" : name === "lora" ? "lora-list" : undefined;
      input = el("input", { type: "text", id, name, list, "aria-describedby": describedBy,
        placeholder: name === "lora" ? "none" : undefined });
    }
    const error = el("p", { class: "field-error", id: `${id}-error`, role: "alert" });
    const label = el("label", { for: id, text: labelOf(name, prop) });
    const wrapper = el("div", { class: kind.type === "boolean" ? "field check" : "field", "data-field": name });
    if (kind.type === "boolean") wrapper.append(input, label);
    else wrapper.append(label, input);
    if (kind.type === "number" && kind.minimum !== undefined && kind.maximum !== undefined) {
      // a slider beside the number for 0..1-like ranges (strength, scales)
      const slider = el("input", {
        type: "range", min: kind.minimum, max: kind.maximum, step: (kind.maximum - kind.minimum) / 100,
        "aria-label": `${labelOf(name, prop)} slider`, tabindex: -1,
      });
      slider.addEventListener("input", () => { input.value = slider.value; input.dispatchEvent(new Event("input")); });
      input.addEventListener("input", () => { slider.value = input.value; });
      wrapper.append(slider);
      wrapper.classList.add("with-slider");
    }
    if (name === "scheduler" && kind.type !== "enum") wrapper.append(datalist("scheduler-list", SCHEDULERS));
    if (name === "lora") wrapper.append(datalist("lora-list", this.loras));
    wrapper.append(el("p", { class: "help", id: `${id}-help`, text: help }), error);
    // validate shortly after typing stops, not on blur: an error appearing on blur moves
    // the Run button between mouse-down and mouse-up, and the click is lost
    const field = { prop, kind, input, error, wrapper, group };
    input.addEventListener("input", () => {
      clearTimeout(this.pending.get(name));
      this.pending.set(name, setTimeout(() => this.validateField(name), 500));
    });
    this.groups[group].append(wrapper);
    this.fields.set(name, field);
  }

  setLoras(names) {
    this.loras = names;
    const list = document.getElementById("lora-list");
    if (list) list.replaceWith(datalist("lora-list", names));
  }

  has(name) {
    return this.fields.has(name);
  }

  // every field back to its schema default
  reset() {
    for (const [name] of this.fields) this.set(name, this.fields.get(name).prop.default);
    this.clearErrors();
  }

  set(name, value) {
    const field = this.fields.get(name);
    if (!field) return;
    if (field.kind.type === "boolean") field.input.checked = Boolean(value);
    else field.input.value = value === undefined || value === null ? "" : String(value);
    field.input.dispatchEvent(new Event("input"));
  }

  // the raw value of a field in its JSON type; undefined when left empty
  get(name) {
    const { input, kind } = this.fields.get(name);
    if (kind.type === "boolean") return input.checked;
    const text = input.value.trim();
    if (text === "") return undefined;
    if (kind.type === "integer" || kind.type === "number") return Number(text);
    return input.value;
  }

  // Field names -> values for the inputs in `visibleGroups`, leaving out empty fields and
  // values equal to the default, so the request (and its snippet) says only what you chose.
  values(visibleGroups, { keep = [] } = {}) {
    const result = {};
    for (const [name, field] of this.fields) {
      if (!visibleGroups.has(field.group)) continue;
      const value = this.get(name);
      if (value === undefined) continue;
      if (!keep.includes(name) && value === field.prop.default) continue;
      result[name] = value;
    }
    return result;
  }

  clearErrors() {
    for (const field of this.fields.values()) this.showError(field, "");
  }

  showError(field, message) {
    field.error.textContent = message;
    field.wrapper.classList.toggle("invalid", Boolean(message));
    if (message) field.input.setAttribute("aria-invalid", "true");
    else field.input.removeAttribute("aria-invalid");
  }

  // show a server-side message beside its field; false when no such field is shown
  showServerError(name, message, visibleGroups) {
    const field = this.fields.get(name);
    if (!field || !visibleGroups.has(field.group)) return false;
    // a check still pending from the last keystroke must not wipe the server's word
    clearTimeout(this.pending.get(name));
    this.showError(field, message);
    openGroupOf(field.wrapper);
    field.input.focus();
    return true;
  }

  validateField(name) {
    // checked now: a delayed check must not wipe a server's message that comes after
    clearTimeout(this.pending.get(name));
    const field = this.fields.get(name);
    const message = problem(name, field.kind, this.get(name));
    this.showError(field, message || "");
    return !message;
  }

  // validate the visible fields; focus the first invalid one
  validate(visibleGroups) {
    let first = null;
    for (const [name, field] of this.fields) {
      if (!visibleGroups.has(field.group)) {
        this.showError(field, "");
        continue;
      }
      if (!this.validateField(name) && !first) first = field;
    }
    if (first) {
      openGroupOf(first.wrapper);
      first.input.focus();
    }
    return !first;
  }
}

function problem(name, kind, value) {
  if (value === undefined) return null;
  if (kind.type === "integer" || kind.type === "number") {
    if (!Number.isFinite(value)) return "Enter a number.";
    if (kind.type === "integer" && !Number.isInteger(value)) return "Enter a whole number.";
    if (kind.minimum !== undefined && value < kind.minimum) return `Must be at least ${kind.minimum}.`;
    if (kind.maximum !== undefined && value > kind.maximum) return `Must be at most ${kind.maximum}.`;
    if (MULTIPLE_OF_8.has(name) && value % 8 !== 0) {
      const lower = Math.max(kind.minimum ?? 0, Math.floor(value / 8) * 8);
      return `Must be a multiple of 8 (try ${lower} or ${lower + 8}).`;
    }
  }
  if (kind.type === "string" && kind.maxLength !== undefined && value.length > kind.maxLength) {
    return `At most ${kind.maxLength} characters.`;
  }
  return null;
}

function rangeText(kind, prop) {
  const parts = [];
  if (kind.minimum !== undefined && kind.maximum !== undefined) parts.push(`${kind.minimum}–${kind.maximum}`);
  else if (kind.minimum !== undefined) parts.push(`≥ ${kind.minimum}`);
  else if (kind.maximum !== undefined) parts.push(`≤ ${kind.maximum}`);
  if (prop.default !== undefined && prop.default !== null && prop.default !== "") {
    parts.push(`default ${prop.default}`);
  }
  return parts.join(", ");
}

function datalist(id, values) {
  const list = el("datalist", { id });
  for (const value of values) list.append(el("option", { value }));
  return list;
}

function openGroupOf(node) {
  const details = node.closest("details");
  if (details) details.open = true;
}

export { el };
