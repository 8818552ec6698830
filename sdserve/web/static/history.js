// The history gallery's extras: what each card says (model, task, size, time, images),
// filtering by model and status, and removing a card from this browser's list. The API
// has no way to delete a prediction (Replicate's has none either), so "Remove" hides it
// here only: the ids are kept in this browser's localStorage, the prediction stays on
// the server and its URL keeps working.

import { el } from "./form.js";
import { isUpscale } from "./upscale.js";

const REMOVED_KEY = "sdserve.removedPredictions";
const RUNNING = new Set(["starting", "processing"]);

// the task a prediction ran, from its input (as "Reuse these settings" chooses it)
export function taskOf(input = {}) {
  const outpaint = ["outpaint_left", "outpaint_right", "outpaint_up", "outpaint_down"].some((k) => input[k] > 0);
  let task = "text to image";
  if (input.image) task = outpaint ? "outpaint" : input.mask ? "inpaint" : "image to image";
  const units = Array.isArray(input.controlnets) ? input.controlnets.length : 0;
  return units ? `${task} + ControlNet` : task;
}

function removedIds() {
  try {
    return new Set(JSON.parse(localStorage.getItem(REMOVED_KEY) || "[]"));
  } catch {
    return new Set();
  }
}

export function isRemoved(id) {
  return removedIds().has(id);
}

function remove(id) {
  const ids = removedIds();
  ids.add(id);
  // keep the list bounded: the newest removals matter, old ids scroll out of the API anyway
  localStorage.setItem(REMOVED_KEY, JSON.stringify([...ids].slice(-500)));
}

function when(prediction) {
  if (!prediction.created_at) return "";
  const created = new Date(prediction.created_at);
  const today = new Date().toDateString() === created.toDateString();
  return today
    ? created.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : created.toLocaleDateString([], { month: "short", day: "numeric" });
}

// The facts under a card's prompt. `models` maps "owner/name" to the model JSON (for the
// default size of a request that did not say one); a shown image gives its real size.
export function cardFacts(prediction, models, thumb) {
  const input = prediction.input || {};
  const model = models.get(prediction.model);
  const properties = model ? model.latest_version.openapi_schema.components.schemas.Input.properties || {} : {};
  const width = input.width ?? (input.image ? null : properties.width?.default);
  const height = input.height ?? (input.image ? null : properties.height?.default);
  const size = el("span", { class: "card-size", text: width && height ? `${width}×${height}` : "image size" });
  if (thumb) {
    // the first output's own size is the truth (an image task keeps its input's size)
    thumb.addEventListener("load", () => { size.textContent = `${thumb.naturalWidth}×${thumb.naturalHeight}`; });
  }
  const outputs = (prediction.output || []).length;
  const count = outputs
    ? `${outputs} image${outputs === 1 ? "" : "s"}`
    : `${input.num_outputs ?? 1} asked`;
  const time = prediction.metrics && prediction.metrics.predict_time;
  return [
    el("span", { class: "card-meta" },
      el("span", { class: "card-model", text: prediction.model || "" }), " · ",
      el("span", { class: "card-task", text: isUpscale(prediction, models) ? "upscale" : taskOf(input) }), " · ", size),
    el("span", { class: "card-meta" },
      el("time", { datetime: prediction.created_at || "", text: when(prediction) }),
      time ? ` · ${Number(time).toFixed(1)} s` : "", " · ",
      el("span", { class: "card-count", text: count })),
  ];
}

// The list item of a card, with its "Remove" button beside it (a button cannot hold one).
export function historyItem(card, prediction, onRemoved) {
  const item = el("li", { "data-model": prediction.model || "", "data-status": prediction.status });
  const removeButton = el("button", { type: "button", class: "card-remove",
    "aria-label": `Remove ${prediction.id} from this list`, title: "Remove from this list (this browser only)",
    text: "Remove" });
  removeButton.addEventListener("click", () => {
    remove(prediction.id);
    const next = item.nextElementSibling || item.previousElementSibling;
    item.remove();
    onRemoved?.(next);
  });
  item.append(card, removeButton);
  return item;
}

// Filtering the loaded cards by model and status.
export class HistoryFilter {
  constructor({ gallery, model, status, note }) {
    Object.assign(this, { gallery, model, status, note });
    model.addEventListener("change", () => this.apply());
    status.addEventListener("change", () => this.apply());
  }

  setModels(names) {
    const chosen = this.model.value;
    this.model.replaceChildren(el("option", { value: "", text: "All models" }),
      ...names.map((name) => el("option", { value: name, text: name })));
    if (names.includes(chosen)) this.model.value = chosen;
  }

  apply() {
    const model = this.model.value;
    const status = this.status.value;
    let shown = 0;
    let total = 0;
    for (const item of this.gallery.querySelectorAll("li[data-status]")) {
      total += 1;
      const statusMatches = !status || item.dataset.status === status
        || (status === "running" && RUNNING.has(item.dataset.status));
      const visible = (!model || item.dataset.model === model) && statusMatches;
      item.hidden = !visible;
      if (visible) shown += 1;
    }
    this.note.textContent = model || status ? `${shown} of the ${total} loaded predictions match.` : "";
  }
}
