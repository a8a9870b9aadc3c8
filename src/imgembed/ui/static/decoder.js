// The SAM 2 decoder, run in the browser by onnxruntime-web (served by imgembed from /ui/vendor/).
//
// Inputs (samexporter's decoder graph, as imgembed exports it): image_embed [1,256,64,64],
// high_res_feats_0 [1,32,256,256], high_res_feats_1 [1,64,128,128], point_coords [1,N,2] in the
// 1024x1024 input frame, point_labels [1,N] (1 foreground, 0 background, 2/3 box corners),
// mask_input [1,1,256,256] (an earlier round's low-resolution logits, or zeros) and has_mask_input
// [1] (1 to use mask_input, 0 to ignore it): all seven are plain graph inputs and every decode
// feeds all seven. The graph appends SAM 2's padding point itself.
// Outputs: masks [1,K,256,256] low-resolution logits and iou_predictions [1,K] (K = 3, or 1 for
// the single-mask graph).

import { LOW_RES } from "./masks.js";

/** What this browser offers: WebAssembly (required) and WebGPU (used when it has an adapter). */
export function capabilities() {
  const wasm = typeof WebAssembly === "object" && WebAssembly !== null && typeof WebAssembly.instantiate === "function";
  const webgpu = typeof navigator === "object" && "gpu" in navigator && Boolean(navigator.gpu);
  return { wasm, webgpu, isolated: Boolean(globalThis.crossOriginIsolated) };
}

async function webgpuAdapter() {
  try {
    return Boolean(await navigator.gpu.requestAdapter());
  } catch {
    return false;
  }
}

/**
 * Loads onnxruntime-web: the WebGPU build where the browser has a WebGPU adapter, else the
 * WebAssembly build.
 * @param {URL} vendorBase Folder URL of the vendored files (ending in "/").
 * @returns {Promise<{ort: object, backend: "webgpu"|"wasm", reason: string}>}
 */
export async function loadRuntime(vendorBase) {
  const { webgpu, isolated } = capabilities();
  let backend = "wasm";
  let reason = "this browser offers no WebGPU";
  if (webgpu) {
    if (await webgpuAdapter()) {
      backend = "webgpu";
      reason = "";
    } else {
      reason = "this browser has WebGPU but no usable GPU adapter";
    }
  }
  const file = backend === "webgpu" ? "ort.webgpu.min.mjs" : "ort.wasm.min.mjs";
  const ort = await import(new URL(file, vendorBase).href);
  ort.env.wasm.wasmPaths = vendorBase.href;
  ort.env.wasm.numThreads = isolated ? Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1)) : 1;
  ort.env.logLevel = "warning";
  return { ort, backend, reason };
}

/**
 * An inference session for decoder graph bytes; falls back to WebAssembly when WebGPU fails.
 * @returns {Promise<{session: object, backend: string}>}
 * @throws {Error} When the graph does not take all seven decoder inputs (see checkDecoderInputs).
 */
export async function createSession(runtime, graphBytes) {
  const options = { graphOptimizationLevel: "all" };
  if (runtime.backend === "webgpu") {
    let session = null;
    try {
      session = await runtime.ort.InferenceSession.create(graphBytes, { ...options, executionProviders: ["webgpu"] });
    } catch (error) {
      console.warn("WebGPU session failed, using WebAssembly:", error);
    }
    if (session) {
      checkDecoderInputs(session);
      return { session, backend: "webgpu" };
    }
  }
  const session = await runtime.ort.InferenceSession.create(graphBytes, { ...options, executionProviders: ["wasm"] });
  checkDecoderInputs(session);
  return { session, backend: "wasm" };
}

/**
 * The decoder's inputs for one prompt.
 * @param {object} frame Maps original pixels into the input frame: {scale: {w, h}, pad: [top, left, ...]}.
 * @param {{points: number[][], labels: number[], box: number[]|null}} prompt In original pixels;
 *   the box goes first, as two corner points labelled 2 and 3, as the server's segment orders it.
 * @returns {{coords: Float32Array, labels: Float32Array, count: number}}
 */
