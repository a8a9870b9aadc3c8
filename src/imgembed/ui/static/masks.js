// From the decoder's 256x256 low-resolution logits to a mask at the image's size, exactly as the
// server's segment does it: bilinear resize with align_corners=False (PyTorch's
// F.interpolate(mode="bilinear") rule, clamped source index, float32 weights), then logits > 0.

export const LOW_RES = 256;
export const MASK_THRESHOLD = 0;

/**
 * Source index and weights of each output position along one axis, as PyTorch computes them:
 * src = max(scale * (dst + 0.5) - 0.5, 0) with scale = in / out in float32.
 * @returns {{first: Int32Array, second: Int32Array, weightFirst: Float32Array, weightSecond: Float32Array}}
 */
export function axisWeights(inputSize, outputSize) {
  const f = Math.fround;
  const scale = f(inputSize / outputSize);
  const first = new Int32Array(outputSize);
  const second = new Int32Array(outputSize);
  const weightFirst = new Float32Array(outputSize);
  const weightSecond = new Float32Array(outputSize);
  for (let dst = 0; dst < outputSize; dst++) {
    let src = f(f(scale * f(dst + 0.5)) - 0.5);
    if (src < 0) src = 0;
    const index = Math.min(Math.floor(src), inputSize - 1);
    const lambda = Math.min(Math.max(f(src - index), 0), 1);
    first[dst] = index;
    second[dst] = index < inputSize - 1 ? index + 1 : index;
    weightSecond[dst] = lambda;
    weightFirst[dst] = f(1 - lambda);
  }
  return { first, second, weightFirst, weightSecond };
}

/**
 * Bilinear resize (align_corners=False) of a window of a row-major float grid.
 * @param {Float32Array} source Grid values, row-major, `stride` values per row.
 * @param {number} stride Values per source row.
 * @param {{top: number, left: number, height: number, width: number}} window The part resized.
 * @param {number} outHeight Output rows.
 * @param {number} outWidth Output columns.
 * @returns {Float32Array} outHeight x outWidth values, row-major.
 */
export function resizeBilinear(source, stride, window, outHeight, outWidth) {
  const rows = axisWeights(window.height, outHeight);
  const columns = axisWeights(window.width, outWidth);
  const out = new Float32Array(outHeight * outWidth);
  for (let y = 0; y < outHeight; y++) {
    const rowA = (window.top + rows.first[y]) * stride + window.left;
    const rowB = (window.top + rows.second[y]) * stride + window.left;
    const wa = rows.weightFirst[y];
    const wb = rows.weightSecond[y];
    const base = y * outWidth;
    for (let x = 0; x < outWidth; x++) {
      const c0 = columns.first[x];
      const c1 = columns.second[x];
      const w0 = columns.weightFirst[x];
      const w1 = columns.weightSecond[x];
      out[base + x] =
        wa * (w0 * source[rowA + c0] + w1 * source[rowA + c1]) +
        wb * (w0 * source[rowB + c0] + w1 * source[rowB + c1]);
    }
  }
  return out;
}

/**
 * One mask's low-resolution logits at the original image size, as the server's segment computes
 * them. Stretch: one resize from 256x256 to H x W. Letterbox: to the input frame, crop the image's
 * part (it sits at pad[0], pad[1]), then to H x W.
 * @param {Float32Array} lowRes 256x256 logits, row-major.
 * @param {object} meta The embed response's meta: orig_size [H, W], input_size, resized_size, pad.
 * @returns {Float32Array} H x W logits.
 */
export function upscaleLogits(lowRes, meta) {
  const [height, width] = meta.orig_size;
  if (meta.resize_mode === "letterbox") {
    const input = meta.input_size[0];
    const frame = resizeBilinear(lowRes, LOW_RES, { top: 0, left: 0, height: LOW_RES, width: LOW_RES }, input, input);
    const [resizedH, resizedW] = meta.resized_size;
    const window = { top: meta.pad[0], left: meta.pad[1], height: resizedH, width: resizedW };
    return resizeBilinear(frame, input, window, height, width);
  }
  return resizeBilinear(lowRes, LOW_RES, { top: 0, left: 0, height: LOW_RES, width: LOW_RES }, height, width);
}

/** 1 where the logit is above the threshold, else 0. */
export function threshold(logits) {
  const mask = new Uint8Array(logits.length);
  for (let i = 0; i < logits.length; i++) mask[i] = logits[i] > MASK_THRESHOLD ? 1 : 0;
  return mask;
}

/** Pixels inside the mask. */
export function area(mask) {
  let count = 0;
  for (let i = 0; i < mask.length; i++) count += mask[i];
  return count;
}

/** RGBA pixels: `inside` where the mask is set, `outside` elsewhere (each [r, g, b, a]). */
export function maskPixels(mask, width, height, inside, outside) {
  const pixels = new ImageData(width, height);
  const data = pixels.data;
  for (let i = 0, p = 0; i < mask.length; i++, p += 4) {
    const colour = mask[i] ? inside : outside;
    data[p] = colour[0];
    data[p + 1] = colour[1];
    data[p + 2] = colour[2];
    data[p + 3] = colour[3];
  }
  return pixels;
}

/** The mask as a PNG file: white (255) inside, black outside, opaque; the server's png format. */
export async function maskPng(mask, width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  canvas.getContext("2d").putImageData(maskPixels(mask, width, height, [255, 255, 255, 255], [0, 0, 0, 255]), 0, 0);
  return new Promise((resolve, reject) =>
    canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("the browser could not encode the PNG"))), "image/png"),
  );
}

/** Base64 of the mask's bytes (one 0/1 byte per pixel, row-major); for tests and tools. */
export function bytesToBase64(bytes) {
  let binary = "";
  const chunk = 0x8000;
  for (let i = 0; i < bytes.length; i += chunk) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + chunk));
  }
  return btoa(binary);
}
