// Runs one exported SAM 2 decoder graph on onnxruntime-web (its Node build, WebAssembly backend),
// as seed 002's browser tool does: exactly seven float32 feeds, two outputs. Used by
// tests/export/test_onnx_web.py.
//
//   node tests/export/ort_web_decoder.mjs DECODER.onnx FEEDS_DIR OUT_DIR
//
// A tensor folder (FEEDS_DIR, and OUT_DIR as written) holds tensors.json, a list of
// {"name": ..., "shape": [...]}, and one NAME.f32 file per tensor: its float32 values, little-endian,
// row-major. OUT_DIR also gets session.json with the session's inputNames and outputNames.
// Exit status: 0 ran; 2 bad usage or the graph's inputs/outputs are not seed 002's (the message
// says which); 3 onnxruntime-web is not installed; anything else, onnxruntime-web failed.

import { mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

const INPUT_NAMES = [
  "image_embed",
  "high_res_feats_0",
  "high_res_feats_1",
  "point_coords",
  "point_labels",
  "mask_input",
  "has_mask_input",
];
const OUTPUT_NAMES = ["masks", "iou_predictions"];
const ORT_NODE_BUILD = new URL(
  "../../ui/node_modules/onnxruntime-web/dist/ort.node.min.mjs",
  import.meta.url,
);

function fail(status, message) {
  console.error(`ort_web_decoder: ${message}`);
  process.exit(status);
}

const sameList = (a, b) => a.length === b.length && a.every((item, index) => item === b[index]);

async function readTensors(folder, ort) {
  const entries = JSON.parse(await readFile(path.join(folder, "tensors.json"), "utf8"));
  const feeds = {};
  for (const { name, shape } of entries) {
    const bytes = await readFile(path.join(folder, `${name}.f32`));
    // Copy into a fresh ArrayBuffer: a Buffer may sit at an offset that is not a multiple of 4.
    const data = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
    feeds[name] = new ort.Tensor("float32", data, shape);
  }
  return feeds;
}

async function writeTensors(folder, tensors) {
  await mkdir(folder, { recursive: true });
  const entries = [];
  for (const [name, tensor] of Object.entries(tensors)) {
    if (tensor.type !== "float32") fail(2, `output ${name} is ${tensor.type}, expected float32`);
    const data = await tensor.getData();
    await writeFile(path.join(folder, `${name}.f32`), new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    entries.push({ name, shape: tensor.dims });
  }
  await writeFile(path.join(folder, "tensors.json"), JSON.stringify(entries));
}

async function main() {
  const [graph, feedsDir, outDir] = process.argv.slice(2);
  if (!outDir) fail(2, "usage: node ort_web_decoder.mjs DECODER.onnx FEEDS_DIR OUT_DIR");
  let ort;
  try {
    ort = await import(ORT_NODE_BUILD.href);
  } catch (error) {
    fail(3, `cannot import onnxruntime-web from ${fileURLToPath(ORT_NODE_BUILD)} (${error.message}); run scripts/fetch_ui_assets.sh`);
  }
  ort.env.wasm.numThreads = 1;
  ort.env.logLevel = "warning";

  const session = await ort.InferenceSession.create(graph, {
    executionProviders: ["wasm"],
    graphOptimizationLevel: "all", // as imgembed's /ui page creates its decoder session
  });
  await mkdir(outDir, { recursive: true });
  const names = { inputNames: session.inputNames, outputNames: session.outputNames };
  await writeFile(path.join(outDir, "session.json"), JSON.stringify(names));
  if (!sameList(session.inputNames, INPUT_NAMES)) {
    fail(2, `inputNames are [${session.inputNames}], expected [${INPUT_NAMES}]`);
  }
  if (!sameList(session.outputNames, OUTPUT_NAMES)) {
    fail(2, `outputNames are [${session.outputNames}], expected [${OUTPUT_NAMES}]`);
  }

  const feeds = await readTensors(feedsDir, ort);
  if (!sameList(Object.keys(feeds), INPUT_NAMES)) {
    fail(2, `feeds are [${Object.keys(feeds)}], expected exactly [${INPUT_NAMES}]`);
  }
  const outputs = await session.run(feeds);
  await writeTensors(outDir, outputs);
  await session.release();
}

await main();
