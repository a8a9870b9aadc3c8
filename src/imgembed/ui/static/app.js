// The page: open an image, the server computes its features once, then every click, background
// click or dragged box is decoded here in the browser (no further request), and the mask can be
// downloaded as PNG. Every prompt after an object's first refines the mask shown: the decoder gets
// that mask's low-resolution logits as mask_input (has_mask_input 1) with all the object's points,
// as in Meta's predictor workflow; Clear (or a new image) starts a new object, without a mask.
// See docs/ui.md.

import { capabilities, loadRuntime, createSession, promptInputs, decode, bestIndex } from "./decoder.js";
import { ConnectionLostError, ServerError, request, fetchFeatures, float16ToFloat32 } from "./features.js";
import { upscaleLogits, threshold, area, maskPng, bytesToBase64 } from "./masks.js";
import { Stage } from "./view.js";

const pageBase = new URL("./", document.baseURI); // .../ui/
const serviceBase = new URL("../", pageBase);
const vendorBase = new URL("vendor/", pageBase);
const DRAG_PIXELS = 5;
const API_KEY_ITEM = "imgembed-api-key";

const $ = (selector) => document.querySelector(selector);
const elements = {
  file: $("#file"),
  model: $("#model"),
  dtype: $("#dtype"),
  output: $("#output"),
  clickLabel: $("#click-label"),
  undo: $("#undo"),
  clear: $("#clear"),
  download: $("#download"),
  apiKey: $("#api-key"),
  apiKeyBox: $("#api-key-box"),
  message: $("#message"),
  backend: $("#backend"),
  details: $("#details"),
};
const stage = new Stage($("#stage"));

const state = {
  runtime: null, // Promise of loadRuntime()
  sessions: new Map(), // "model|graph" -> Promise of {session, backend}
  image: null, // {file, width, height, meta, features, imageId, model, untrained}
  session: null, // {session, backend, graph}
  // previous: the mask this prompt refines, fed to the decoder as mask_input: null for an object's
  // first prompt (no mask), {logits, decode} once known, undefined until then (the mask shown when
  // the prompt is decoded; see maskToRefine).
  prompt: { points: [], labels: [], box: null, previous: null },
  history: [],
  loadToken: 0,
  decoding: false,
  decodeAgain: false,
  drag: null,
  lastMask: null,
};

// For tests and tools: what the page decoded last, without reading pixels off the screen.
const api = {
  decodeCount: 0,
  get state() {
    return document.body.dataset.state;
  },
  get imageId() {
    return state.image ? state.image.imageId : null;
  },
  get meta() {
    return state.image ? state.image.meta : null;
  },
  get lastMask() {
    const last = state.lastMask;
    if (!last) return null;
    const { width, height, index, scores, area: pixels, prompt, graph, backend, decodeMs } = last;
    const { decode, hasMaskInput, maskInputFrom } = last;
    return { width, height, index, scores, area: pixels, prompt, graph, backend, decodeMs, decode, hasMaskInput, maskInputFrom };
  },
  maskBase64: () => (state.lastMask ? bytesToBase64(state.lastMask.data) : null),
  lowResBase64: (k) => (state.lastMask ? bytesToBase64(new Uint8Array(state.lastMask.lowRes[k].buffer)) : null),
  // The mask_input fed to the last decode: 256x256 float32 logits (zeros when has_mask_input was 0).
  maskInputBase64: () => (state.lastMask ? bytesToBase64(new Uint8Array(state.lastMask.maskInput.buffer)) : null),
  float16ToFloat32: (bits) => Array.from(float16ToFloat32(Uint16Array.from(bits))),
};
window.__imgembed = api;

function setState(name) {
  document.body.dataset.state = name;
}

/** Shows one message; kind is info, progress, warning or error. Text only, never HTML. */
function say(kind, text) {
  elements.message.textContent = text;
  elements.message.dataset.kind = kind;
  elements.message.setAttribute("role", kind === "error" ? "alert" : "status");
}

/**
 * A message for a failed step.
 * @param {Error} error What went wrong.
 * @param {{subject: string, doing: string}} step What was sent ("the image") and what the page was
 *   doing ("sending the image").
 */
function describe(error, { subject, doing }) {
  if (error instanceof ConnectionLostError) {
    return `Lost the connection to the imgembed server while ${doing}. Check that the server is running and reachable, then try again.`;
  }
  if (error instanceof ServerError) {
    const where = [error.field ? `field ${error.field}` : "", `HTTP ${error.status}`].filter(Boolean).join(", ");
    if (error.status === 401) elements.apiKeyBox.open = true;
    return `The server refused ${subject}: ${error.message} (${where})`;
  }
  return `Something went wrong while ${doing}: ${error.message || error}`;
}

