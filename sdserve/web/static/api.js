// Talking to the server's Replicate API: the token, JSON calls, uploads, streams.
// The token lives in sessionStorage only, so it is gone when the tab closes.

const TOKEN_KEY = "sdserve.token";

export class ApiError extends Error {
  constructor(status, body) {
    const detail = (body && (body.detail || body.title)) || `HTTP ${status}`;
    super(detail);
    this.status = status;
    this.body = body || {};
    this.field = this.body.field || null;
  }
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

// Called when the server answers 401: resolves once the user gave a token (or gave up).
let askForToken = async () => false;
export function onUnauthorized(handler) {
  askForToken = handler;
}

function headers(extra) {
  const all = { ...extra };
  const token = getToken();
  if (token) all.Authorization = `Bearer ${token}`;
  return all;
}

async function parse(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return { detail: text };
  }
}

// fetch with the token; on 401 ask for a token once and retry.
export async function request(method, path, { json, form, retry = true } = {}) {
  const init = { method, headers: headers(json ? { "Content-Type": "application/json" } : {}) };
  if (json !== undefined) init.body = JSON.stringify(json);
  if (form !== undefined) init.body = form;
  const response = await fetch(path, init);
  const body = await parse(response);
  if (response.status === 401 && retry) {
    const gotOne = await askForToken(body && body.detail);
    if (gotOne) return request(method, path, { json, form, retry: false });
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

export const api = {
  models: () => request("GET", "/v1/models"),
  createPrediction: (model, input) =>
    request("POST", `/v1/models/${model}/predictions`, { json: { input } }),
  prediction: (id) => request("GET", `/v1/predictions/${encodeURIComponent(id)}`),
  cancel: (id) => request("POST", `/v1/predictions/${encodeURIComponent(id)}/cancel`),
  // `url` is a "next" link from a previous page, or null for the newest page
  predictions: (url) => request("GET", url ? pathOf(url) : "/v1/predictions"),
  // no token dialog for this one: a page without trainings works without it
  trainings: () => request("GET", "/v1/trainings", { retry: false }),
  upload: (file) => {
    const form = new FormData();
    form.append("content", file, file.name || "image.png");
    return request("POST", "/v1/files", { form });
  },
};

// Same-origin path of an absolute URL the server built (its public URL may differ).
export function pathOf(url) {
  const parsed = new URL(url, window.location.href);
  return parsed.pathname + parsed.search;
}

// Follow a prediction until it ends. Without a token the SSE stream gives progress and
// previews (asked for with ?progress=1: the default stream carries only Replicate's events);
// EventSource cannot send an Authorization header, so with a token we poll.
export function follow(prediction, { onProgress, onLog, onOutput }) {
  return getToken() ? poll(prediction.id, { onProgress }) : stream(prediction, { onProgress, onLog, onOutput });
}

function stream(prediction, { onProgress, onLog, onOutput }) {
  return new Promise((resolve) => {
    const source = new EventSource(`/v1/predictions/${encodeURIComponent(prediction.id)}/stream?progress=1`);
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      source.close();
      resolve();
    };
    source.addEventListener("progress", (event) => onProgress && onProgress(JSON.parse(event.data)));
    source.addEventListener("logs", (event) => onLog && onLog(event.data));
    source.addEventListener("output", (event) => onOutput && onOutput(event.data));
    source.addEventListener("done", finish);
    // the stream closing without "done" (server restart, proxy): fall back to polling
    source.onerror = () => {
      if (finished) return;
      finished = true;
      source.close();
      poll(prediction.id, { onProgress }).then(resolve);
    };
  });
}

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);

async function poll(id, { onProgress }) {
  for (;;) {
    let prediction;
    try {
      prediction = await api.prediction(id);
    } catch (error) {
      if (error.status === 404 || error.status === 401) return;
      await sleep(1000);
      continue;
    }
    if (TERMINAL.has(prediction.status)) return;
    const step = lastStep(prediction.logs || "");
    if (step && onProgress) onProgress({ ...step, preview: null });
    await sleep(500);
  }
}

// "12/30" in the last log lines, as progress bars print it
function lastStep(logs) {
  const matches = [...logs.matchAll(/(\d+)\s*\/\s*(\d+)/g)];
  if (!matches.length) return null;
  const [, step, total] = matches[matches.length - 1];
  return { step: Number(step), total: Number(total), percentage: Number(step) / Number(total) };
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
