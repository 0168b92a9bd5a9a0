// Checks on what the pages show, shared by the scenarios.

import assert from "node:assert/strict";
import { waitFor, sampleVideo, decodeImage, captureCount } from "./browser.mjs";
import { REGIONS, colorClose } from "./y4m.mjs";

/** The agent's (or customer's) video shows the camera's picture: known colours in known places. */
export async function assertVideoShowsCamera(role, testid, tolerance = 60) {
  let last = null;
  await waitFor(
    async () => {
      last = await sampleVideo(role.page, testid, REGIONS);
      return last && REGIONS.every((r, i) => colorClose(last.regions[i].rgb, r.color, tolerance));
    },
    { timeout: 15_000, interval: 500, message: `${role.name}'s ${testid} to show the camera's picture` },
  ).catch((e) => {
    throw new Error(`${e.message}\n  sampled: ${JSON.stringify(last)}\n  expected: ${JSON.stringify(REGIONS.map((r) => [r.name, r.color]))}`);
  });
  return last;
}

/** Decodes a stored image and checks that it is the camera's picture. */
export async function assertImageShowsCamera(browser, bytes, mime, tolerance = 45) {
  const d = await decodeImage(browser, bytes, mime, REGIONS);
  const bad = REGIONS.map((r, i) => ({ name: r.name, expected: r.color, got: d.regions[i].rgb })).filter(
    (x) => !colorClose(x.got, x.expected, tolerance),
  );
  assert.deepEqual(bad, [], `the stored image is not the camera's picture (${d.width}x${d.height})`);
  return d;
}

/** Waits until the capture-list of `role` holds at least `n` capture-items. */
export async function waitCaptureItems(role, n, timeout = 15_000) {
  let last = -1;
  await waitFor(
    async () => {
      last = await captureCount(role);
      return last >= n;
    },
    { timeout, interval: 200, message: `${role.name}'s capture-list to hold ${n} capture-item(s)` },
  ).catch((e) => {
    throw new Error(`${e.message}; it holds ${last}`);
  });
  return last;
}

/**
 * What the checklist element shows: its text, and how many of its entries are marked done by a
 * machine-readable attribute (data-status/data-state="done", aria-checked="true", class "done").
 */
export function checklistState(role) {
  return role.page.evaluate(() => {
    const el = document.querySelector('[data-testid="checklist"]');
    if (!el) return null;
    // One entry per slot: the checklist's children (or its checklist-items), counted once each.
    const sel = '[data-status="done"], [data-state="done"], [aria-checked="true"], .done, .is-done, [data-done="true"]';
    const items = el.querySelectorAll('[data-testid="checklist-item"]').length
      ? [...el.querySelectorAll('[data-testid="checklist-item"]')]
      : [...el.children];
    const done = items.filter((c) => c.matches(sel) || c.querySelector(sel)).length;
    const text = (el.innerText || el.textContent || "").replace(/\s+/g, " ").trim();
    // The "n / total" count, in the checklist or in its progress line beside it.
    const prog = document.querySelector('[data-testid="checklist-progress"]');
    const progText = prog ? (prog.innerText || prog.textContent || "").trim() : "";
    const m = text.match(/(\d+)\s*\/\s*(\d+)/) || progText.match(/(\d+)\s*\/\s*(\d+)/);
    return {
      done,
      items: items.length,
      text: text.slice(0, 300),
      progressText: progText,
      progress: m ? [Number(m[1]), Number(m[2])] : null,
    };
  });
}

/** Waits until `role`'s checklist shows `n` slots done (marked entries, or an "n / total" count). */
export async function waitChecklistDone(role, n, timeout = 15_000) {
  let last = null;
  await waitFor(
    async () => {
      last = await checklistState(role);
      return last && (last.done >= n || (last.progress && last.progress[0] >= n));
    },
    { timeout, interval: 250, message: `${role.name}'s checklist to show ${n} slot(s) done` },
  ).catch((e) => {
    throw new Error(`${e.message}; checklist: ${JSON.stringify(last)}`);
  });
  return last;
}

/**
 * The guide overlay on the customer page: its text, and the boxes drawn in it (elements smaller than
 * the overlay with a size, or painted pixels of a canvas).
 */
