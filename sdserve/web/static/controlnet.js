// ControlNet units: the "ControlNet" section of the form, offered only where the chosen
// model's schema has `controlnets` (the server lists them only where some ControlNet fits).
// Each unit has a control image (a file, dropped or pasted; the input image; or a scribble
// drawn on a black pad), a ControlNet, a preprocessor and its settings, a weight, a range
// of steps, resize and control modes, and a "Preview map" that asks the AUTOMATIC1111
// dialect's /controlnet/detect for the map the preprocessor makes.

import { api, ApiError, request } from "./api.js";
import { el } from "./form.js";
import { acceptImages } from "./inputs.js";
import { MaskPainter } from "./mask.js";

// Control types as the server names them (sdserve/domain/controls.py): in the schema's
// choices they are the names that pick "the served ControlNet of that type".
const TYPES = new Set(["canny", "depth", "normal", "openpose", "mlsd", "lineart", "softedge", "scribble",
  "seg", "shuffle", "tile", "inpaint", "ip2p"]);
const RESIZE_MODES = [["crop_and_resize", "Crop and resize"], ["just_resize", "Just resize"],
  ["resize_and_fill", "Resize and fill"]];
const CONTROL_MODES = [["balanced", "Balanced"], ["prompt", "My prompt is more important"],
  ["controlnet", "ControlNet is more important"]];
// the server's defaults, used until a schema says otherwise
const DEFAULTS = { preprocessor: "auto", conditioning_scale: 0.75, start: 0, end: 1,
  resize_mode: "crop_and_resize", processor_res: 512, pixel_perfect: false, control_mode: "balanced" };
const RESOLUTION_SLIDER = "Preprocessor Resolution";
const IMAGE_TYPES = "image/png,image/jpeg,image/webp";
// The types a union ControlNet takes (sdserve/models/controlnet/catalog.py UNION_TYPES), for
// a server whose schema does not say (no x-controlnets): its 422 names the allowed ones.
const UNION_TYPES = ["canny", "depth", "inpaint", "lineart", "mlsd", "normal", "openpose", "scribble",
  "seg", "softedge", "tile"];
const SCRIBBLE = [255, 255, 255, 255];

let unitIds = 0;

export class ControlNetPanel {
  // `context` gives what lies outside the section: the task, the input image (File/Blob or
  // null) and the output size [width, height] (or null: the image's or the default size).
  constructor({ section, list, addButton, returnMaps, help, context }) {
    this.section = section;
    this.list = list;
    this.addButton = addButton;
    this.returnMaps = returnMaps;
    this.help = help;
    this.context = context;
    this.units = [];
    this.choices = [];
    this.details = {}; // served name or type -> {kind, family, control_type, control_types?, picks?}
    this.preprocessorTypes = {}; // preprocessor -> the control type of the map it makes
    this.max = 0;
    this.defaults = { ...DEFAULTS };
    this.modules = null; // {module_list, module_detail} once the A1111 dialect answered
    this.types = null; // control_types of the A1111 dialect
    addButton.addEventListener("click", () => {
      const unit = this.add();
      unit?.focus();
    });
  }

  // The preprocessors and control types (A1111's extension API); without that dialect the
  // preprocessor list is "auto" and "none" only and there is no map preview.
  async loadCatalog() {
    try {
      const [modules, types] = await Promise.all([
        request("GET", "/controlnet/module_list"),
        request("GET", "/controlnet/control_types"),
      ]);
      this.types = types.control_types || null;
      // the IP-Adapter modules are the extension's image prompt, not a ControlNet's
      // preprocessor: this section's units never take them
      const imagePrompt = new Set(((this.types || {})["IP-Adapter"] || {}).module_list || []);
      imagePrompt.delete("none");
      this.modules = {
        ...modules,
        module_list: (modules.module_list || []).filter((name) => !imagePrompt.has(name)),
      };
    } catch {
      this.modules = null;
      this.types = null;
    }
    for (const unit of this.units) unit.refreshChoices();
  }

