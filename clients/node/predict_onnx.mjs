#!/usr/bin/env node
// Predict with an exported biomx model in ONNX Runtime (no Python, no server).
//
//   node predict_onnx.mjs RUN/export/model.onnx inputs.json
//
// inputs.json holds the raw graph input as a nested array (see the sidecar RUN/export/model.json:
// "input" gives its name, dtype, shape and what goes in it; an image run takes float32
// [batch, channels, height, width] pixels scaled to [0, 1]). Prints JSON: one key per graph output
// ("predictions", and "std" for an ensemble) as nested arrays, plus the task's "classes" from the sidecar.
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import ort from "onnxruntime-node";
import { flatten, readInputs, reshape, shapeOf } from "./tensors.mjs";

const TYPED = { float32: Float32Array, int64: BigInt64Array };

function sidecarFor(modelPath) {
  // model.onnx and model.int8.onnx share one sidecar, model.json, in the same folder.
  const path = join(dirname(modelPath), "model.json");
  return existsSync(path) ? JSON.parse(readFileSync(path, "utf8")) : {};
}

async function main([modelPath, inputsPath]) {
  if (!modelPath || !inputsPath) {
    throw new Error("usage: node predict_onnx.mjs MODEL.onnx INPUTS.json");
  }
  const sidecar = sidecarFor(modelPath);
  const session = await ort.InferenceSession.create(modelPath, { executionProviders: ["cpu"] });
  const name = sidecar.input?.name ?? session.inputNames[0];
  const dtype = sidecar.input?.dtype ?? "float32";
  if (!(dtype in TYPED)) throw new Error(`${modelPath}: input dtype ${dtype} is not supported here`);
  const nested = readInputs(inputsPath, name);
  const shape = shapeOf(nested);
  const flat = flatten(nested, shape);
  const data = dtype === "int64" ? BigInt64Array.from(flat, (v) => BigInt(v)) : Float32Array.from(flat);
  const outputs = await session.run({ [name]: new ort.Tensor(dtype, data, shape) });
  const result = {};
  for (const key of session.outputNames) result[key] = reshape(outputs[key].data, outputs[key].dims);
  const classes = sidecar.task?.classes;
  if (classes?.length) result.classes = classes;
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main(process.argv.slice(2)).catch((err) => {
  process.stderr.write(`${err.message}\n`);
  process.exit(1);
});