function authHeaders() {
  const key = sessionStorage.getItem(API_KEY_ITEM);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function setEditing(enabled) {
  for (const control of [elements.undo, elements.clear]) control.disabled = !enabled;
  elements.download.disabled = !(enabled && state.lastMask);
}

// ---- start-up -------------------------------------------------------------------------------

async function start() {
  setState("starting");
  elements.apiKey.value = sessionStorage.getItem(API_KEY_ITEM) || "";
  const found = capabilities();
  if (!found.wasm) {
    setState("unsupported");
    elements.file.disabled = true;
    say(
      "error",
      "This browser cannot run WebAssembly, which this page needs to decode masks on your machine. " +
        "Use a current Chrome, Edge, Firefox or Safari with WebAssembly allowed (some security settings turn it off). " +
        "Masks can still be computed on the server: POST /v1/sam2/segment.",
    );
    elements.backend.textContent = "No WebAssembly: decoding in this browser is not possible.";
    return;
  }
  elements.backend.textContent = found.webgpu
    ? "Checking WebGPU…"
    : "Decoding on the CPU with WebAssembly: this browser offers no WebGPU (same masks, slower).";
  say("progress", "Connecting to the imgembed server…");
  let config;
  let models;
  try {
    const headers = authHeaders();
    [config, models] = await Promise.all([
      request(new URL("config.json", pageBase), { headers }).then((response) => response.json()),
      request(new URL("v1/models", serviceBase), { headers }).then((response) => response.json()),
    ]);
  } catch (error) {
    setState("error");
    say("error", describe(error, { subject: "the page's settings request", doing: "loading the page's settings" }));
    return;
  }
  if (!config.runtime) {
    setState("error");
    elements.file.disabled = true;
    say("error", config.runtime_missing_message);
    return;
  }
  const sam2 = models.data.filter((model) => !model.task || model.task.startsWith("sam2"));
  elements.model.replaceChildren(
    ...sam2.map((model) => {
      const option = document.createElement("option");
      option.value = model.id;
      option.textContent = model.weights && model.weights.untrained ? `${model.id} (untrained weights)` : model.id;
      return option;
    }),
  );
  if (!sam2.length) {
    setState("error");
    say("error", "This server serves no SAM 2 model, so there is nothing to segment with.");
    return;
  }
  state.runtime = loadRuntime(vendorBase);
  state.runtime.then(
    (runtime) => {
      const threads = runtime.ort.env.wasm.numThreads;
      elements.backend.textContent =
        runtime.backend === "webgpu"
          ? `Decoding on the GPU with WebGPU (onnxruntime-web ${config.runtime.version}).`
          : `Decoding on the CPU with WebAssembly, ${threads} thread${threads === 1 ? "" : "s"} (onnxruntime-web ${config.runtime.version}): ${runtime.reason} (same masks, slower).`;
    },
    (error) => {
      elements.backend.textContent = `onnxruntime-web could not start: ${error.message || error}`;
    },
  );
  elements.file.disabled = false;
  setState("idle");
  say("info", "Open an image to start.");
}

// ---- opening an image -----------------------------------------------------------------------

function decoderGraph() {
  return elements.output.value === "single" ? "decoder_single_mask" : "decoder";
}

async function sessionFor(model, graph) {
  const key = `${model}|${graph}`;
  if (!state.sessions.has(key)) {
    const loading = (async () => {
      const runtime = await state.runtime;
      const url = new URL(`models/${encodeURIComponent(model)}/${graph}.onnx`, pageBase);
      const response = await request(url, { headers: authHeaders() });
      let bytes;
      try {
        bytes = new Uint8Array(await response.arrayBuffer());
      } catch (error) {
        throw new ConnectionLostError(String(url), error);
      }
      return { ...(await createSession(runtime, bytes)), graph };
    })();
    state.sessions.set(key, loading);
    loading.catch(() => state.sessions.delete(key)); // a failure is retried next time
  }
  return state.sessions.get(key);
}

/** Rejects with the step attached, so the message says which step failed (see describe). */
function step(promise, subject, doing) {
  return promise.catch((error) => {
    throw Object.assign(new Error(), { cause: error, step: { subject, doing } });
  });
}

async function openImage(file) {
  const token = ++state.loadToken;
  const current = () => token === state.loadToken;
  state.image = null;
  state.lastMask = null;
  delete document.body.dataset.maskInput;
  resetPrompt();
  setEditing(false);
  setState("loading");
  elements.details.textContent = "";
  say("progress", `Opening ${file.name}…`);
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    if (!current()) return;
    stage.hide();
    setState("error");
    const kind = file.type ? `type ${file.type}` : "unknown type";
    say("error", `“${file.name}” is not an image this browser can open (${kind}). Choose a PNG, JPEG, WebP, GIF or BMP picture.`);
    return;
  }
  const model = elements.model.value;
  const graph = decoderGraph();
  say("progress", `Computing the features of ${file.name} on the server and loading the decoder (the first use of a model exports it, which takes a while)…`);
  let features;
  let session;
  try {
    [features, session] = await Promise.all([
      step(fetchFeatures(new URL("v1/sam2/embed", serviceBase), file, { model, dtype: elements.dtype.value, headers: authHeaders() }), "the image", "sending the image"),
      step(sessionFor(model, graph), `the ${model} decoder`, `loading the ${model} decoder`),
    ]);
  } catch (wrapped) {
    if (!current()) return;
    stage.hide();
    setState("error");
    say("error", describe(wrapped.cause, wrapped.step));
    return;
  }
  if (!current()) return;
  const meta = features.header.meta;
  const [height, width] = meta.orig_size;
  state.image = {
    file,
    width,
    height,
    meta,
    features: features.tensors,
    imageId: features.header.image_id,
    model,
    untrained: Boolean(features.header.weights && features.header.weights.untrained),
  };
  state.session = session;
  const sizeNote = bitmap.width !== width || bitmap.height !== height ? ` (shown at the server's ${width}x${height})` : "";
  stage.show(bitmap, width, height);
  bitmap.close();
  setEditing(true);
  setState("ready");
  const megabytes = (features.bytes / 1048576).toFixed(1);
  elements.details.textContent = `${width}x${height} pixels${sizeNote}; features: ${megabytes} MB ${features.header.dtype}, image_id ${state.image.imageId}.`;
  say(
    state.image.untrained ? "warning" : "info",
    (state.image.untrained ? "The server runs untrained (dummy) weights: masks are meaningless. " : "") +
      "Click the object. Shift+click or right-click marks background; drag draws a box.",
  );
}