  // the section for a model's input schema: shown only where ControlNets fit it
  setModel(schema) {
    const properties = schema.properties || {};
    const units = properties.controlnets;
    const pick = properties.controlnet_1;
    this.choices = units && pick && Array.isArray(pick.enum) ? pick.enum.filter((name) => name !== "none") : [];
    this.max = units ? units.maxItems ?? 3 : 0;
    // what each ControlNet is (x-controlnets): a union needs a control type per unit, a
    // T2I-Adapter a fixed range
    this.details = (units && units["x-controlnets"]) || {};
    this.preprocessorTypes = (units && units["x-preprocessors"]) || {};
    const unitSchema = ((schema.$defs || {}).ControlUnit || {}).properties || {};
    this.defaults = { ...DEFAULTS };
    for (const key of Object.keys(DEFAULTS)) {
      if (unitSchema[key] && unitSchema[key].default !== undefined) this.defaults[key] = unitSchema[key].default;
    }
    this.section.hidden = !this.available();
    for (const unit of this.units) unit.refreshChoices();
    this.update();
  }

  available() {
    return this.choices.length > 0 && this.max > 0;
  }

  // the task changed: "use the input image" is there for image tasks only
  setTask() {
    for (const unit of this.units) unit.refreshSource();
  }

  add(values = null) {
    if (!this.available() || this.units.length >= this.max) return null;
    const unit = new Unit(this, values);
    this.units.push(unit);
    this.list.append(unit.root);
    this.update();
    return unit;
  }

  remove(unit) {
    const index = this.units.indexOf(unit);
    if (index < 0) return;
    this.units.splice(index, 1);
    unit.root.remove();
    this.update();
    // keep the keyboard in the section: on the next unit's remove button, or "Add"
    const next = this.units[index] || this.units[index - 1];
    if (next) next.removeButton.focus();
    else this.addButton.focus();
  }

  clear() {
    for (const unit of this.units) unit.root.remove();
    this.units = [];
    this.returnMaps.checked = false;
    this.update();
  }

  update() {
    this.units.forEach((unit, index) => unit.setNumber(index + 1));
    this.addButton.disabled = this.units.length >= this.max;
    this.help.textContent = this.units.length
      ? `${this.units.length} of at most ${this.max} units.`
      : `Steer the image by edges, a scribble or another structure: add up to ${this.max} units.`;
    this.returnMaps.closest(".field").hidden = this.units.length === 0;
  }

  // The units as the request's `controlnets` (control images uploaded through /v1/files),
  // [] when the section is not offered, or null when a unit needs fixing (its field says why).
  async collect() {
    if (!this.available() || this.section.hidden) return [];
    for (const unit of this.units) unit.clearError();
    for (const unit of this.units) {
      if (!(await unit.check())) {
        this.section.open = true;
        return null;
      }
    }
    const units = [];
    for (const unit of this.units) units.push(await unit.value());
    return units;
  }

  wantsMaps() {
    return this.units.length > 0 && this.returnMaps.checked;
  }

  // a server error on `controlnets.N.field` (or `controlnets`), shown in that unit
  showError(field, message, allowed = null) {
    this.lastAllowed = allowed;
    const match = /^controlnets(?:\.(\d+)(?:\.(\w+))?)?$/.exec(field || "");
    if (!match || !this.available()) return false;
    const unit = this.units[Number(match[1] ?? 0)];
    if (!unit) return false;
    this.section.open = true;
    unit.showError(match[2] || null, match[2] ? `${match[2]}: ${message}` : message);
    return true;
  }

  // the units of an earlier prediction back in the form
  async restore(units, returnMaps) {
    this.clear();
    if (!this.available()) return;
    for (const values of (units || []).slice(0, this.max)) {
      const unit = this.add(values);
      if (unit) await unit.restoreImage(values.image);
    }
    this.returnMaps.checked = Boolean(returnMaps) && this.units.length > 0;
    if (this.units.length) this.section.open = true;
  }

  // what a ControlNet (or a type naming one) is, as the schema says; null when it does not
  detailsOf(model) {
    return Object.hasOwn(this.details, model) ? this.details[model] : null;
  }

  // what "auto" means for a ControlNet (a served name or a type), from the control types
  autoPreprocessor(model) {
    if (!this.types) return null;
    for (const [type, entry] of Object.entries(this.types)) {
      if (type === "All") continue;
      const named = type.toLowerCase() === model
        || (entry.model_list || []).some((title) => title === model || title.startsWith(`${model} [`));
      if (named) return entry.default_option || null;
    }
    return null;
  }
}

class Unit {
  constructor(panel, values) {
    this.panel = panel;
    this.id = `cn${++unitIds}`;
    this.source = "upload"; // "upload", "input" or "draw"
    this.file = null; // the chosen control image (File or Blob)
    this.ref = null; // its URL once uploaded (or a URL reused from a prediction)
    this.build();
    this.set(values || {});
  }

