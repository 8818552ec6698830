// The playground page: model picker, task controls, running a prediction with live
// progress, results with reproducible snippets, and the history gallery. An upscaler
// (upscale.js) gets an upscale form in place of the diffusion one.

import { api, ApiError, follow, getToken, onUnauthorized, setToken } from "./api.js";
import { ControlNetPanel } from "./controlnet.js";
import { el, SchemaForm } from "./form.js";
import { cardFacts, HistoryFilter, historyItem, isRemoved } from "./history.js";
import { acceptImages, allowedText, examplePrompts, LoraPicker, readableMessage, SizePresets } from "./inputs.js";
import { ImagePromptPanel } from "./ipadapter.js";
import * as jobs from "./jobs.js";
import { setupLayout, showOutput } from "./layout.js";
import { MaskPainter } from "./mask.js";
import { appliedParams, decorateResult } from "./results.js";
import {
  fillModelPicker, imageSize, isUpscale, isUpscaleInput, isUpscaler, showUpscaleForm, UPSCALE_GROUPS, UPSCALE_TASK,
  upscaleText,
} from "./upscale.js";

const $ = (id) => document.getElementById(id);
const IMAGE_TASKS = new Set(["img2img", "inpaint", "outpaint", UPSCALE_TASK]);

const state = {
  models: new Map(), // "owner/name" -> model JSON
  model: null,
  task: "txt2img",
  diffusionTask: "txt2img", // the task radio to come back to from an upscaler
  imageFile: null, // the File (or Blob) chosen for image tasks
  imageRef: null, // its URL on the server once uploaded (or a URL reused from a prediction)
  running: null, // id of the prediction being followed
  historyNext: null,
};

const form = new SchemaForm({
  main: $("group-main"),
  strength: $("group-strength"),
  outpaint: $("group-outpaint").querySelector(".grid-2"),
  settings: $("group-settings").querySelector(".grid-2"),
  refiner: $("group-refiner").querySelector("div"),
  lora: $("group-lora").querySelector(":scope > div:not(#lora-picker-field)"),
  output: $("group-output").querySelector("div"),
  other: $("group-other").querySelector("div"),
  ipadapter: $("ipa-fields"),
  scale: $("group-scale").querySelector("div"),
  upscaleSize: $("group-upscale-size").querySelector(".grid-2"),
  upscaleBlend: $("group-upscale-blend").querySelector("div"),
});
const painter = new MaskPainter($("mask-view"));
const sizePresets = new SizePresets($("size-presets"), form);
const loraPicker = new LoraPicker($("lora-picker"), { form, selectModel });
const historyFilter = new HistoryFilter({
  gallery: $("gallery"), model: $("history-model"), status: $("history-status"), note: $("history-note"),
});
const controlnet = new ControlNetPanel({
  section: $("group-controlnet"),
  list: $("controlnet-units"),
  addButton: $("controlnet-add"),
  returnMaps: $("controlnet-return-maps"),
  help: $("controlnet-help"),
  context: {
    task: () => state.task,
    inputImage: () => (IMAGE_TASKS.has(state.task) ? state.imageFile : null),
    outputSize,
  },
});

const imagePrompt = new ImagePromptPanel({
  section: $("group-ipadapter"),
  fileInput: $("ipa-file"),
  dropZone: $("ipa-drop"),
  preview: $("ipa-preview"),
  figure: $("ipa-figure"),
  clearButton: $("ipa-clear"),
  error: $("ipa-error"),
  form,
});

// the size the next image will have, as far as the page knows (null: the server's default)
function outputSize() {
  const width = form.has("width") ? form.get("width") : undefined;
  const height = form.has("height") ? form.get("height") : undefined;
  if (width && height) return [width, height];
  const preview = $("image-preview");
  if (IMAGE_TASKS.has(state.task) && state.imageFile && preview.naturalWidth) {
    return [preview.naturalWidth, preview.naturalHeight];
  }
  return null;
}

// token ----------------------------------------------------------------------------------

function askToken(reason) {
  const dialog = $("token-dialog");
  $("token-reason").textContent = reason
    ? `The server said: ${reason}. The token is kept in this browser tab only.`
    : document.body.dataset.authRequired === "true"
      ? "This server needs a token. It is kept in this browser tab only (session storage)."
      : "This server does not ask for a token; set one only if a proxy in front of it needs one. "
        + "It is kept in this browser tab only (session storage).";
  $("token-input").value = getToken();
  return new Promise((resolve) => {
    const done = () => {
      dialog.removeEventListener("close", done);
      resolve(dialog.returnValue === "save" && Boolean(getToken()));
    };
    dialog.addEventListener("close", done);
    dialog.returnValue = "";
    dialog.showModal();
  });
}