// ---- prompts and decoding ---------------------------------------------------------------------

function copyPrompt(prompt) {
  return {
    points: prompt.points.map((point) => [...point]),
    labels: [...prompt.labels],
    box: prompt.box ? [...prompt.box] : null,
    previous: prompt.previous, // never changed in place: shared
  };
}

function isEmpty(prompt) {
  return !prompt.points.length && !prompt.box;
}

function resetPrompt() {
  state.prompt = { points: [], labels: [], box: null, previous: null };
  state.history = [];
  stage.drawPrompts(state.prompt);
}

/**
 * The mask the current prompt refines, settled on first use: the mask the page shows (its chosen
 * candidate's 256x256 logits), or null for none.
 */
function maskToRefine() {
  if (state.prompt.previous === undefined) {
    const shown = state.lastMask;
    state.prompt.previous = shown ? { logits: shown.lowRes[shown.index], decode: shown.decode } : null;
  }
  return state.prompt.previous;
}

function changePrompt(change) {
  maskToRefine(); // the prompt kept for Undo decodes again exactly as it did
  const continues = !isEmpty(state.prompt);
  state.history.push(copyPrompt(state.prompt));
  change(state.prompt);
  // A prompt added to an object refines its mask; an object's first prompt (after Clear) has none.
  state.prompt.previous = continues && !isEmpty(state.prompt) ? undefined : null;
  stage.drawPrompts(state.prompt);
  scheduleDecode();
}

async function scheduleDecode() {
  if (state.decoding) {
    state.decodeAgain = true; // the latest prompt is decoded once the running decode ends
    return;
  }
  state.decoding = true;
  try {
    do {
      state.decodeAgain = false;
      await decodeCurrent();
    } while (state.decodeAgain);
  } finally {
    state.decoding = false;
  }
}

