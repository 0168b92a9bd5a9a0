// A fake camera for Chromium (--use-file-for-fake-video-capture=<file.y4m>): a generated YUV4MPEG2
// file with a known picture, so a test can check that the stored still is the camera's picture at
// the camera's full resolution.
//
// The picture (in the camera's own orientation, never mirrored by Chromium):
//   - left half red, right half blue;
//   - a green square in the upper-left quarter, a yellow square in the lower-right quarter
//     (they tell a mirrored or rotated image from the right one);
//   - a black-and-white checkerboard band along the top (detail, so the still is not "blurry");
//   - a grey band along the bottom with a white block that moves from frame to frame (motion).
// Regions are given as fractions of the frame so that checks work at any scale.

import { writeFileSync } from "node:fs";

export const COLORS = {
  red: [210, 40, 40],
  blue: [30, 60, 210],
  green: [40, 200, 60],
  yellow: [235, 215, 40],
  grey: [128, 128, 128],
};

/** Regions to check (fractions of width/height) and their expected colour. Each lies well inside its
 *  area, away from edges, so scaling and JPEG/VP8 artefacts at borders do not matter. */
export const REGIONS = [
  { name: "red left half", x: 0.3, y: 0.5, w: 0.12, h: 0.2, color: COLORS.red },
  { name: "blue right half", x: 0.58, y: 0.3, w: 0.12, h: 0.2, color: COLORS.blue },
  { name: "green square (upper left)", x: 0.115, y: 0.2, w: 0.1, h: 0.15, color: COLORS.green },
  { name: "yellow square (lower right)", x: 0.775, y: 0.62, w: 0.1, h: 0.15, color: COLORS.yellow },
];

// Shapes, as fractions.
const GREEN_SQ = { x: 0.08, y: 0.14, w: 0.17, h: 0.28 };
const YELLOW_SQ = { x: 0.74, y: 0.56, w: 0.17, h: 0.28 };
const TOP_BAND = 0.06; // checkerboard, from the top
const BOTTOM_BAND = 0.93; // grey, to the bottom

function rgbToYuv([r, g, b]) {
  // BT.601, limited range (what Chromium assumes for I420 from a y4m file).
  const R = r / 255;
  const G = g / 255;
  const B = b / 255;
  const y = 16 + 65.481 * R + 128.553 * G + 24.966 * B;
  const u = 128 - 37.797 * R - 74.203 * G + 112.0 * B;
  const v = 128 + 112.0 * R - 93.786 * G - 18.214 * B;
  const c = (n) => Math.max(0, Math.min(255, Math.round(n)));
  return [c(y), c(u), c(v)];
}

function inside(fx, fy, r) {
  return fx >= r.x && fx < r.x + r.w && fy >= r.y && fy < r.y + r.h;
}

/** The RGB colour of pixel (x, y) of frame `frame`. */
function pixel(x, y, width, height, frame, frames) {
  const fx = x / width;
  const fy = y / height;
  if (fy < TOP_BAND) {
    const cell = Math.max(4, Math.round(width / 240));
    return ((Math.floor(x / cell) + Math.floor(y / cell)) & 1) === 0 ? [0, 0, 0] : [255, 255, 255];
  }
  if (fy >= BOTTOM_BAND) {
    const blockW = 1 / (frames * 2);
    const start = frame / frames;
    return fx >= start && fx < start + blockW ? [255, 255, 255] : COLORS.grey;
  }
  if (inside(fx, fy, GREEN_SQ)) return COLORS.green;
  if (inside(fx, fy, YELLOW_SQ)) return COLORS.yellow;
  return fx < 0.5 ? COLORS.red : COLORS.blue;
}

/**
 * Writes a y4m file (4:2:0) and returns its description.
 * @param {string} path
 * @param {{width?: number, height?: number, frames?: number, fps?: number}} [opts]
 */
export function writeY4m(path, { width = 1920, height = 1080, frames = 4, fps = 15 } = {}) {
  if (width % 2 || height % 2) throw new Error("width and height must be even");
  const cw = width / 2;
  const ch = height / 2;
  const frameBytes = width * height + 2 * cw * ch;
  const header = Buffer.from(`YUV4MPEG2 W${width} H${height} F${fps}:1 Ip A1:1 C420jpeg\n`, "ascii");
  const frameHeader = Buffer.from("FRAME\n", "ascii");
  const out = Buffer.alloc(header.length + frames * (frameHeader.length + frameBytes));
  let off = header.copy(out, 0);
  const cache = new Map();
  const yuvOf = (rgb) => {
    const k = rgb.join(",");
    let v = cache.get(k);
    if (!v) cache.set(k, (v = rgbToYuv(rgb)));
    return v;
  };
  for (let f = 0; f < frames; f++) {
    off += frameHeader.copy(out, off);
    const yBase = off;
    const uBase = yBase + width * height;
    const vBase = uBase + cw * ch;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        out[yBase + y * width + x] = yuvOf(pixel(x, y, width, height, f, frames))[0];
      }
    }
    for (let y = 0; y < ch; y++) {
      for (let x = 0; x < cw; x++) {
        // Chroma from the average of the 2x2 block's colours.
        let u = 0;
        let v = 0;
        for (const [dx, dy] of [[0, 0], [1, 0], [0, 1], [1, 1]]) {
          const yuv = yuvOf(pixel(2 * x + dx, 2 * y + dy, width, height, f, frames));
          u += yuv[1];
          v += yuv[2];
        }
        out[uBase + y * cw + x] = Math.round(u / 4);
        out[vBase + y * cw + x] = Math.round(v / 4);
      }
    }
    off += frameBytes;
  }
  writeFileSync(path, out);
  return { path, width, height, frames, fps, regions: REGIONS };
}

/**
 * Compares the average colour of a region to the expected one.
 * @param {number[]} actual [r, g, b]
 * @param {number[]} expected [r, g, b]
 * @param {number} tolerance per channel
 */
export function colorClose(actual, expected, tolerance = 45) {
  return actual.every((c, i) => Math.abs(c - expected[i]) <= tolerance);
}

// `node tests/e2e/lib/y4m.mjs out.y4m [W H]` writes one by hand.
if (import.meta.url === `file://${process.argv[1]}`) {
  const [file = "fake-camera.y4m", w = "1920", h = "1080"] = process.argv.slice(2);
  const info = writeY4m(file, { width: Number(w), height: Number(h) });
  console.log(JSON.stringify({ ...info, regions: undefined }));
}