function setupToken() {
  $("token-form").addEventListener("submit", () => setToken($("token-input").value.trim()));
  $("token-forget").addEventListener("click", () => {
    setToken("");
    $("token-input").value = "";
    $("token-dialog").close("forget");
  });
  $("token-close").addEventListener("click", () => $("token-dialog").close("close"));
  $("token-button").addEventListener("click", () => askToken(null).then((ok) => ok && loadAll()));
  onUnauthorized((reason) => askToken(reason));
}

// models and form ------------------------------------------------------------------------

async function loadModels() {
  const help = $("model-help");
  try {
    const page = await api.models();
    state.models = new Map(page.results.map((model) => [`${model.owner}/${model.name}`, model]));
  } catch (error) {
    help.textContent = `Could not load models: ${error.message}`;
    return;
  }
  const select = $("model");
  const previous = select.value;
  fillModelPicker(select, state.models);
  if (state.models.has(previous)) select.value = previous;
  historyFilter.setModels([...state.models.keys()]);
  selectModel(select.value);
}

function selectModel(name) {
  const model = state.models.get(name);
  if (!model) return;
  state.model = model;
  $("model").value = name;
  $("model-help").textContent = [model.description, model.family && `family ${model.family}`]
    .filter(Boolean).join(" · ");
  const schema = model.latest_version.openapi_schema.components.schemas.Input;
  form.build(schema);
  controlnet.setModel(schema);
  imagePrompt.setModel(schema);
  sizePresets.setModel(schema);
  examplePrompts($("prompt-examples"), form);
  form.fields.get("lora")?.input.addEventListener("input", () => loraPicker.sync());
  loraPicker.sync();
  $("group-refiner").hidden = !(model.family === "sdxl" && form.has("refine"));
  // an upscaler has one task; back on a diffusion model, the radio checked before is the task
  const upscaler = isUpscaler(model);
  if (upscaler && state.task !== UPSCALE_TASK) state.diffusionTask = state.task;
  if (upscaler) state.task = UPSCALE_TASK;
  else if (state.task === UPSCALE_TASK) state.task = state.diffusionTask;
  showUpscaleForm(upscaler);
  applyTask();
}

async function loadLoras() {
  // the AUTOMATIC1111 dialect lists installed LoRAs; without it the field stays free text
  try {
    const response = await fetch("/sdapi/v1/loras", {
      headers: getToken() ? { Authorization: `Bearer ${getToken()}` } : {},
    });
    if (!response.ok) return;
    const loras = await response.json();
    if (Array.isArray(loras)) {
      const names = loras.map((lora) => lora.name).filter(Boolean);
      form.setLoras(names);
      loraPicker.setChoices({ loras: names });
    }
  } catch {
    // not served: nothing to suggest
  }
}

// the models trainings published (each a served model with its LoRA built in)
async function loadTrained() {
  try {
    const page = await api.trainings();
    const names = new Set(page.results
      .filter((training) => training.status === "succeeded" && training.destination)
      .map((training) => training.destination)
      .filter((name) => state.models.has(name)));
    loraPicker.setChoices({ trained: [...names] });
  } catch {
    // trainings not served or not allowed: files only
  }
}

// tasks ----------------------------------------------------------------------------------

function visibleGroups() {
  if (state.task === UPSCALE_TASK) return new Set(UPSCALE_GROUPS);
  const groups = new Set(["main", "settings", "lora", "output", "other"]);
  if (!$("group-refiner").hidden) groups.add("refiner");
  if (state.task === "img2img" || state.task === "inpaint") groups.add("strength");
  if (state.task === "outpaint") groups.add("outpaint");
  // the image prompt's scale and adapter go with its image only
  if (imagePrompt.active()) groups.add("ipadapter");
  return groups;
}

function applyTask() {
  const task = state.task;
  const image = IMAGE_TASKS.has(task);
  $("image-section").hidden = !image;
  $("group-strength").hidden = !(task === "img2img" || task === "inpaint");
  $("group-outpaint").hidden = task !== "outpaint";
  $("mask-tools").hidden = task !== "inpaint" || !state.imageFile;
  $("mask-view").hidden = task !== "inpaint";
  $("image-help").textContent = imageHelp();
  controlnet.setTask();
  for (const name of ["width", "height"]) {
    if (!form.has(name)) continue;
    const input = $(`in-${name}`);
    // an image task keeps the image's size unless you type one
    input.placeholder = image ? "image size" : "";
    if (image && String(form.get(name)) === String(form.fields.get(name).prop.default)) form.set(name, "");
    if (!image && form.get(name) === undefined) form.set(name, form.fields.get(name).prop.default);
  }
}

// what becomes of the input image's size, for the task shown
function imageHelp() {
  const preview = $("image-preview");
  const size = state.imageFile && preview.naturalWidth ? `${preview.naturalWidth}×${preview.naturalHeight}` : null;
  if (state.task === UPSCALE_TASK) {
    return size ? `${size}; the result is this times the scale (or the size you set).`
      : "PNG, JPEG or WebP; the result is this image times the scale (or the size you set).";
  }
  return size ? `${size}; the result keeps this size unless you set width and height.`
    : "PNG, JPEG or WebP; the result keeps its size unless you set width and height.";
}