async function decodeCurrent() {
  const image = state.image;
  const session = state.session;
  if (!image || !session) return;
  const previous = isEmpty(state.prompt) ? null : maskToRefine();
  const { previous: _, ...prompt } = copyPrompt(state.prompt);
  if (isEmpty(prompt)) {
    state.lastMask = null;
    stage.clearMask();
    delete document.body.dataset.maskInput;
    setEditing(true);
    return;
  }
  setState("decoding");
  try {
    const runtime = await state.runtime;
    const started = performance.now();
    const maskInput = previous ? previous.logits : null;
    const output = await decode(runtime, session.session, image.features, promptInputs(image.meta, prompt), maskInput);
    const index = bestIndex(output.scores);
    const mask = threshold(upscaleLogits(output.masks[index], image.meta));
    const decodeMs = performance.now() - started;
    if (image !== state.image) return;
    api.decodeCount += 1;
    state.lastMask = {
      width: image.width,
      height: image.height,
      data: mask,
      index,
      scores: Array.from(output.scores),
      area: area(mask),
      prompt,
      lowRes: output.masks,
      graph: session.graph,
      backend: session.backend,
      decodeMs,
      decode: api.decodeCount,
      hasMaskInput: output.fed.hasMaskInput,
      maskInput: output.fed.maskInput,
      maskInputFrom: previous ? previous.decode : null,
    };
    stage.drawMask(mask);
    document.body.dataset.maskInput = output.fed.hasMaskInput ? "previous" : "none";
    document.body.dataset.decodes = String(api.decodeCount);
    setEditing(true);
    setState("ready");
    const which = output.masks.length > 1 ? `best of ${output.masks.length} (mask ${index + 1})` : "single mask";
    const refined = output.fed.hasMaskInput ? "refined with the previous mask, " : "";
    say(
      image.untrained ? "warning" : "info",
      `${which}, ${refined}predicted IoU ${output.scores[index].toFixed(3)}, ${state.lastMask.area} pixels; decoded in this browser in ${decodeMs.toFixed(0)} ms.` +
        (image.untrained ? " Untrained (dummy) weights: the mask is meaningless." : ""),
    );
  } catch (error) {
    setState("error");
    say("error", describe(error, { subject: "the prompt", doing: "decoding the mask in the browser" }));
  }
}

// ---- events -----------------------------------------------------------------------------------

elements.file.addEventListener("change", () => {
  const file = elements.file.files[0];
  if (file) openImage(file);
});

for (const control of [elements.model, elements.dtype]) {
  control.addEventListener("change", () => {
    if (state.image) openImage(state.image.file);
  });
}

elements.output.addEventListener("change", async () => {
  if (!state.image) return;
  const image = state.image;
  setState("loading");
  say("progress", "Loading the decoder…");
  try {
    const session = await sessionFor(image.model, decoderGraph());
    if (image !== state.image) return;
    state.session = session;
    setState("ready");
    scheduleDecode();
  } catch (error) {
    setState("error");
    say("error", describe(error, { subject: "the decoder", doing: "loading the decoder" }));
  }
});

elements.apiKey.addEventListener("change", () => {
  const key = elements.apiKey.value.trim();
  if (key) sessionStorage.setItem(API_KEY_ITEM, key);
  else sessionStorage.removeItem(API_KEY_ITEM);
  if (document.body.dataset.state === "error" && !state.image) start();
});

const stageRoot = stage.root;
stageRoot.addEventListener("contextmenu", (event) => event.preventDefault());
stageRoot.addEventListener("pointerdown", (event) => {
  if (!state.image || (event.button !== 0 && event.button !== 2)) return;
  event.preventDefault();
  stageRoot.setPointerCapture(event.pointerId);
  const background = event.button === 2 || event.shiftKey || elements.clickLabel.value === "background";
  state.drag = { start: event, at: stage.toImage(event), label: background ? 0 : 1, box: null };
});
stageRoot.addEventListener("pointermove", (event) => {
  const drag = state.drag;
  if (!drag) return;
  if (Stage.distance(drag.start, event) > DRAG_PIXELS) {
    drag.box = [...drag.at, ...stage.toImage(event)];
    stage.drawPrompts(state.prompt, drag.box);
  }
});
stageRoot.addEventListener("pointerup", (event) => {
  const drag = state.drag;
  state.drag = null;
  if (!drag) return;
  if (Stage.distance(drag.start, event) > DRAG_PIXELS) {
    const [x0, y0, x1, y1] = [...drag.at, ...stage.toImage(event)];
    changePrompt((prompt) => {
      prompt.box = [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)];
    });
  } else {
    changePrompt((prompt) => {
      prompt.points.push(drag.at);
      prompt.labels.push(drag.label);
    });
  }
});
stageRoot.addEventListener("pointercancel", () => {
  state.drag = null;
  stage.drawPrompts(state.prompt);
});

elements.undo.addEventListener("click", () => {
  if (!state.history.length) return;
  state.prompt = state.history.pop();
  stage.drawPrompts(state.prompt);
  scheduleDecode();
});
elements.clear.addEventListener("click", () => changePrompt((prompt) => Object.assign(prompt, { points: [], labels: [], box: null })));
document.addEventListener("keydown", (event) => {
  if (!state.image || event.target instanceof HTMLInputElement) return;
  if ((event.ctrlKey || event.metaKey) && event.key === "z") elements.undo.click();
  if (event.key === "Escape") elements.clear.click();
});

elements.download.addEventListener("click", async () => {
  const last = state.lastMask;
  if (!last) return;
  try {
    const blob = await maskPng(last.data, last.width, last.height);
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${state.image.file.name.replace(/\.[^.]*$/, "") || "image"}-mask.png`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
  } catch (error) {
    say("error", describe(error, { subject: "the mask", doing: "writing the PNG" }));
  }
});

start();