export function promptInputs(frame, prompt) {
  const points = [];
  const labels = [];
  if (prompt.box) {
    points.push([prompt.box[0], prompt.box[1]], [prompt.box[2], prompt.box[3]]);
    labels.push(2, 3);
  }
  prompt.points.forEach((point, index) => {
    points.push(point);
    labels.push(prompt.labels[index]);
  });
  const coords = new Float32Array(points.length * 2);
  points.forEach(([x, y], index) => {
    coords[2 * index] = x * frame.scale.w + frame.pad[1];
    coords[2 * index + 1] = y * frame.scale.h + frame.pad[0];
  });
  return { coords, labels: Float32Array.from(labels), count: points.length };
}

export const DECODER_INPUTS = Object.freeze([
  "image_embed",
  "high_res_feats_0",
  "high_res_feats_1",
  "point_coords",
  "point_labels",
  "mask_input",
  "has_mask_input",
]);

/**
 * Refuses a decoder graph that does not take all seven inputs as plain inputs.
 * @param {object} session From createSession (or an onnxruntime-web InferenceSession).
 * @throws {Error} Names the missing inputs and the graph's own.
 */
export function checkDecoderInputs(session) {
  const missing = DECODER_INPUTS.filter((name) => !session.inputNames.includes(name));
  if (missing.length) {
    throw new Error(
      `the decoder graph lacks the input${missing.length === 1 ? "" : "s"} ${missing.join(", ")} ` +
        `(its inputs: ${session.inputNames.join(", ") || "none"}); the page needs all seven of ` +
        `${DECODER_INPUTS.join(", ")}. Re-export the decoder with this imgembed version.`,
    );
  }
}

/**
 * Runs the decoder on one prompt.
 * @param {object} runtime From loadRuntime.
 * @param {object} session From createSession.
 * @param {Object<string, {data: Float32Array, dims: number[]}>} features The three feature tensors.
 * @param {{coords: Float32Array, labels: Float32Array, count: number}} inputs From promptInputs.
 * @param {Float32Array|null} maskInput An earlier round's 256x256 low-resolution logits to refine
 *   (fed with has_mask_input 1), or null for none (zeros, has_mask_input 0).
 * @returns {Promise<{masks: Float32Array[], scores: Float32Array, fed: {maskInput: Float32Array, hasMaskInput: number}}>}
 *   K 256x256 logit grids, K scores, and the mask_input and has_mask_input values fed.
 */
export async function decode(runtime, session, features, inputs, maskInput = null) {
  checkDecoderInputs(session);
  const cells = LOW_RES * LOW_RES;
  if (maskInput && maskInput.length !== cells) {
    throw new Error(`mask_input must hold ${LOW_RES}x${LOW_RES} logits, got ${maskInput.length} values`);
  }
  const { Tensor } = runtime.ort;
  const feeds = {
    image_embed: new Tensor("float32", features.image_embed.data, features.image_embed.dims),
    high_res_feats_0: new Tensor("float32", features.high_res_feats_0.data, features.high_res_feats_0.dims),
    high_res_feats_1: new Tensor("float32", features.high_res_feats_1.data, features.high_res_feats_1.dims),
    point_coords: new Tensor("float32", inputs.coords, [1, inputs.count, 2]),
    point_labels: new Tensor("float32", inputs.labels, [1, inputs.count]),
    mask_input: new Tensor("float32", maskInput ? Float32Array.from(maskInput) : new Float32Array(cells), [1, 1, LOW_RES, LOW_RES]),
    has_mask_input: new Tensor("float32", new Float32Array([maskInput ? 1 : 0]), [1]),
  };
  const outputs = await session.run(feeds);
  const count = outputs.masks.dims[1];
  const all = await outputs.masks.getData();
  const scores = Float32Array.from(await outputs.iou_predictions.getData());
  const masks = [];
  for (let k = 0; k < count; k++) masks.push(Float32Array.from(all.subarray(k * cells, (k + 1) * cells)));
  const fed = { maskInput: feeds.mask_input.data, hasMaskInput: feeds.has_mask_input.data[0] };
  return { masks, scores, fed };
}

/** Index of the highest score (the first on ties, as numpy's argmax). */
export function bestIndex(scores) {
  let best = 0;
  for (let k = 1; k < scores.length; k++) if (scores[k] > scores[best]) best = k;
  return best;
}
