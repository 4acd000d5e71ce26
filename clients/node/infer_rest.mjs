#!/usr/bin/env node
// Call a running `biomx serve` through the KServe v2 REST protocol (Node.js >= 18: global fetch).
//
//   node infer_rest.mjs http://localhost:8000 MODEL_NAME inputs.json
//
// inputs.json is the raw graph input as a nested array, as for predict_onnx.mjs. The input's
// name and datatype come from the model's metadata (GET /v2/models/MODEL_NAME). Prints JSON: one
// key per output of the infer response ("predictions", and "std" for an ensemble) as nested arrays.
import { flatten, readInputs, reshape, shapeOf } from "./tensors.mjs";

async function call(url, init) {
  const response = await fetch(url, init);
  const text = await response.text();
  if (!response.ok) throw new Error(`${init?.method ?? "GET"} ${url}: HTTP ${response.status}: ${text}`);
  return JSON.parse(text);
}

async function main([base, model, inputsPath]) {
  if (!base || !model || !inputsPath) {
    throw new Error("usage: node infer_rest.mjs URL MODEL_NAME INPUTS.json");
  }
  const root = `${base.replace(/\/+$/, "")}/v2/models/${encodeURIComponent(model)}`;
  const metadata = await call(root);
  const input = metadata.inputs[0];
  const nested = readInputs(inputsPath, input.name);
  const shape = shapeOf(nested);
  const body = { inputs: [{ name: input.name, shape, datatype: input.datatype, data: flatten(nested, shape) }] };
  const reply = await call(`${root}/infer`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const result = {};
  for (const out of reply.outputs) result[out.name] = reshape(out.data, out.shape);
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main(process.argv.slice(2)).catch((err) => {
  process.stderr.write(`${err.message}\n`);
  process.exit(1);
});