export function guideOverlayState(role) {
  return role.page.evaluate(() => {
    const ov = document.querySelector('[data-testid="guide-overlay"]');
    if (!ov) return { found: false };
    const or = ov.getBoundingClientRect();
    const cs = getComputedStyle(ov);
    const visible = or.width > 0 && or.height > 0 && cs.visibility !== "hidden" && cs.display !== "none" && Number(cs.opacity) > 0;
    const boxes = [];
    for (const el of ov.querySelectorAll("*")) {
      const r = el.getBoundingClientRect();
      const s = getComputedStyle(el);
      if (s.display === "none" || s.visibility === "hidden" || Number(s.opacity) === 0) continue;
      if (r.width < 10 || r.height < 10) continue;
      if (r.width * r.height > 0.9 * or.width * or.height) continue;
      const hasText = (el.innerText || "").trim().length > 0;
      const isShape =
        el.getAttribute("data-testid") === "guide-box" ||
        el instanceof SVGElement ||
        s.borderStyle !== "none" ||
        s.outlineStyle !== "none";
      if (hasText && !isShape) continue;
      boxes.push({
        tag: el.tagName.toLowerCase(),
        testid: el.getAttribute("data-testid"),
        x: +((r.left - or.left) / or.width).toFixed(3),
        y: +((r.top - or.top) / or.height).toFixed(3),
        w: +(r.width / or.width).toFixed(3),
        h: +(r.height / or.height).toFixed(3),
      });
    }
    let painted = 0;
    for (const c of ov.querySelectorAll("canvas")) {
      try {
        const g = c.getContext("2d");
        const d = g.getImageData(0, 0, c.width, c.height).data;
        for (let i = 3; i < d.length; i += 4) if (d[i] > 0) painted++;
      } catch {
        // not a 2d canvas
      }
    }
    return {
      found: true,
      visible,
      text: (ov.innerText || "").replace(/\s+/g, " ").trim().slice(0, 300),
      boxes: boxes.slice(0, 10),
      painted,
    };
  });
}

/** Picks a value in a select-like control (a <select>, or a control whose options are buttons). */
export async function pick(role, testid, value) {
  const el = role.page.getByTestId(testid).first();
  const tag = await el.evaluate((e) => e.tagName.toLowerCase());
  if (tag === "select") {
    await el.selectOption(value);
  } else {
    const opt = el.locator(`[data-value="${value}"], [value="${value}"]`).first();
    await opt.click();
  }
}

/**
 * Where a video element paints its picture (page CSS px), from its object-fit and object-position:
 * {element, content, fit, position, videoWidth, videoHeight}.
 */
export function videoContentRect(role, testid) {
  return role.page.evaluate((id) => {
    const el = document.querySelector(`[data-testid="${id}"]`);
    const v = el && (el.tagName === "VIDEO" ? el : el.querySelector("video"));
    if (!v) return null;
    const r = v.getBoundingClientRect();
    const cs = getComputedStyle(v);
    const vw = v.videoWidth;
    const vh = v.videoHeight;
    const element = { left: r.left, top: r.top, width: r.width, height: r.height };
    let w = r.width;
    let h = r.height;
    if (vw && vh && cs.objectFit !== "fill") {
      const contain = Math.min(r.width / vw, r.height / vh);
      const s = {
        cover: Math.max(r.width / vw, r.height / vh),
        contain,
        none: 1,
        "scale-down": Math.min(1, contain),
      }[cs.objectFit] ?? contain;
      w = vw * s;
      h = vh * s;
    }
    const [px, py] = (cs.objectPosition || "50% 50%").split(/\s+/);
    const frac = (p) => (p && p.endsWith("%") ? parseFloat(p) / 100 : 0.5);
    return {
      element,
      content: { left: r.left + (r.width - w) * frac(px), top: r.top + (r.height - h) * frac(py), width: w, height: h },
      fit: cs.objectFit,
      position: cs.objectPosition,
      transform: cs.transform,
      videoWidth: vw,
      videoHeight: vh,
    };
  }, testid);
}

/** The bounding rect (page CSS px) of the visible guide box on the customer page, or null. */
export function guideBoxRect(role) {
  return role.page.evaluate(() => {
    const ov = document.querySelector('[data-testid="guide-overlay"]');
    const el = ov && ov.querySelector('[data-testid="guide-box"]');
    if (!el) return null;
    const s = getComputedStyle(el);
    if (el.hidden || s.display === "none" || s.visibility === "hidden") return null;
    const r = el.getBoundingClientRect();
    return { left: r.left, top: r.top, width: r.width, height: r.height, borderWidth: parseFloat(s.borderTopWidth) || 0 };
  });
}

/** A box {x, y, w, h} (fractions of the frame) in page px over `content`, optionally clipped to `clip`. */
export function boxOnScreen(box, content, clip) {
  let left = content.left + box.x * content.width;
  let top = content.top + box.y * content.height;
  let right = left + box.w * content.width;
  let bottom = top + box.h * content.height;
  if (clip) {
    left = Math.max(left, clip.left);
    top = Math.max(top, clip.top);
    right = Math.min(right, clip.left + clip.width);
    bottom = Math.min(bottom, clip.top + clip.height);
  }
  return { left, top, width: right - left, height: bottom - top };
}

/** Whether two page rects agree within `tol` px on every edge. */
export function rectsClose(a, b, tol) {
  return (
    Math.abs(a.left - b.left) <= tol &&
    Math.abs(a.top - b.top) <= tol &&
    Math.abs(a.left + a.width - (b.left + b.width)) <= tol &&
    Math.abs(a.top + a.height - (b.top + b.height)) <= tol
  );
}