  build() {
    const id = this.id;
    const defaults = this.panel.defaults;
    this.legend = el("legend", { text: "Unit" });
    this.error = el("p", { class: "field-error", id: `${id}-error`, role: "alert" });

    // the control image: where it comes from
    this.sourceRadios = {};
    const sources = el("fieldset", { class: "tasks cn-source" }, el("legend", { text: "Control image" }));
    for (const [value, text] of [["upload", "Upload an image"], ["input", "Use the input image"], ["draw", "Draw"]]) {
      const radio = el("input", { type: "radio", name: `${id}-source`, value });
      radio.addEventListener("change", () => radio.checked && this.setSource(value));
      this.sourceRadios[value] = radio;
      sources.append(el("label", {}, radio, ` ${text}`));
    }

    this.fileInput = el("input", { type: "file", id: `${id}-file`, accept: IMAGE_TYPES,
      "aria-describedby": `${id}-drop-help ${id}-image-error` });
    this.fileInput.addEventListener("change", () => this.setFile(this.fileInput.files[0] || null));
    this.dropZone = el("div", { class: "drop-zone", tabindex: 0, role: "group",
      "aria-label": "Drop or paste a control image here" },
    el("span", { id: `${id}-drop-help`, text: "…or drop an image here, or click here and paste one (Ctrl+V)." }));
    this.uploadPart = el("div", { class: "field" },
      el("label", { for: `${id}-file`, text: "Control image file" }), this.fileInput, this.dropZone);

    // the scribble pad: white strokes on black, the map itself
    this.canvas = el("canvas", { class: "scribble", id: `${id}-canvas`,
      "aria-label": "Drawing pad: draw white lines on black with the pointer" });
    this.pad = new MaskPainter(this.canvas, { shown: SCRIBBLE });
    this.pad.brush = 6;
    this.canvas.addEventListener("pointerup", () => this.mapStale());
    const brush = el("input", { type: "range", id: `${id}-brush`, min: 1, max: 64, value: 6 });
    const brushValue = el("output", { for: `${id}-brush`, text: "6 px" });
    brush.addEventListener("input", () => {
      this.pad.brush = Number(brush.value);
      brushValue.textContent = `${brush.value} px`;
    });
    this.brushInput = brush;
    const clear = el("button", { type: "button", text: "Clear drawing" });
    clear.addEventListener("click", () => {
      this.pad.clear();
      this.mapStale();
    });
    this.drawPart = el("div", { class: "cn-draw", hidden: true },
      el("div", { class: "scribble-stage" }, this.canvas),
      el("div", { class: "field inline" }, el("label", { for: `${id}-brush`, text: "Brush size" }), brush, brushValue),
      el("div", { class: "button-row" }, clear));

    // the image and its map, side by side
    this.imageView = el("img", { alt: "The control image" });
    this.imageFigure = el("figure", { hidden: true }, this.imageView, el("figcaption", { text: "Control image" }));
    this.mapView = el("img", { alt: "The preprocessed control map" });
    this.mapCaption = el("figcaption", { text: "Preprocessed map" });
    this.mapFigure = el("figure", { hidden: true }, this.mapView, this.mapCaption);
    this.imageError = el("p", { class: "field-error", id: `${id}-image-error`, role: "alert" });
    const images = el("div", { class: "cn-images" }, this.imageFigure, this.mapFigure);

    // the ControlNet and how it acts
    this.model = el("select", { id: `${id}-model`, "aria-describedby": `${id}-model-help` });
    this.model.addEventListener("change", () => {
      this.typeForced = null;
      this.refreshKind();
      this.refreshSettings();
      this.mapStale();
    });
    this.preprocessor = el("select", { id: `${id}-preprocessor`, "aria-describedby": `${id}-preprocessor-help` });
    this.preprocessor.addEventListener("change", () => {
      this.refreshKind();
      this.refreshSettings();
      this.mapStale();
    });
    // a union ControlNet's unit says its map's type (default: the preprocessor's)
    this.controlType = el("select", { id: `${id}-type`, "aria-describedby": `${id}-type-help` });
    this.typeChosen = false; // picked by hand (else it follows the preprocessor)
    this.typeForced = null; // the allowed types a server's 422 named (a schema without x-controlnets)
    this.controlType.addEventListener("change", () => {
      this.typeChosen = this.controlType.value !== "";
      this.refreshSettings();
      this.mapStale();
    });
    this.controlTypeField = field(`${id}-type`, "Control type", this.controlType,
      el("p", { class: "help", id: `${id}-type-help`,
        text: "required for a union ControlNet: the type of this unit's map (one model takes several)" }));
    this.controlTypeField.hidden = true;
    this.kindHint = el("p", { class: "help cn-kind", id: `${id}-kind` });
    this.weight = number(`${id}-weight`, 0, 2, 0.05);
    const weightSlider = el("input", { type: "range", min: 0, max: 2, step: 0.05, tabindex: -1,
      "aria-label": "Control weight slider" });
    weightSlider.addEventListener("input", () => { this.weight.value = weightSlider.value; });
    this.weight.addEventListener("input", () => { weightSlider.value = this.weight.value; });
    this.weightSlider = weightSlider;
    this.start = number(`${id}-start`, 0, 1, 0.05);
    this.end = number(`${id}-end`, 0, 1, 0.05);
    this.resizeMode = select(`${id}-resize`, RESIZE_MODES);
    this.controlMode = select(`${id}-mode`, CONTROL_MODES);

    // the preprocessor's own settings (A1111's sliders for the chosen module)
    this.pixelPerfect = el("input", { type: "checkbox", id: `${id}-pixel-perfect` });
    this.resolution = number(`${id}-res`, 64, 2048, 8);
    this.thresholdA = number(`${id}-ta`, undefined, undefined, "any");
    this.thresholdB = number(`${id}-tb`, undefined, undefined, "any");
    this.resolutionField = field(`${id}-res`, "Preprocessor resolution", this.resolution);
    this.thresholdALabel = el("label", { for: `${id}-ta`, text: "Threshold A" });
    this.thresholdBLabel = el("label", { for: `${id}-tb`, text: "Threshold B" });
    this.thresholdAField = el("div", { class: "field" }, this.thresholdALabel, this.thresholdA);
    this.thresholdBField = el("div", { class: "field" }, this.thresholdBLabel, this.thresholdB);
    this.settingsHelp = el("p", { class: "help" });
    this.settings = el("details", { class: "cn-settings" }, el("summary", { text: "Preprocessor settings" }),
      this.settingsHelp,
      el("div", { class: "field check" }, this.pixelPerfect,
        el("label", { for: `${id}-pixel-perfect`, text: "Pixel perfect (work at the output size)" })),
      el("div", { class: "grid-2" }, this.resolutionField, this.thresholdAField, this.thresholdBField));
    this.pixelPerfect.addEventListener("change", () => { this.resolution.disabled = this.pixelPerfect.checked; });

    this.previewButton = el("button", { type: "button", text: "Preview map" });
    this.previewButton.addEventListener("click", () => this.preview());
    this.removeButton = el("button", { type: "button", class: "danger", text: "Remove" });
    this.removeButton.addEventListener("click", () => this.panel.remove(this));
    this.status = el("p", { class: "help", role: "status", "aria-live": "polite" });

    const defaultsText = `default ${defaults.conditioning_scale}`;
    const weightField = field(`${id}-weight`, "Control weight", this.weight, weightSlider,
      el("p", { class: "help", text: `0–2, ${defaultsText}` }));
    weightField.classList.add("with-slider");
    const grid = el("div", { class: "grid-2" },
      field(`${id}-model`, "ControlNet", this.model,
        el("p", { class: "help", id: `${id}-model-help`, text: "a served ControlNet, or a type that picks one" })),
      field(`${id}-preprocessor`, "Preprocessor", this.preprocessor,
        el("p", { class: "help", id: `${id}-preprocessor-help`, text: "auto: the ControlNet type's own; none: the image is a map already" })),
      this.controlTypeField,
      weightField,
      field(`${id}-start`, "Start (share of steps)", this.start),
      field(`${id}-end`, "End (share of steps)", this.end),
      field(`${id}-resize`, "Resize mode", this.resizeMode),
      field(`${id}-mode`, "Control mode", this.controlMode));
    this.start.setAttribute("aria-describedby", `${id}-kind`);
    this.end.setAttribute("aria-describedby", `${id}-kind`);

    this.fieldset = el("fieldset", { class: "cn-unit" }, this.legend, sources, this.uploadPart, this.drawPart,
      images, this.imageError, grid, this.kindHint, this.settings,
      el("div", { class: "button-row" }, this.previewButton, this.removeButton), this.status, this.error);
    // a pasted image anywhere in the unit (the drop zone takes the focus for it)
    acceptImages(this.dropZone, (file) => this.setFile(file), { pasteTarget: this.fieldset });
    this.root = el("li", { class: "cn-item", id }, this.fieldset);
    this.refreshChoices();
  }

