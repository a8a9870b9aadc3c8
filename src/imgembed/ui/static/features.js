// Image features from the server, in the compact binary form of POST /v1/sam2/embed.
//
// The body is a JSON header followed by raw little-endian tensors; the header's length is in the
// Inference-Header-Content-Length response header, and the header lists each tensor's name, shape,
// dtype, byte_offset and byte_length (offsets counted from the end of the header).

export const HEADER_LENGTH = "Inference-Header-Content-Length";

/** An error the server answered with: its status and its own message and field. */
export class ServerError extends Error {
  constructor(status, code, message, field, requestId) {
    super(message);
    this.name = "ServerError";
    this.status = status;
    this.code = code;
    this.field = field;
    this.requestId = requestId;
  }
}

/** The connection to the server failed (stopped, unreachable, network lost). */
export class ConnectionLostError extends Error {
  constructor(url, cause) {
    super(`no answer from ${url}`);
    this.name = "ConnectionLostError";
    this.url = url;
    this.cause = cause;
  }
}

/** fetch() that turns network failures into ConnectionLostError and refusals into ServerError. */
export async function request(url, options = {}) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ConnectionLostError(String(url), error);
  }
  if (!response.ok) throw await serverError(response);
  return response;
}

async function serverError(response) {
  let text = "";
  try {
    text = await response.text();
  } catch (error) {
    throw new ConnectionLostError(response.url, error);
  }
  try {
    const detail = JSON.parse(text).error;
    if (detail && typeof detail === "object") {
      return new ServerError(response.status, detail.code, detail.message, detail.field, detail.request_id);
    }
    if (typeof detail === "string") return new ServerError(response.status, "", detail, null, null);
  } catch {
    // Not the service's JSON error shape (a proxy's page, say): report the status and the text.
  }
  const summary = text.trim().slice(0, 200) || response.statusText;
  return new ServerError(response.status, "", `HTTP ${response.status}: ${summary}`, null, null);
}

let float16Table = null;

/** float16 bit pattern -> float32 value, for all 65536 patterns (built once, 256 KiB). */
function float16Values() {
  if (float16Table) return float16Table;
  float16Table = new Float32Array(65536);
  for (let bits = 0; bits < 65536; bits++) {
    const sign = bits & 0x8000 ? -1 : 1;
    const exponent = (bits >> 10) & 0x1f;
    const fraction = bits & 0x3ff;
    let value;
    if (exponent === 0) value = fraction * 2 ** -24;
    else if (exponent === 31) value = fraction ? NaN : Infinity;
    else value = (1 + fraction / 1024) * 2 ** (exponent - 15);
    float16Table[bits] = sign * value;
  }
  return float16Table;
}

/** Widens float16 bit patterns to float32, exactly. */
export function float16ToFloat32(bits) {
  const table = float16Values();
  const values = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) values[i] = table[bits[i]];
  return values;
}

/** Widens bfloat16 bit patterns to float32, exactly (they are the top 16 bits of a float32). */
export function bfloat16ToFloat32(bits) {
  const wide = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) wide[i] = bits[i] << 16;
  return new Float32Array(wide.buffer);
}

function tensorValues(body, start, tensor) {
  const bytes = body.slice(start, start + tensor.byte_length); // a copy, aligned for typed arrays
  switch (tensor.dtype) {
    case "float32":
      return new Float32Array(bytes);
    case "float16":
      return float16ToFloat32(new Uint16Array(bytes));
    case "bfloat16":
      return bfloat16ToFloat32(new Uint16Array(bytes));
    default:
      throw new Error(`feature tensor ${tensor.name} has dtype ${tensor.dtype}; the page reads float32, float16 and bfloat16`);
  }
}

/**
 * Splits a binary embed body into its header and float32 tensors.
 * @param {ArrayBuffer} body The whole response body.
 * @param {number} headerLength The Inference-Header-Content-Length value.
 * @returns {{header: object, tensors: Object<string, {data: Float32Array, dims: number[]}>}}
 */
export function parseBinaryFeatures(body, headerLength) {
  if (!Number.isInteger(headerLength) || headerLength <= 0 || headerLength > body.byteLength) {
    throw new Error(`the server's answer has no valid ${HEADER_LENGTH} header (got ${headerLength})`);
  }
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(body, 0, headerLength)));
  const tensors = {};
  for (const tensor of header.tensors) {
    const start = headerLength + tensor.byte_offset;
    if (start + tensor.byte_length > body.byteLength) {
      throw new Error(`the server's answer ends inside tensor ${tensor.name}; open the image again`);
    }
    tensors[tensor.name] = { data: tensorValues(body, start, tensor), dims: tensor.shape };
  }
  return { header, tensors };
}

/**
 * Uploads an image and returns its SAM 2 features as float32 tensors with batch 1.
 * @param {string|URL} url The embed endpoint.
 * @param {File} file The image file.
 * @param {{model?: string, dtype?: string, headers?: object, signal?: AbortSignal}} options
 */
export async function fetchFeatures(url, file, { model, dtype = "float32", headers = {}, signal } = {}) {
  const form = new FormData();
  form.append("file", file, file.name || "image");
  form.append("encoding", "binary");
  form.append("dtype", dtype);
  if (model) form.append("model", model);
  const response = await request(url, { method: "POST", body: form, headers, signal });
  const headerLength = Number(response.headers.get(HEADER_LENGTH));
  let body;
  try {
    body = await response.arrayBuffer();
  } catch (error) {
    throw new ConnectionLostError(String(url), error);
  }
  const { header, tensors } = parseBinaryFeatures(body, headerLength);
  for (const name of ["image_embed", "high_res_feats_0", "high_res_feats_1"]) {
    if (!tensors[name]) throw new Error(`the server's features lack ${name}`);
    tensors[name].dims = [1, ...tensors[name].dims]; // [C,H,W] -> [1,C,H,W], the decoder's batch
  }
  return { header, tensors, bytes: body.byteLength };
}