function setTask(task) {
  // the upscale task goes with an upscaler only, and an upscaler has no other
  if ((task === UPSCALE_TASK) !== (state.task === UPSCALE_TASK)) return;
  state.task = task;
  // the radios keep the diffusion task while an upscaler is picked, to come back to
  if (task !== UPSCALE_TASK) {
    for (const radio of document.querySelectorAll('input[name="task"]')) radio.checked = radio.value === task;
  }
  applyTask();
}

async function setImage(file, ref = null) {
  state.imageFile = file;
  state.imageRef = ref;
  $("image-error").textContent = "";
  const preview = $("image-preview");
  if (!file) {
    $("image-stage").hidden = true;
    applyTask();
    return;
  }
  const url = URL.createObjectURL(file);
  await new Promise((resolve, reject) => {
    preview.onload = resolve;
    preview.onerror = () => reject(new Error("not an image this browser can read"));
    preview.src = url;
  }).catch((error) => {
    $("image-error").textContent = `Could not read the file: ${error.message}`;
    state.imageFile = null;
  });
  if (!state.imageFile) return;
  $("image-stage").hidden = false;
  painter.resize(preview.naturalWidth, preview.naturalHeight);
  applyBrush();
  applyTask();
}

// the brush is a share of the image's longer side, so it feels the same on any image
function applyBrush() {
  const percent = Number($("brush-size").value);
  const side = Math.max(painter.mask.width, painter.mask.height) || 512;
  painter.brush = Math.max(1, Math.round((percent / 100) * side));
  $("brush-size-value").textContent = `${percent}% of the image (${painter.brush} px)`;
}