  setNumber(number) {
    this.number = number;
    this.legend.textContent = `ControlNet unit ${number}`;
    this.root.dataset.unit = String(number);
    this.removeButton.setAttribute("aria-label", `Remove unit ${number}`);
    this.previewButton.setAttribute("aria-label", `Preview map of unit ${number}`);
    this.imageView.alt = `Control image of unit ${number}`;
    this.mapView.alt = `Preprocessed map of unit ${number}`;
    this.canvas.setAttribute("aria-label", `Drawing pad of unit ${number}: draw white lines on black`);
  }

  focus() {
    (this.source === "upload" ? this.fileInput : this.sourceRadios[this.source]).focus();
  }

  // choices of the model and preprocessor selects, keeping what was chosen where it fits
  refreshChoices() {
    const keep = this.model.value;
    const served = this.panel.choices.filter((name) => !TYPES.has(name));
    const types = this.panel.choices.filter((name) => TYPES.has(name));
    const groups = [];
    if (served.length) groups.push(el("optgroup", { label: "Served ControlNets" },
      ...served.map((name) => el("option", { value: name, text: name }))));
    if (types.length) groups.push(el("optgroup", { label: "By type (the first fitting one)" },
      ...types.map((name) => el("option", { value: name, text: name }))));
    this.model.replaceChildren(...groups);
    if (this.panel.choices.includes(keep)) this.model.value = keep;

    const keepModule = this.preprocessor.value || this.panel.defaults.preprocessor;
    const modules = ["auto", "none",
      ...((this.panel.modules && this.panel.modules.module_list) || []).filter((name) => name !== "none")];
    if (!modules.includes(keepModule)) modules.push(keepModule); // a name from an earlier run
    this.preprocessor.replaceChildren(...modules.map((name) => el("option", { value: name,
      text: name === "auto" ? "auto (the type's own)" : name === "none" ? "none (the image is a map)" : name })));
    this.preprocessor.value = keepModule;
    this.previewButton.hidden = !this.panel.modules;
    this.refreshKind();
    this.refreshSettings();
    this.refreshSource();
  }

