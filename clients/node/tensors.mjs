// Nested JSON arrays <-> flat typed arrays with a shape: what both clients need to talk to ONNX
// Runtime (flat data + dims) and to the KServe v2 REST protocol (flat "data" + "shape").
import { readFileSync } from "node:fs";

/** The shape of a rectangular nested array ([[1, 2], [3, 4]] -> [2, 2]). */
export function shapeOf(nested) {
  const shape = [];
  for (let x = nested; Array.isArray(x); x = x[0]) shape.push(x.length);
  return shape;
}

/** Row-major flat copy of a nested array; throws when it is not rectangular. */
export function flatten(nested, shape = shapeOf(nested)) {
  const flat = nested.flat(Infinity);
  const size = shape.reduce((a, b) => a * b, 1);
  if (flat.length !== size) {
    throw new Error(`inputs: not a rectangular array of shape [${shape}] (${flat.length} numbers, expected ${size})`);
  }
  return flat;
}

/** A flat array (or typed array) back into nested arrays of the given shape. */
export function reshape(flat, shape) {
  const values = Array.from(flat, (v) => (typeof v === "bigint" ? Number(v) : v));
  if (shape.length === 0) return values[0];
  const build = (offset, depth) => {
    if (depth === shape.length - 1) return values.slice(offset, offset + shape[depth]);
    const step = shape.slice(depth + 1).reduce((a, b) => a * b, 1);
    return Array.from({ length: shape[depth] }, (_, i) => build(offset + i * step, depth + 1));
  };
  return build(0, 0);
}

/**
 * The raw graph input from INPUTS.json: either the nested array itself (the batch, e.g.
 * [N, C, H, W] images in [0, 1]) or an object holding it under "inputs" or the input's name.
 */
export function readInputs(path, inputName) {
  const parsed = JSON.parse(readFileSync(path, "utf8"));
  const nested = Array.isArray(parsed) ? parsed : (parsed.inputs ?? parsed[inputName]);
  if (!Array.isArray(nested)) {
    throw new Error(`${path}: expected a nested array, or an object with "inputs" or "${inputName}" holding one`);
  }
  return nested;
}
