// Golden probabilities from nsfwjs itself on TensorFlow.js (pure-JS CPU backend), for the zoo's
// parity tests. Node is needed only to regenerate them:
//
//   mkdir /tmp/g && cd /tmp/g && npm pack nsfwjs@4.4.0 && npm init -y >/dev/null &&
//   npm install nsfwjs-4.4.0.tgz @tensorflow/tfjs@4.22.0 buffer@6.0.3 jpeg-js@0.4.4 pngjs@7.0.0
//   python tests/data/nsfwjs_inputs.py /tmp/g/pixels
//   NODE_PATH=/tmp/g/node_modules node tests/data/nsfwjs_golden.mjs /tmp/g/pixels tests/data > tests/data/nsfwjs_golden.json
//
// Inputs: the decoded pixels written by nsfwjs_inputs.py (passed as int32 tensor3d, as
// tf.browser.fromPixels would give them), and the encoded files tests/data/nsfwjs_*.png|jpg decoded
// in JavaScript (pngjs; jpeg-js, the decoder nsfwjs's own tests use). Output: for each model, the
// five class probabilities in NSFW_CLASSES order (Drawing, Hentai, Neutral, Porn, Sexy), read from
// classify()'s top-5 list.
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const require = createRequire(path.join(process.cwd(), "noop.js"));
const resolve = (name) => require.resolve(name, { paths: (process.env.NODE_PATH || "").split(":").filter(Boolean) });
const tf = await import(resolve("@tensorflow/tfjs"));
const nsfwjs = await import(resolve("nsfwjs"));
const jpeg = require(resolve("jpeg-js"));
const { PNG } = require(resolve("pngjs"));

const [pixelDir, dataDir] = process.argv.slice(2);
console.info = (...args) => console.error(...args); // nsfwjs.load logs to stdout, which carries the JSON
const CLASSES = ["Drawing", "Hentai", "Neutral", "Porn", "Sexy"];
const index = JSON.parse(fs.readFileSync(path.join(pixelDir, "pixels.json"), "utf8"));
const bin = fs.readFileSync(path.join(pixelDir, "pixels.bin"));

function rgbaToTensor(data, width, height) {
  const rgb = new Int32Array(width * height * 3);
  for (let i = 0, j = 0; i < width * height * 4; i += 4, j += 3) {
    rgb[j] = data[i]; rgb[j + 1] = data[i + 1]; rgb[j + 2] = data[i + 2];
  }
  return tf.tensor3d(rgb, [height, width, 3], "int32");
}

function decodeFile(file) {
  const bytes = fs.readFileSync(file);
  if (file.endsWith(".png")) {
    const png = PNG.sync.read(bytes);
    return { tensor: rgbaToTensor(png.data, png.width, png.height), decoder: "pngjs" };
  }
  const img = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true });
  return { tensor: rgbaToTensor(img.data, img.width, img.height), decoder: "jpeg-js" };
}

async function probabilities(model, tensor) {
  const top = await model.classify(tensor, 5);
  const byName = Object.fromEntries(top.map((c) => [c.className, c.probability]));
  return CLASSES.map((c) => byName[c]);
}

const files = fs.readdirSync(dataDir).filter((f) => /^nsfwjs_.*\.(png|jpg)$/.test(f)).sort();
const out = { nsfwjs: "4.4.0", tfjs: tf.version.tfjs, backend: null, classes: CLASSES, pixels: {}, files: {}, models: {} };
for (const entry of index) out.pixels[entry.name] = { shape: entry.shape, sha256: entry.sha256 };
for (const name of ["MobileNetV2", "MobileNetV2Mid", "InceptionV3"]) {
  const model = await nsfwjs.load(name);
  out.backend = tf.getBackend();
  const result = { pixels: {}, files: {} };
  for (const entry of index) {
    const [h, w] = entry.shape;
    const view = bin.subarray(entry.offset, entry.offset + h * w * 3);
    const tensor = tf.tensor3d(Int32Array.from(view), [h, w, 3], "int32");
    result.pixels[entry.name] = await probabilities(model, tensor);
    tensor.dispose();
  }
  for (const file of files) {
    const { tensor, decoder } = decodeFile(path.join(dataDir, file));
    out.files[file] = { decoder };
    result.files[file] = await probabilities(model, tensor);
    tensor.dispose();
  }
  out.models[name] = result;
  model.dispose();
  console.error(`${name}: done`);
}
process.stdout.write(JSON.stringify(out, null, 1) + "\n");