  // What the chosen ControlNet asks of the unit: a union ControlNet a control type (unless
  // the model is named by its type), a T2I-Adapter a range from the first step (and on SD
  // to the last). The server checks it all again; its 422s land in the unit.
  refreshKind() {
    const details = this.panel.detailsOf(this.model.value);
    const kind = details ? details.kind : "controlnet";
    const byType = Boolean(details && details.picks);
    const union = (kind === "union" && !byType) || (this.typeForced !== null && !byType);
    const types = (details && details.control_types) || this.typeForced || UNION_TYPES;
    this.controlTypeField.hidden = !union;
    if (union) {
      const keep = this.controlType.value;
      this.controlType.replaceChildren(el("option", { value: "", text: "— choose —" }),
        ...types.map((type) => el("option", { value: type, text: type })));
      const implied = this.panel.preprocessorTypes[this.preprocessor.value];
      const wanted = this.typeChosen ? keep : implied;
      this.controlType.value = types.includes(wanted) ? wanted : "";
    }
    const adapter = kind === "t2i_adapter";
    const wholeRange = adapter && details.family !== "sdxl";
    if (adapter) this.start.value = "0";
    if (wholeRange) this.end.value = "1";
    if (adapter) this.controlMode.value = "balanced";
    this.start.disabled = adapter;
    this.end.disabled = wholeRange;
    this.controlMode.disabled = adapter;
    const hints = [];
    if (adapter) {
      hints.push(wholeRange
        ? "A T2I-Adapter (text to image only) acts on every step: start 0, end 1."
        : "A T2I-Adapter (text to image only) acts from the first step: start 0.");
    }
    if (kind === "union") {
      hints.push("A union ControlNet: the units on it share weight, start, end and control mode.");
    }
    this.kindHint.textContent = hints.join(" ");
    this.kindHint.hidden = !hints.length;
  }