function setupMaskTools() {
  const refresh = () => {
    $("mask-undo").disabled = !painter.undoStack.length;
    $("mask-redo").disabled = !painter.redoStack.length;
    if (painter.hasPaint()) $("mask-error").textContent = ""; // the "paint the area" hint is done
  };
  painter.onChange = refresh;
  $("mask-undo").addEventListener("click", () => painter.undo());
  $("mask-redo").addEventListener("click", () => painter.redo());
  document.addEventListener("keydown", (event) => {
    if (!(event.ctrlKey || event.metaKey) || event.key.toLowerCase() !== "z" || $("mask-tools").hidden) return;
    // typing in a field keeps the browser's own undo
    if (event.target.closest && event.target.closest("input, textarea, select, [contenteditable]")) return;
    event.preventDefault();
    if (event.shiftKey) painter.redo();
    else painter.undo();
  });
  $("mask-download").addEventListener("click", async () => {
    // the very pixels the request sends (white = repaint, black = keep)
    const blob = await painter.blob();
    const link = el("a", { href: URL.createObjectURL(blob), download: "mask.png" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  });
  $("mask-colour").addEventListener("change", () => {
    painter.setColour([...$("mask-colour").value.split(",").map(Number), 120]);
    $("mask-colour-name").textContent = $("mask-colour").selectedOptions[0].text.toLowerCase();
  });
  const loadMaskFile = async (file) => {
    const url = URL.createObjectURL(file);
    try {
      const image = new Image();
      image.src = url;
      await image.decode();
      painter.load(image);
    } catch {
      $("mask-error").textContent = "Could not read the mask file.";
    } finally {
      URL.revokeObjectURL(url);
    }
  };
  $("mask-file").addEventListener("change", (event) => event.target.files[0] && loadMaskFile(event.target.files[0]));
  acceptImages($("mask-drop"), loadMaskFile);
}

async function loadMask(reference) {
  const image = new Image();
  image.src = reference;
  await image.decode();
  const canvas = painter.mask;
  painter.maskCtx.drawImage(image, 0, 0, canvas.width, canvas.height);
  painter.painted = true;
  painter.redraw();
}

function setupTasks() {
  for (const radio of document.querySelectorAll('input[name="task"]')) {
    radio.addEventListener("change", () => radio.checked && setTask(radio.value));
  }
  $("model").addEventListener("change", () => selectModel($("model").value));
  $("image-file").addEventListener("change", (event) => setImage(event.target.files[0] || null));
  acceptImages($("image-drop"), (file) => setImage(file), { pasteTarget: $("image-section") });
  $("brush-size").addEventListener("input", applyBrush);
  setupMaskTools();
  const tools = { brush: $("mask-brush"), eraser: $("mask-eraser") };
  const pick = (eraser) => {
    painter.erasing = eraser;
    tools.brush.setAttribute("aria-pressed", String(!eraser));
    tools.eraser.setAttribute("aria-pressed", String(eraser));
  };
  tools.brush.addEventListener("click", () => pick(false));
  tools.eraser.addEventListener("click", () => pick(true));
  $("mask-clear").addEventListener("click", () => { painter.record(); painter.clear(); });
  $("mask-invert").addEventListener("click", () => { painter.record(); painter.invert(); });
  $("reset").addEventListener("click", () => {
    form.reset();
    controlnet.clear();
    imagePrompt.setFile(null);
    applyTask();
  });
}

// running --------------------------------------------------------------------------------

async function imageInputs() {
  const input = {};
  $("image-error").textContent = "";
  $("mask-error").textContent = "";
  if (!IMAGE_TASKS.has(state.task)) return input;
  if (!state.imageFile) {
    $("image-error").textContent = "Choose an image for this task.";
    $("image-file").focus();
    return null;
  }
  if (state.task === "inpaint" && !painter.hasPaint()) {
    $("mask-error").textContent = "Paint the area to repaint (or use Invert to repaint everything).";
    $("mask-brush").focus();
    return null;
  }
  if (!state.imageRef) {
    const uploaded = await api.upload(state.imageFile);
    state.imageRef = uploaded.urls.get;
  }
  input.image = state.imageRef;
  if (state.task === "inpaint") input.mask = painter.dataUri();
  return input;
}

async function submit(event) {
  event.preventDefault();
  $("form-error").textContent = "";
  if (!state.model || state.running) return;
  const groups = visibleGroups();
  if (!form.validate(groups)) return;
  const keep = ["prompt"];
  if (IMAGE_TASKS.has(state.task)) keep.push("width", "height");
  if (imagePrompt.active()) keep.push("ip_adapter_scale"); // say the scale with the image
  const input = form.values(groups, { keep });
  if (state.task === "outpaint" && !["outpaint_left", "outpaint_right", "outpaint_up", "outpaint_down"]
    .some((name) => input[name] > 0)) {
    form.showServerError("outpaint_left", "Add pixels on at least one side.", groups);
    return;
  }
  const model = `${state.model.owner}/${state.model.name}`;
  $("run").disabled = true;
  try {
    const images = await imageInputs();
    if (!images) return;
    const units = await controlnet.collect();
    if (!units) return;
    const controls = units.length ? { controlnets: units } : {};
    if (controlnet.wantsMaps()) controls.return_control_maps = true;
    const prompt = await imagePrompt.value();
    const prediction = await api.createPrediction(model, { ...input, ...images, ...controls, ...prompt });
    await run(prediction);
  } catch (error) {
    showSubmitError(error, groups);
  } finally {
    $("run").disabled = false;
  }
}

function showSubmitError(error, groups) {
  if (error instanceof ApiError && error.field) {
    // the allowed values once (the server's message may name them already), cut short
    const message = error.body.allowed && !error.message.includes("(allowed:")
      ? `${error.message} (allowed: ${allowedText(error.body.allowed)})`
      : readableMessage(error.message);
    const special = { image: "image-error", mask: "mask-error" }[error.field];
    if (special) {
      $(special).textContent = message;
      return;
    }
    if (controlnet.showError(error.field, message, error.body.allowed)) return;
    if (imagePrompt.showError(error.field, message)) return;
    if (form.showServerError(error.field, message, groups)) return;
    $("form-error").textContent = `${error.field}: ${message}`;
    return;
  }
  $("form-error").textContent = error.message || String(error);
}

async function run(prediction) {
  if (state.running === prediction.id) return; // followed already
  state.running = prediction.id;
  jobs.remember(prediction.id);
  showOutput();
  let first = null; // {time, step} of the first progress event, for the ETA
  const baseSteps = jobs.refinerBase(prediction.input, defaultSteps(prediction.model));
  $("progress").hidden = false;
  $("cancel").disabled = false;
  $("progress-status").textContent = jobs.standingText(prediction);
  // until the first step, say what the job waits for (its place in line, a model loading)
  const stopWatch = jobs.watch(prediction.id, (read) => {
    if (!first && state.running === prediction.id && !jobs.isTerminal(read.status)) {
      $("progress-status").textContent = jobs.standingText(read);
    }
  });
  $("progress-bar").removeAttribute("value"); // indeterminate until the first step
  $("progress-steps").textContent = "";
  $("progress-eta").textContent = "";
  $("progress-preview").hidden = true;
  $("result").replaceChildren(el("p", { class: "empty", text: `Running ${prediction.id}…` }));
  await follow(prediction, {
    onProgress: ({ step, total, preview }) => {
      const now = performance.now();
      if (!first) {
        first = { time: now, step };
        stopWatch(); // the steps say the rest
      }
      $("progress-status").textContent = baseSteps && step > baseSteps ? "Refining" : "Processing";
      $("progress-bar").max = total;
      $("progress-bar").value = step;
      $("progress-steps").textContent = jobs.stepText(step, total, baseSteps);
      const done = step - first.step;
      if (done > 0 && total > step) {
        const seconds = ((now - first.time) / done) * (total - step) / 1000;
        $("progress-eta").textContent = `About ${formatSeconds(seconds)} left.`;
      } else {
        $("progress-eta").textContent = "";
      }
      if (preview) {
        $("progress-preview").src = preview;
        $("progress-preview").hidden = false;
      }
    },
  });
  stopWatch();
  state.running = null;
  $("progress").hidden = true;
  let final;
  try {
    final = await api.prediction(prediction.id);
  } catch (error) {
    $("result").replaceChildren(el("p", { class: "error", text: error.message }));
    return;
  }
  if (jobs.isTerminal(final.status)) jobs.forget(final.id);
  showPrediction(final);
  showOutput(); // the image, at the top of the pane (on a phone: in view again)
  if (final.status === "failed") showJobError(final.error || "");
  history.replaceState(null, "", `#/predictions/${final.id}`);
  loadHistory();
}

// A job that failed on a bad input ("invalid_input: scheduler: unknown …") is explained
// beside that field too, as a 422 would be.
function showJobError(error) {
  const match = /^(?:invalid_input|invalid_image|input_fetch_failed): ([\w.]+): (.+)$/s.exec(error);
  if (!match) return;
  const [, field, message] = match;
  const error422 = new ApiError(422, { detail: message, field });
  showSubmitError(error422, visibleGroups());
}

async function cancel() {
  if (!state.running) return;
  $("cancel").disabled = true;
  $("progress-status").textContent = "Canceling…";
  try {
    await api.cancel(state.running);
  } catch (error) {
    $("progress-status").textContent = `Could not cancel: ${error.message}`;
    $("cancel").disabled = false;
  }
}

function formatSeconds(seconds) {
  if (seconds < 1) return "less than a second";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

// results --------------------------------------------------------------------------------

function showPrediction(prediction) {
  $("result").replaceChildren(renderPrediction(prediction));
}

function renderPrediction(prediction) {
  const input = prediction.input || {};
  const seed = input.seed;
  const root = el("article", { class: "prediction", "data-id": prediction.id, "data-status": prediction.status });
  root.append(el("div", { class: "prediction-head" },
    el("span", { class: `badge ${prediction.status}`, text: prediction.status }),
    el("code", { text: prediction.id })));
  if (prediction.error) {
    root.append(el("p", { class: "error", role: "alert", text: `Error: ${prediction.error}` }));
  }
  const outputs = prediction.output || [];
  const nsfw = prediction.nsfw_content_detected || [];
  const maps = controlMaps(input, outputs.length);
  const upscale = isUpscale(prediction, state.models);
  if (outputs.length) {
    const images = el("div", { class: "images" });
    outputs.forEach((url, index) => {
      const map = maps[index - (outputs.length - maps.length)];
      if (map) {
        images.append(el("figure", { class: "map" },
          el("img", { src: url, alt: `${map} of ${prediction.id}` }),
          el("figcaption", {},
            el("span", { class: "badge", text: "map" }),
            el("span", { text: map }),
            el("a", { href: url, download: `${prediction.id}-map-${index}.png`, text: "Download" }))));
        return;
      }
      const imageSeed = seed === undefined || seed === null ? null : seed + index;
      const flagged = nsfw[index] === true;
      const name = el("span", { text: imageSeed === null ? `Image ${index + 1}` : `Seed ${imageSeed}` });
      const caption = el("figcaption", {},
        name,
        flagged ? el("span", { class: "badge failed", text: "NSFW: blacked out" }) : null,
        el("a", { href: url, download: `${prediction.id}-${index}.${extension(url, input)}`,
          text: "Download" }));
      const image = el("img", { src: url, alt: `Output ${index + 1} of ${prediction.id}${flagged ? " (flagged NSFW)" : ""}` });
      if (upscale) showUpscaledSize(name, image, input);
      images.append(el("figure", {}, image, caption));
    });
    root.append(images);
  }
  const time = prediction.metrics && prediction.metrics.predict_time;
  const facts = el("dl", { class: "facts" });
  const fact = (term, value) => facts.append(el("dt", { text: term }), el("dd", { text: value }));
  fact("Model", prediction.model || "");
  // an upscale has no seed and no safety check to report
  if (!upscale) fact("Seed", seed === undefined || seed === null ? "—" : String(seed));
  fact("Time", time === undefined || time === null ? "—" : `${Number(time).toFixed(2)} s`);
  const imageFlags = nsfw.slice(0, outputs.length - maps.length); // maps are the request's own input
  if (!upscale) {
    fact("NSFW", imageFlags.length ? imageFlags.map((flag, i) => `#${i + 1}: ${flag ? "flagged" : "no"}`).join(", ") : "not checked");
  }
  fact("Created", prediction.created_at ? new Date(prediction.created_at).toLocaleString() : "");
  root.append(facts);

  const params = el("table", { class: "params" }, el("caption", { text: "Parameters" }));
  for (const [key, value] of appliedParams(input)) {
    if (upscale && !isUpscaleInput(key, input)) continue;
    params.append(el("tr", {}, el("th", { scope: "row", text: key }), el("td", { text: shorten(value) })));
  }
  root.append(params);
  decorateResult(root, prediction, { uses: inputUses(), useAsInput, seeds: !upscale });

  const actions = el("div", { class: "button-row" });
  const reuse = el("button", { type: "button", class: "primary",
    text: upscale ? "Reuse these settings" : "Reuse these settings (same seed)" });
  reuse.addEventListener("click", () => reuseSettings(prediction));
  actions.append(reuse);
  root.append(actions);

  root.append(snippet("curl", curlSnippet(prediction)), snippet("Python (replicate)", pythonSnippet(prediction)));
  if (prediction.logs) {
    root.append(el("details", { class: "logs" }, el("summary", { text: "Logs" }), el("pre", { text: prediction.logs })));
  }
  return root;
}

// An upscaled image's caption says its size and the input's, once both are loaded:
// "Upscaled: 64×48 → 128×96" (the input's own size, whatever scale or size was asked).
function showUpscaledSize(caption, image, input) {
  caption.textContent = upscaleText(input);
  image.addEventListener("load", async () => {
    const [width, height] = input.image ? await imageSize(input.image) : [0, 0];
    const from = width ? `${width}×${height} → ` : "";
    caption.textContent = `Upscaled: ${from}${image.naturalWidth}×${image.naturalHeight}`;
  }, { once: true });
}

// Labels of the control maps at the end of the outputs (return_control_maps): one per unit
// that acted (a unit of weight 0 is left out, and so is its map).
function controlMaps(input, outputCount) {
  if (!input.return_control_maps || !Array.isArray(input.controlnets)) return [];
  const acting = input.controlnets
    .map((unit, index) => ({ unit, index }))
    .filter(({ unit }) => unit.conditioning_scale === undefined || unit.conditioning_scale > 0);
  const count = Math.max(0, Math.min(acting.length, outputCount - (input.num_outputs ?? 1)));
  return acting.slice(0, count).map(({ unit, index }) => `Control map of unit ${index + 1} (${unit.model})`);
}

function extension(url, input) {
  const match = /\.(png|jpe?g|webp)(?:$|\?)/.exec(url);
  return match ? match[1] : input.output_format || "png";
}

function shorten(value) {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  if (typeof value === "string" && value.startsWith("data:")) return `${value.slice(0, 30)}… (${value.length} chars)`;
  return text;
}

function snippet(title, code) {
  const pre = el("pre", {}, el("code", { text: code }));
  const copy = el("button", { type: "button", text: `Copy ${title}` });
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(code);
      copy.textContent = "Copied";
    } catch {
      // no clipboard permission (plain http): select the text for Ctrl+C instead
      const range = document.createRange();
      range.selectNodeContents(pre);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      copy.textContent = "Selected: press Ctrl+C";
    }
    setTimeout(() => { copy.textContent = `Copy ${title}`; }, 2000);
  });
  return el("section", { class: "snippet" }, el("div", { class: "progress-head" }, el("h3", { text: title }), copy), pre);
}

