// Jobs that outlive the page: the form kept in this browser (localStorage, so a reload or
// another tab finds it), the predictions this browser started (re-attached after a reload),
// what a job that has no step yet is doing ("queued #2", "loading the model…"), and
// history cards of running jobs that follow them until they end.

import { api } from "./api.js";

const FORM_KEY = "sdserve.playground.form";
const JOBS_KEY = "sdserve.playground.jobs";
const KEEP_JOBS = 20;
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const CARD_POLL_MS = 1500;

export function isTerminal(status) {
  return TERMINAL.has(status);
}

function read(key, fallback) {
  try {
    const text = localStorage.getItem(key);
    return text ? JSON.parse(text) : fallback;
  } catch {
    return fallback; // storage off (private mode) or a value of an older page
  }
}

function write(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch {
    // storage full or off: the page works without it
  }
}

// form ---------------------------------------------------------------------------------

// {model, task, fields: {name: value}} as the person left it (never the token or images)
export function savedForm() {
  const saved = read(FORM_KEY, null);
  return saved && typeof saved === "object" ? saved : null;
}

export function saveForm(snapshot) {
  write(FORM_KEY, snapshot);
}

// predictions started here ---------------------------------------------------------------

export function remember(id) {
  const ids = read(JOBS_KEY, []).filter((known) => known !== id);
  ids.unshift(id);
  write(JOBS_KEY, ids.slice(0, KEEP_JOBS));
}

export function forget(id) {
  write(JOBS_KEY, read(JOBS_KEY, []).filter((known) => known !== id));
}

// The newest prediction this browser started that is still running (null: none); ended
// ones are forgotten on the way.
export async function unfinished() {
  for (const id of read(JOBS_KEY, [])) {
    let prediction;
    try {
      prediction = await api.prediction(id);
    } catch (error) {
      if (error.status === 404) forget(id);
      continue;
    }
    if (!isTerminal(prediction.status)) return prediction;
    forget(id);
  }
  return null;
}

// words ----------------------------------------------------------------------------------

// What a job with no step yet is doing, from the service's `sdserve_standing`.
export function standingText(prediction) {
  const standing = prediction.sdserve_standing || {};
  const cold = standing.model_loaded === false;
  if (prediction.status === "starting") {
    const place = standing.queue_position ? `Queued #${standing.queue_position}` : "Queued";
    return cold ? `${place}; the model loads before it runs` : place;
  }
  if (prediction.status === "processing") return cold ? "Loading the model…" : "Preparing…";
  return prediction.status;
}

// "Step 3 of 20", or for the SDXL refiner run after the base ("base_image_refiner") the
// stage it is in: the refiner's steps are numbered on from the base's.
export function stepText(step, total, baseSteps) {
  if (baseSteps && total > baseSteps) {
    if (step <= baseSteps) return `Base: step ${step} of ${baseSteps}, then refining.`;
    return `Refining: step ${step - baseSteps} of ${total - baseSteps}.`;
  }
  return `Step ${step} of ${total}.`;
}

// The base model's steps of a prediction that runs the refiner after it (else null).
export function refinerBase(input, defaultSteps) {
  if (!input || input.refine !== "base_image_refiner") return null;
  return Number(input.num_inference_steps ?? defaultSteps) || null;
}

// the last "12/30" of a prediction's logs (tqdm lines, one per step)
export function lastStep(logs) {
  const matches = [...(logs || "").matchAll(/(\d+)\s*\/\s*(\d+)/g)];
  if (!matches.length) return null;
  const [, step, total] = matches[matches.length - 1];
  return { step: Number(step), total: Number(total) };
}

// What a running job is doing, in a few words: its step, or its standing.
export function liveText(prediction, defaultSteps) {
  const step = prediction.status === "processing" ? lastStep(prediction.logs) : null;
  if (!step) return standingText(prediction);
  return stepText(step.step, step.total, refinerBase(prediction.input, defaultSteps));
}

// Polls a prediction until `stop()` (or until it ends) and hands each read to `onRead`.
export function watch(id, onRead, everyMs = 1000) {
  let stopped = false;
  (async () => {
    while (!stopped) {
      try {
        const prediction = await api.prediction(id);
        if (stopped) return;
        onRead(prediction);
        if (isTerminal(prediction.status)) return;
      } catch {
        // a failed read: the next one may pass
      }
      await new Promise((resolve) => setTimeout(resolve, everyMs));
    }
  })();
  return () => { stopped = true; };
}

// history cards --------------------------------------------------------------------------

// Keep a history card of a running job live: its text says what the job does, its bar
// how far it is; `onEnd(prediction)` replaces the card once the job ended. The watch ends
// when the card leaves the page (a refresh of the history).
export function liveCard(item, prediction, { onEnd, defaultSteps }) {
  const text = document.createElement("span");
  text.className = "card-live";
  text.setAttribute("role", "status");
  const bar = document.createElement("progress");
  bar.max = 1;
  bar.value = 0;
  bar.setAttribute("aria-label", "Progress");
  const button = item.querySelector(".card");
  button.append(text, bar);
  const show = (read) => {
    text.textContent = liveText(read, defaultSteps);
    const step = read.status === "processing" ? lastStep(read.logs) : null;
    if (step) {
      bar.max = step.total;
      bar.value = step.step;
    } else {
      bar.removeAttribute("value"); // indeterminate while it waits or loads
    }
  };
  show(prediction);
  const stop = watch(prediction.id, (read) => {
    if (!item.isConnected) {
      stop();
      return;
    }
    if (isTerminal(read.status)) onEnd(read);
    else show(read);
  }, CARD_POLL_MS);
}