  refreshSource() {
    const imageTask = ["img2img", "inpaint"].includes(this.panel.context.task());
    const radio = this.sourceRadios.input;
    radio.disabled = !imageTask;
    radio.closest("label").classList.toggle("disabled", !imageTask);
    radio.closest("label").title = imageTask ? "" : "only for image to image and inpainting";
    if (!imageTask && this.source === "input") this.setSource("upload");
    else this.showSource();
  }

  // the module the preprocessor select means ("auto" resolved), or null when unknown
  module() {
    const chosen = this.preprocessor.value;
    if (chosen !== "auto") return chosen;
    const type = !this.controlTypeField.hidden && this.controlType.value;
    return this.panel.autoPreprocessor(type || this.model.value);
  }

  // resolution and thresholds as the chosen module has them (A1111's sliders)
  refreshSettings() {
    const module = this.module();
    const detail = this.panel.modules && module ? (this.panel.modules.module_detail || {})[module] : null;
    const sliders = (detail && detail.sliders) || [];
    const resolution = sliders.find((slider) => slider.name === RESOLUTION_SLIDER);
    const thresholds = sliders.filter((slider) => slider !== resolution);
    this.resolutionField.hidden = !resolution;
    this.pixelPerfect.closest(".field").hidden = !resolution;
    for (const [slider, input, label, wrapper] of [
      [thresholds[0], this.thresholdA, this.thresholdALabel, this.thresholdAField],
      [thresholds[1], this.thresholdB, this.thresholdBLabel, this.thresholdBField],
    ]) {
      wrapper.hidden = !slider;
      if (!slider) continue;
      label.textContent = slider.name;
      input.min = slider.min;
      input.max = slider.max;
      input.step = slider.step;
      input.placeholder = `default ${slider.value}`;
    }
    const any = sliders.length > 0;
    this.settings.hidden = !any;
    this.settingsHelp.textContent = module ? `Settings of ${module}; empty fields keep its defaults.` : "";
  }

  setSource(source) {
    this.source = source;
    this.sourceRadios[source].checked = true;
    // an empty pad takes the output's size (a fresh canvas is 300×150, not yet sized)
    if (source === "draw" && !this.pad.hasPaint()) {
      const [width, height] = this.panel.context.outputSize() || [512, 512];
      this.pad.resize(width, height);
      // a line about as thick on a small pad as on a large one
      this.brushInput.value = String(Math.max(3, Math.min(64, Math.round(Math.min(width, height) / 24))));
      this.brushInput.dispatchEvent(new Event("input"));
    }
    this.showSource();
    this.mapStale();
  }

  showSource() {
    this.sourceRadios[this.source].checked = true;
    this.uploadPart.hidden = this.source !== "upload";
    this.drawPart.hidden = this.source !== "draw";
    this.imageFigure.hidden = this.source !== "upload" || !this.file;
  }

  async setFile(file, ref = null) {
    this.imageError.textContent = "";
    if (this.source !== "upload") this.setSource("upload");
    this.file = file;
    this.ref = ref;
    this.mapStale();
    if (!file) {
      this.showSource();
      return;
    }
    const url = URL.createObjectURL(file);
    try {
      await new Promise((resolve, reject) => {
        this.imageView.onload = resolve;
        this.imageView.onerror = () => reject(new Error("not an image this browser can read"));
        this.imageView.src = url;
      });
    } catch (error) {
      this.imageError.textContent = `Could not read the file: ${error.message}`;
      this.file = null;
    }
    this.showSource();
  }

  mapStale() {
    this.mapFigure.hidden = true;
    this.status.textContent = "";
  }