// A file the snippet's reader has (an image that was sent inline as a data URI).
class LocalFile {
  constructor(name) {
    this.name = name;
  }
}

// Inputs for a snippet: data URIs become a file reference the reader fills in.
// Values equal to the model's defaults are left out (the server fills them in the same
// way); prompt and seed always stay, so the snippet reproduces the same images. ControlNet
// units keep their model and image and what differs from a unit's defaults.
function snippetInput(prediction) {
  const model = state.models.get(prediction.model);
  const schema = model ? model.latest_version.openapi_schema.components.schemas.Input : {};
  const properties = schema.properties || {};
  const unitProperties = ((schema.$defs || {}).ControlUnit || {}).properties || {};
  const input = {};
  const upscale = isUpscale(prediction, state.models);
  const asFile = (value, name) => (typeof value === "string" && value.startsWith("data:") ? new LocalFile(name) : value);
  for (const [key, value] of Object.entries(prediction.input || {})) {
    const isDefault = key in properties && properties[key].default === value;
    if (upscale && !isUpscaleInput(key, prediction.input)) continue;
    if (isDefault && key !== "prompt" && key !== "seed") continue;
    if (key === "controlnets" && Array.isArray(value)) {
      if (!value.length) continue;
      input[key] = value.map((unit, index) => {
        const kept = {};
        for (const [name, setting] of Object.entries(unit)) {
          if (setting === null || (name !== "model" && unitProperties[name]?.default === setting)) continue;
          kept[name] = asFile(setting, `control-${index + 1}.png`);
        }
        return kept;
      });
    } else {
      input[key] = asFile(value, `${key}.png`);
    }
  }
  return input;
}

function curlSnippet(prediction) {
  const input = snippetInput(prediction);
  const files = [];
  let body = JSON.stringify({ input }, (key, value) => {
    if (!(value instanceof LocalFile)) return value;
    files.push(value.name);
    return `@@file-${files.length - 1}@@`;
  }, 2);
  // splice each file in as a base64 data URI from the shell, keeping the JSON valid
  files.forEach((file, index) => {
    body = body.replace(`"@@file-${index}@@"`, `"data:image/png;base64,'"$(base64 -w0 ${file})"'"`);
  });
  const lines = [
    `curl -s -X POST ${location.origin}/v1/models/${prediction.model}/predictions \\`,
    `  -H "Authorization: Bearer $SDSERVE_TOKEN" \\`,
    `  -H "Content-Type: application/json" \\`,
    `  -H "Prefer: wait" \\`,
    `  -d '${body}'`,
  ];
  return lines.join("\n");
}

function pythonSnippet(prediction) {
  const input = snippetInput(prediction);
  const entries = Object.entries(input).map(([key, value]) => `        "${key}": ${pythonLiteral(value)},`);
  return [
    "import os",
    "",
    "import replicate",
    "",
    "client = replicate.Client(",
    '    api_token=os.environ.get("SDSERVE_TOKEN", "unused"),',
    `    base_url="${location.origin}",`,
    ")",
    "output = client.run(",
    `    "${prediction.model}",`,
    "    input={",
    ...entries,
    "    },",
    ")",
    "for index, image in enumerate(output):",
    '    with open(f"output-{index}.png", "wb") as file:',
    "        file.write(image.read())",
  ].join("\n");
}