  set(values) {
    const defaults = this.panel.defaults;
    if (values.model && !this.panel.choices.includes(values.model)) {
      this.model.append(el("option", { value: values.model, text: values.model }));
    }
    if (values.model) this.model.value = values.model;
    const module = values.preprocessor ?? defaults.preprocessor;
    if (![...this.preprocessor.options].some((option) => option.value === module)) {
      this.preprocessor.append(el("option", { value: module, text: module }));
    }
    this.preprocessor.value = module;
    this.weight.value = values.conditioning_scale ?? defaults.conditioning_scale;
    this.weightSlider.value = this.weight.value;
    this.start.value = values.start ?? defaults.start;
    this.end.value = values.end ?? defaults.end;
    this.resizeMode.value = values.resize_mode ?? defaults.resize_mode;
    this.controlMode.value = values.control_mode ?? defaults.control_mode;
    this.pixelPerfect.checked = Boolean(values.pixel_perfect ?? defaults.pixel_perfect);
    this.resolution.disabled = this.pixelPerfect.checked;
    const res = values.processor_res ?? defaults.processor_res;
    this.resolution.value = res === defaults.processor_res ? "" : res;
    this.resolution.placeholder = `default ${defaults.processor_res}`;
    this.thresholdA.value = values.threshold_a ?? "";
    this.thresholdB.value = values.threshold_b ?? "";
    this.typeChosen = Boolean(values.control_type);
    this.refreshKind();
    if (values.control_type) {
      if (this.controlTypeField.hidden) { // a schema without x-controlnets: show what was sent
        this.typeForced = UNION_TYPES;
        this.refreshKind();
      }
      this.controlType.value = values.control_type;
    }
    this.refreshSettings();
    const imageTask = ["img2img", "inpaint"].includes(this.panel.context.task());
    this.setSource(values.image === null && imageTask ? "input" : "upload");
  }

  async restoreImage(ref) {
    if (!ref) return;
    try {
      const blob = await blobOf(ref);
      await this.setFile(blob, ref.startsWith("data:") ? null : ref);
    } catch (error) {
      this.imageError.textContent = `Could not load the earlier control image: ${error.message}`;
    }
  }

  clearError() {
    this.error.textContent = "";
    this.imageError.textContent = "";
    for (const input of [this.model, this.preprocessor, this.controlType, this.weight, this.start, this.end,
      this.controlMode, this.resizeMode, this.fileInput]) {
      input.removeAttribute("aria-invalid");
    }
  }

  // a message on the unit, beside its field where it has one
  showError(field, message) {
    if (field === "control_type" && this.controlTypeField.hidden) {
      // a union ControlNet the schema did not describe: ask for the type now
      this.typeForced = Array.isArray(this.panel.lastAllowed) ? this.panel.lastAllowed : UNION_TYPES;
      this.refreshKind();
    }
    const inputs = { image: this.fileInput, model: this.model, preprocessor: this.preprocessor,
      control_type: this.controlType, conditioning_scale: this.weight, start: this.start, end: this.end,
      resize_mode: this.resizeMode, control_mode: this.controlMode };
    const input = inputs[field];
    if (field === "image") this.imageError.textContent = message;
    else this.error.textContent = message;
    if (input) {
      input.setAttribute("aria-invalid", "true");
      if (!input.closest("[hidden]")) input.focus();
    }
  }

  // a complete unit? Says what is missing beside the field and focuses it.
  async check() {
    const fail = (field, message) => {
      this.showError(field, message);
      return false;
    };
    const weight = Number(this.weight.value);
    if (this.weight.value.trim() === "" || !(weight >= 0 && weight <= 2)) {
      return fail("conditioning_scale", `Unit ${this.number}: the weight must be between 0 and 2.`);
    }
    const start = Number(this.start.value);
    const end = Number(this.end.value);
    if (!(start >= 0 && start <= 1) || !(end >= 0 && end <= 1)) {
      return fail("start", `Unit ${this.number}: start and end are shares of the steps, 0 to 1.`);
    }
    if (start >= end) return fail("end", `Unit ${this.number}: the start (${start}) must be before the end (${end}).`);
    if (!this.controlTypeField.hidden && !this.controlType.value) {
      return fail("control_type", `Unit ${this.number}: ${this.model.value} is a union ControlNet: `
        + "choose the control type of its map.");
    }
    if (this.source === "upload" && !this.file) {
      return fail("image", `Unit ${this.number}: choose a control image (or draw one).`);
    }
    if (this.source === "draw" && !this.pad.hasPaint()) {
      this.imageError.textContent = `Unit ${this.number}: draw something on the pad first.`;
      this.canvas.scrollIntoView({ block: "nearest" });
      return false;
    }
    if (this.source === "input" && !this.panel.context.inputImage()) {
      return fail("image", `Unit ${this.number}: choose the input image above first.`);
    }
    return true;
  }