function pythonLiteral(value) {
  if (value instanceof LocalFile) return `open("${value.name}", "rb")`;
  if (value === true) return "True";
  if (value === false) return "False";
  if (value === null || value === undefined) return "None";
  if (Array.isArray(value)) return `[${value.map(pythonLiteral).join(", ")}]`;
  if (typeof value === "object") {
    return `{${Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${pythonLiteral(v)}`).join(", ")}}`;
  }
  return JSON.stringify(value);
}

async function reuseSettings(prediction) {
  const input = prediction.input || {};
  if (state.models.has(prediction.model)) selectModel(prediction.model);
  let task = "txt2img";
  if (input.image) {
    const outpaint = ["outpaint_left", "outpaint_right", "outpaint_up", "outpaint_down"].some((k) => input[k] > 0);
    task = outpaint ? "outpaint" : input.mask ? "inpaint" : "img2img";
  }
  setTask(task);
  form.reset();
  for (const [key, value] of Object.entries(input)) form.set(key, value);
  if (input.image) {
    try {
      const blob = await (await fetch(input.image)).blob();
      await setImage(blob, input.image.startsWith("data:") ? null : input.image);
      if (input.mask) await loadMask(input.mask);
    } catch (error) {
      $("image-error").textContent = `Could not load the earlier image: ${error.message}`;
    }
  }
  applyTask();
  for (const [key, value] of Object.entries(input)) if (key === "width" || key === "height") form.set(key, value);
  await controlnet.restore(input.controlnets || [], input.return_control_maps);
  await imagePrompt.restore(input.ip_adapter_image);
  $("generate-title").scrollIntoView({ behavior: "smooth" });
  $("in-prompt")?.focus();
}

// using a result and keeping the form ------------------------------------------------------

// the schema's default steps of a served model (to tell the refiner's steps from the base's)
function defaultSteps(name) {
  const model = state.models.get(name);
  const props = model ? model.latest_version.openapi_schema.components.schemas.Input.properties : {};
  return props.num_inference_steps ? props.num_inference_steps.default : null;
}

// the tasks an output image can be the input of, as the form offers them now
function inputUses() {
  // an upscaler's output can only be upscaled again (the task radios are another model's)
  if (state.task === UPSCALE_TASK) return [{ task: UPSCALE_TASK, label: "Upscale again" }];
  const uses = [];
  for (const radio of document.querySelectorAll('input[name="task"]')) {
    if (radio.value === "txt2img" || radio.disabled) continue;
    uses.push({ task: radio.value, label: radio.parentElement.textContent.trim() });
  }
  if (!$("group-controlnet").hidden && controlnet.available()) {
    uses.push({ task: "controlnet", label: "ControlNet" });
  }
  return uses;
}

// an output image becomes the input of `task` (or of a new ControlNet unit)
async function useAsInput(task, url) {
  let blob;
  try {
    blob = await (await fetch(url)).blob();
  } catch (error) {
    $("form-error").textContent = `Could not load the image: ${error.message}`;
    return;
  }
  const ref = url.startsWith("data:") ? null : url; // the server reads its own file URLs
  if (task === "controlnet") {
    const unit = controlnet.add();
    if (!unit) return;
    $("group-controlnet").open = true;
    await unit.setFile(blob, ref);
    unit.root.scrollIntoView({ block: "center" });
    unit.focus();
    return;
  }
  setTask(task);
  await setImage(blob, ref);
  $("image-section").scrollIntoView({ block: "start" });
  $("image-file").focus({ preventScroll: true });
}

function saveForm() {
  if (!state.model || !state.restored) return;
  const fields = {};
  for (const name of form.fields.keys()) {
    const value = form.get(name);
    if (value !== undefined) fields[name] = value;
  }
  jobs.saveForm({ model: `${state.model.owner}/${state.model.name}`, task: state.task, fields });
}

// the form as this browser left it (images are not kept: an image task asks for one again)
function restoreForm() {
  const saved = jobs.savedForm();
  state.restored = true;
  if (!saved) return;
  if (saved.model && state.models.has(saved.model)) selectModel(saved.model);
  if (saved.task) setTask(saved.task);
  for (const [name, value] of Object.entries(saved.fields || {})) {
    if (form.has(name)) form.set(name, value);
  }
}

// history --------------------------------------------------------------------------------

async function loadHistory(more = false) {
  const gallery = $("gallery");
  let page;
  try {
    page = await api.predictions(more ? state.historyNext : null);
  } catch (error) {
    gallery.replaceChildren(el("li", { class: "error", text: `Could not load history: ${error.message}` }));
    return;
  }
  if (!more) gallery.replaceChildren();
  for (const prediction of page.results) if (!isRemoved(prediction.id)) gallery.append(historyCard(prediction));
  if (!gallery.children.length) gallery.append(el("li", { class: "empty", text: "No predictions yet." }));
  state.historyNext = page.next;
  $("history-more").hidden = !page.next;
  historyFilter.apply();
}

function historyCard(prediction) {
  const first = (prediction.output || [])[0];
  const upscale = isUpscale(prediction, state.models);
  // an upscale has no prompt: its card says the scale, and the sizes once the thumb loads
  const prompt = (prediction.input && prediction.input.prompt) || (upscale ? upscaleText(prediction.input) : "(no prompt)");
  const button = el("button", { type: "button", class: "card", "data-id": prediction.id,
    "aria-label": `${prediction.status}: ${prompt} (${prediction.id})` });
  const thumb = first ? el("img", { src: first, alt: "" }) : null;
  const title = el("span", { class: "card-prompt", text: prompt });
  if (upscale && thumb) {
    thumb.addEventListener("load", () => {
      title.textContent = upscaleText(prediction.input, [thumb.naturalWidth, thumb.naturalHeight]);
    }, { once: true });
  }
  button.append(
    thumb || el("div", { class: `thumb ${prediction.status}`, text: prediction.status }),
    title,
    ...cardFacts(prediction, state.models, thumb),
    el("span", { class: `badge ${prediction.status}`, text: prediction.status }),
  );
  if (prediction.error) button.append(el("span", { class: "card-error", title: prediction.error, text: prediction.error }));
  button.addEventListener("click", () => openPrediction(prediction.id));
  const item = historyItem(button, prediction, (next) => {
    (next?.querySelector(".card") || $("history-refresh")).focus();
    historyFilter.apply();
  });
  if (!jobs.isTerminal(prediction.status)) {
    jobs.liveCard(item, prediction, {
      defaultSteps: defaultSteps(prediction.model),
      onEnd: (ended) => {
        item.replaceWith(historyCard(ended));
        historyFilter.apply();
      },
    });
  }
  return item;
}

async function openPrediction(id) {
  try {
    const prediction = await api.prediction(id);
    if (state.running === id) {
      showOutput(true);
      return;
    }
    if (!jobs.isTerminal(prediction.status) && !state.running) {
      // a running job opens live, with its progress and Cancel
      history.replaceState(null, "", `#/predictions/${id}`);
      run(prediction);
      return;
    }
    showPrediction(prediction);
    history.replaceState(null, "", `#/predictions/${id}`);
    $("result-title").scrollIntoView({ behavior: "smooth" });
    $("result").querySelector(".prediction")?.setAttribute("tabindex", "-1");
    $("result").querySelector(".prediction")?.focus({ preventScroll: true });
  } catch (error) {
    $("result").replaceChildren(el("p", { class: "error", text: error.message }));
  }
}

// start ----------------------------------------------------------------------------------

async function loadAll() {
  await Promise.all([loadModels(), controlnet.loadCatalog()]);
  restoreForm();
  loadLoras();
  loadTrained();
  await loadHistory();
  const match = /^#\/predictions\/([\w-]+)$/.exec(location.hash);
  if (match) openPrediction(match[1]);
  // a job this browser started and a reload (or another tab) left: follow it again
  const running = state.running ? null : await jobs.unfinished();
  if (running && !state.running) run(running);
}

async function main() {
  setupToken();
  setupTasks();
  $("generate").addEventListener("submit", submit);
  setupLayout({ form: $("generate"), save: saveForm });
  $("cancel").addEventListener("click", cancel);
  $("history-refresh").addEventListener("click", () => loadHistory());
  $("history-more").addEventListener("click", () => loadHistory(true));
  window.addEventListener("hashchange", () => {
    const match = /^#\/predictions\/([\w-]+)$/.exec(location.hash);
    if (match) openPrediction(match[1]);
  });
  if (document.body.dataset.authRequired === "true" && !getToken()) await askToken(null);
  await loadAll();
  document.body.dataset.ready = "true";
}

main();