  // the unit for the request: what differs from the server's defaults, plus model and image
  async value() {
    const defaults = this.panel.defaults;
    const unit = { model: this.model.value };
    if (this.source === "upload") {
      if (!this.ref) this.ref = (await api.upload(this.file)).urls.get;
      unit.image = this.ref;
    } else if (this.source === "draw") {
      const blob = await this.pad.blob();
      unit.image = (await api.upload(new File([blob], "scribble.png", { type: "image/png" }))).urls.get;
    }
    const chosen = {
      preprocessor: this.preprocessor.value,
      conditioning_scale: Number(this.weight.value),
      start: Number(this.start.value),
      end: Number(this.end.value),
      resize_mode: this.resizeMode.value,
      control_mode: this.controlMode.value,
    };
    if (!this.settings.hidden) {
      if (this.pixelPerfect.checked) chosen.pixel_perfect = true;
      else if (!this.resolutionField.hidden && this.resolution.value.trim()) chosen.processor_res = Number(this.resolution.value);
      if (!this.thresholdAField.hidden && this.thresholdA.value.trim()) chosen.threshold_a = Number(this.thresholdA.value);
      if (!this.thresholdBField.hidden && this.thresholdB.value.trim()) chosen.threshold_b = Number(this.thresholdB.value);
    }
    for (const [key, value] of Object.entries(chosen)) if (value !== defaults[key]) unit[key] = value;
    if (!this.controlTypeField.hidden && this.controlType.value) unit.control_type = this.controlType.value;
    return unit;
  }

  // the map /controlnet/detect makes of the control image with the chosen preprocessor
  async preview() {
    this.status.textContent = "";
    this.error.textContent = "";
    let image = null;
    if (this.source === "upload") image = this.file;
    else if (this.source === "input") image = this.panel.context.inputImage();
    else if (this.pad.hasPaint()) image = await this.pad.blob();
    if (!image) {
      this.imageError.textContent = `Unit ${this.number}: there is no control image to preview yet.`;
      return;
    }
    const module = this.module();
    if (!module) {
      this.error.textContent = `Unit ${this.number}: no built-in preprocessor for ${this.model.value}'s type: `
        + "pick one, or none if the image is a map already.";
      this.preprocessor.focus();
      return;
    }
    const body = { controlnet_module: module, controlnet_input_images: [await dataUri(image)] };
    if (this.pixelPerfect.checked) {
      const size = this.panel.context.outputSize();
      if (size) body.controlnet_processor_res = Math.min(...size);
    } else if (this.resolution.value.trim()) {
      body.controlnet_processor_res = Number(this.resolution.value);
    }
    if (!this.thresholdAField.hidden && this.thresholdA.value.trim()) body.controlnet_threshold_a = Number(this.thresholdA.value);
    if (!this.thresholdBField.hidden && this.thresholdB.value.trim()) body.controlnet_threshold_b = Number(this.thresholdB.value);
    this.previewButton.disabled = true;
    this.status.textContent = `Preprocessing with ${module}…`;
    try {
      const answer = await request("POST", "/controlnet/detect", { json: body });
      const map = (answer.images || [])[0];
      if (!map) throw new Error("the server returned no map");
      this.mapView.src = `data:image/png;base64,${map}`;
      await this.mapView.decode();
      this.mapCaption.textContent = `Map by ${module}`;
      this.mapFigure.hidden = false;
      this.status.textContent = `Map by ${module}: ${this.mapView.naturalWidth}×${this.mapView.naturalHeight}.`;
    } catch (error) {
      this.status.textContent = "";
      this.error.textContent = error instanceof ApiError && error.field
        ? `${error.field}: ${error.message}` : `Could not preview the map: ${error.message}`;
    } finally {
      this.previewButton.disabled = false;
    }
  }
}

function number(id, min, max, step) {
  return el("input", { type: "number", id, min, max, step, inputmode: "decimal" });
}

function select(id, choices) {
  const node = el("select", { id });
  for (const [value, text] of choices) node.append(el("option", { value, text }));
  return node;
}

function field(id, label, ...inputs) {
  return el("div", { class: "field" }, el("label", { for: id, text: label }), ...inputs);
}

function dataUri(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

// a Blob of an image reference: data URIs decoded here (the page's policy lets it fetch
// only its own origin), URLs fetched
export async function blobOf(ref) {
  if (ref.startsWith("data:")) {
    const [header, payload] = ref.split(",", 2);
    const type = /^data:([^;,]+)/.exec(header)?.[1] || "image/png";
    const bytes = header.endsWith(";base64")
      ? Uint8Array.from(atob(payload), (c) => c.charCodeAt(0))
      : new TextEncoder().encode(decodeURIComponent(payload));
    return new Blob([bytes], { type });
  }
  const response = await fetch(ref);
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.blob();
}
