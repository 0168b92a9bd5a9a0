// Headless Chromium (Debian's /usr/bin/chromium) driven by playwright-core, with a fake camera that
// plays a generated .y4m file; helpers for the two roles, polling, screenshots and image checks.

import { chromium } from "playwright-core";
import { existsSync, mkdirSync, writeFileSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { REPO_ROOT } from "./server.mjs";
import { writeY4m } from "./y4m.mjs";

export const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
export const ARTIFACTS = path.join(REPO_ROOT, "target", "e2e-artifacts");

export const AGENT_VIEWPORT = { width: 1440, height: 900 };
export const PHONE = {
  viewport: { width: 390, height: 844 },
  deviceScaleFactor: 2,
  isMobile: true,
  hasTouch: true,
  userAgent:
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) " +
    "Chrome/148.0.0.0 Mobile Safari/537.36",
};

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Polls `fn` until it returns a truthy value (returned) or the time is up (throws with `message` and
 * the last value or error seen).
 */
export async function waitFor(fn, { timeout = 15_000, interval = 200, message = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  let lastErr;
  for (;;) {
    try {
      last = await fn();
      lastErr = undefined;
      if (last) return last;
    } catch (e) {
      lastErr = e;
    }
    if (Date.now() > deadline) {
      const detail = lastErr
        ? `last error: ${lastErr.message?.split("\n")[0]}`
        : `last value: ${JSON.stringify(last)}`;
      throw new Error(`timed out after ${timeout} ms waiting for ${message} (${detail})`);
    }
    await sleep(interval);
  }
}

/** A fake camera file for this run (generated, in a temp dir). */
export function makeCamera({ width = 1920, height = 1080 } = {}) {
  const dir = mkdtempSync(path.join(os.tmpdir(), "capturelink-cam-"));
  const info = writeY4m(path.join(dir, `camera-${width}x${height}.y4m`), { width, height });
  return { ...info, dispose: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * Launches Chromium with a fake camera.
 * @param {{camera?: {path: string}|null, fakeDeviceConfig?: string, extraArgs?: string[]}} opts
 */
export async function launch({ camera, fakeDeviceConfig, extraArgs = [] } = {}) {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: apt-get install -y chromium (scripts/test does this as root)`);
  }
  const args = [
    fakeDeviceConfig
      ? `--use-fake-device-for-media-stream=${fakeDeviceConfig}`
      : "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    ...(camera ? [`--use-file-for-fake-video-capture=${camera.path}`] : []),
    "--allow-loopback-in-peer-connection",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--autoplay-policy=no-user-gesture-required",
    ...extraArgs,
  ];
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args, timeout: 60_000 });
}

/** Join tokens out of logs: `token=…` in URLs and fragments. */
export function redact(text) {
  return String(text).replace(/token=[^&#'"\s]+/g, "token=…");
}

/**
 * One role's browser context and page, recording what goes wrong on it: console errors, uncaught
 * exceptions, CSP violations, failed requests.
 */
export class Role {
  constructor(name, context, page) {
    this.name = name;
    this.context = context;
    this.page = page;
    this.consoleErrors = [];
    this.consoleLog = [];
    this.pageErrors = [];
    this.cspViolations = [];
    this.dialogs = [];
    this.failedRequests = [];
    this.wsSent = []; // the page's WebSocket messages (parsed), but `signal`s and pings
    this.wsReceived = [];
  }

  /** WebSocket messages of `type` the page sent (or received). */
  sent(type) {
    return this.wsSent.filter((m) => m.type === type);
  }

  received(type) {
    return this.wsReceived.filter((m) => m.type === type);
  }

  static async open(browser, name, { origin, url, phone = false, locale } = {}) {
    locale ||= "en-US";
    const context = await browser.newContext({
      ...(phone ? PHONE : { viewport: AGENT_VIEWPORT }),
      locale,
      permissions: ["camera", "microphone"],
    });
    if (origin) await context.grantPermissions(["camera", "microphone"], { origin });
    const page = await context.newPage();
    const role = new Role(name, context, page);
    await context.exposeBinding("__e2eCsp", (_src, v) => role.cspViolations.push(v));
    await context.addInitScript(() => {
      document.addEventListener("securitypolicyviolation", (e) => {
        // eslint-disable-next-line no-undef
        __e2eCsp({
          directive: e.effectiveDirective || e.violatedDirective,
          blocked: e.blockedURI,
          source: `${e.sourceFile}:${e.lineNumber}`,
          sample: e.sample,
        });
      });
    });
    // Test instrumentation only: a timeline of every RTCPeerConnection (states, descriptions, and
    // the calls that failed) in the console log, to tell a negotiation bug from a test bug.
    await context.addInitScript(() => {
      const Orig = window.RTCPeerConnection;
      if (!Orig || Orig.__e2e) return;
      let n = 0;
      const log = (id, ...a) => console.debug(`[e2e pc#${id}]`, ...a);
      class Traced extends Orig {
        constructor(...args) {
          super(...args);
          const id = ++n;
          this.__e2eId = id;
          log(id, "created");
          this.addEventListener("signalingstatechange", () => log(id, "signalingState", this.signalingState));
          this.addEventListener("iceconnectionstatechange", () => log(id, "iceConnectionState", this.iceConnectionState));
          this.addEventListener("connectionstatechange", () => log(id, "connectionState", this.connectionState));
          this.addEventListener("negotiationneeded", () => log(id, "negotiationneeded"));
          this.addEventListener("track", (e) => log(id, "track", e.track.kind, e.track.id));
          this.addEventListener("icegatheringstatechange", () => log(id, "iceGatheringState", this.iceGatheringState));
          let cands = 0;
          this.addEventListener("icecandidate", (e) => {
            if (!e.candidate) log(id, `icecandidate: end of candidates (${cands} gathered)`);
            else if (++cands <= 2) log(id, "icecandidate", e.candidate.type || "", e.candidate.protocol || "");
          });
        }
        close() {
          log(this.__e2eId, "close()");
          return super.close();
        }
      }
      Traced.__e2e = true;
      for (const m of ["createOffer", "createAnswer", "setLocalDescription", "setRemoteDescription", "addIceCandidate", "restartIce"]) {
        const f = Orig.prototype[m];
        Traced.prototype[m] = function (...args) {
          const d = args[0];
          if (m !== "addIceCandidate") log(this.__e2eId, m, d && d.type ? d.type : "", `(state ${this.signalingState})`);
          let r;
          try {
            r = f.apply(this, args);
          } catch (e) {
            log(this.__e2eId, `${m} THREW`, e && e.name, e && e.message);
            throw e;
          }
          if (r && typeof r.then === "function") {
            return r.then(
              (v) => v,
              (e) => {
                log(this.__e2eId, `${m} FAILED`, e && e.name, e && e.message);
                throw e;
              },
            );
          }
          return r;
        };
      }
      window.RTCPeerConnection = Traced;
    });
    page.on("console", (m) => {
      const line = `[${new Date().toISOString()}] ${m.type()}: ${redact(m.text())}`;
      role.consoleLog.push(line);
      if (m.type() === "error") role.consoleErrors.push(m.text());
    });
    page.on("pageerror", (e) => {
      role.pageErrors.push(redact(e?.stack || e));
      role.consoleLog.push(`[${new Date().toISOString()}] pageerror: ${redact(e?.stack || e)}`);
    });
    page.on("response", (r) => {
      if (r.status() >= 400) {
        const line = `${r.request().method()} ${redact(r.url())} -> ${r.status()}`;
        role.failedRequests.push(line);
        role.consoleLog.push(`[${new Date().toISOString()}] http: ${line}`);
      }
    });
    page.on("requestfailed", (r) => {
      const line = `${r.method()} ${redact(r.url())} -> ${r.failure()?.errorText}`;
      role.failedRequests.push(line);
      role.consoleLog.push(`[${new Date().toISOString()}] http: ${line}`);
    });
    const keepWs = (list, dir) => ({ payload }) => {
      let m;
      try {
        m = JSON.parse(typeof payload === "string" ? payload : payload.toString());
      } catch {
        return;
      }
      if (m && m.type === "signal") {
        const d = m.data || {};
        const what = d.description ? `description ${d.description.type}` : d.candidate ? "candidate" : Object.keys(d).join(",");
        role.consoleLog.push(`[${new Date().toISOString()}] ws ${dir}: signal pc=${d.pc ?? "?"} ${what}${m.seq ? ` seq=${m.seq}` : ""}`);
        return;
      }
      if (!m || ["ping", "pong", "ack"].includes(m.type)) return;
      list.push(m);
      role.consoleLog.push(`[${new Date().toISOString()}] ws ${dir}: ${redact(JSON.stringify(m)).slice(0, 300)}`);
    };
    page.on("websocket", (ws) => {
      role.consoleLog.push(`[${new Date().toISOString()}] ws open: ${redact(ws.url())}`);
      ws.on("framesent", keepWs(role.wsSent, "->"));
      ws.on("framereceived", keepWs(role.wsReceived, "<-"));
      ws.on("close", () => role.consoleLog.push(`[${new Date().toISOString()}] ws closed: ${redact(ws.url())}`));
    });
    page.on("dialog", async (d) => {
      role.dialogs.push(`${d.type()}: ${d.message()}`);
      await d.accept().catch(() => {});
    });
    if (url) await page.goto(url, { waitUntil: "load" });
    return role;
  }

  tid(id) {
    return this.page.getByTestId(id);
  }

  /** Writes this role's console log into `dir`. */
  saveLog(dir) {
    mkdirSync(dir, { recursive: true });
    const text = [
      ...this.consoleLog,
      ...(this.cspViolations.length ? ["", "CSP violations:", ...this.cspViolations.map((v) => JSON.stringify(v))] : []),
      ...(this.dialogs.length ? ["", "dialogs:", ...this.dialogs] : []),
    ].join("\n");
    writeFileSync(path.join(dir, `console-${this.name}.log`), text + "\n");
  }
}

/** Screenshots of both pages, numbered: target/e2e-artifacts/<scenario>/NN-<step>-<role>.png */
export class Shots {
  constructor(scenario) {
    this.dir = path.join(ARTIFACTS, scenario);
    rmSync(this.dir, { recursive: true, force: true });
    mkdirSync(this.dir, { recursive: true });
    this.n = 0;
  }

  async take(step, ...roles) {
    this.n += 1;
    const nn = String(this.n).padStart(2, "0");
    for (const role of roles) {
      const file = path.join(this.dir, `${nn}-${step}-${role.name}.png`);
      try {
        await role.page.screenshot({ path: file, timeout: 15_000 });
      } catch (e) {
        writeFileSync(file + ".txt", `screenshot failed: ${e.message}\n`);
      }
    }
  }
}

/**
 * Video element state on a page: {found, width, height, playing, readyState, time}
 * @param {import("playwright-core").Page} page
 */
export function videoState(page, testid) {
  return page.evaluate((id) => {
    const el = document.querySelector(`[data-testid="${id}"]`);
    const v = el && (el.tagName === "VIDEO" ? el : el.querySelector("video"));
    if (!v) return { found: false };
    return {
      found: true,
      width: v.videoWidth,
      height: v.videoHeight,
      paused: v.paused,
      readyState: v.readyState,
      time: v.currentTime,
      hasStream: !!v.srcObject,
    };
  }, testid);
}

/**
 * Counts the frames a video element presents during `ms` (requestVideoFrameCallback, and the decoded
 * frame counter): {found, width, height, paused, readyState, presented, decoded}.
 */
export function videoFrames(page, testid, ms = 1200) {
  return page.evaluate(
    async ({ id, ms }) => {
      const el = document.querySelector(`[data-testid="${id}"]`);
      const v = el && (el.tagName === "VIDEO" ? el : el.querySelector("video"));
      if (!v) return { found: false };
      const q = () => (v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality().totalVideoFrames : 0);
      const q0 = q();
      let presented = 0;
      let stop = false;
      const tick = () => {
        if (stop) return;
        presented += 1;
        v.requestVideoFrameCallback(tick);
      };
      if (v.requestVideoFrameCallback) v.requestVideoFrameCallback(tick);
      await new Promise((r) => setTimeout(r, ms));
      stop = true;
      return {
        found: true,
        width: v.videoWidth,
        height: v.videoHeight,
        paused: v.paused,
        readyState: v.readyState,
        presented,
        decoded: q() - q0,
      };
    },
    { id: testid, ms },
  );
}

/** Waits until the video `testid` shows new frames: size > 0 and frames presented. */
export async function waitVideoPlaying(role, testid, { timeout = 30_000, message } = {}) {
  return waitFor(
    async () => {
      const s = await videoFrames(role.page, testid);
      return s.found && s.width > 0 && !s.paused && (s.presented >= 2 || s.decoded >= 2) ? s : false;
    },
    {
      timeout,
      interval: 100,
      message:
        message || `${role.name}'s ${testid} playing (videoWidth > 0, not paused, new frames presented)`,
    },
  );
}

/**
 * Average colours of the given regions (fractions) of the current frame of a video element.
 * @returns {Promise<{width, height, regions: {name, rgb}[]}>}
 */
export function sampleVideo(page, testid, regions) {
  return page.evaluate(
    ({ id, regions }) => {
      const el = document.querySelector(`[data-testid="${id}"]`);
      const v = el && (el.tagName === "VIDEO" ? el : el.querySelector("video"));
      if (!v || !v.videoWidth) return null;
      const c = document.createElement("canvas");
      c.width = v.videoWidth;
      c.height = v.videoHeight;
      const g = c.getContext("2d", { willReadFrequently: true });
      g.drawImage(v, 0, 0);
      return {
        width: c.width,
        height: c.height,
        regions: regions.map((r) => {
          const x = Math.floor(r.x * c.width);
          const y = Math.floor(r.y * c.height);
          const w = Math.max(1, Math.floor(r.w * c.width));
          const h = Math.max(1, Math.floor(r.h * c.height));
          const d = g.getImageData(x, y, w, h).data;
          const sum = [0, 0, 0];
          for (let i = 0; i < d.length; i += 4) {
            sum[0] += d[i];
            sum[1] += d[i + 1];
            sum[2] += d[i + 2];
          }
          const n = d.length / 4;
          return { name: r.name, rgb: sum.map((s) => Math.round(s / n)) };
        }),
      };
    },
    { id: testid, regions },
  );
}

/**
 * Decodes an image (JPEG, PNG or WebP bytes) in the browser and returns its size and the average
 * colour of each region (fractions of the image).
 * @param {import("playwright-core").Browser} browser
 * @param {Buffer} bytes
 * @param {string} mime
 */
export async function decodeImage(browser, bytes, mime, regions) {
  const ctx = await browser.newContext();
  try {
    const page = await ctx.newPage();
    return await page.evaluate(
      async ({ b64, mime, regions }) => {
        const bin = atob(b64);
        const arr = new Uint8Array(bin.length);
        for (let i = 0; i < bin.length; i++) arr[i] = bin.charCodeAt(i);
        // imageOrientation "none": the stored pixels as they are (the camera writes no EXIF rotation).
        const bmp = await createImageBitmap(new Blob([arr], { type: mime }), { imageOrientation: "none" });
        const c = new OffscreenCanvas(bmp.width, bmp.height);
        const g = c.getContext("2d", { willReadFrequently: true });
        g.drawImage(bmp, 0, 0);
        return {
          width: bmp.width,
          height: bmp.height,
          regions: regions.map((r) => {
            const x = Math.floor(r.x * c.width);
            const y = Math.floor(r.y * c.height);
            const w = Math.max(1, Math.floor(r.w * c.width));
            const h = Math.max(1, Math.floor(r.h * c.height));
            const d = g.getImageData(x, y, w, h).data;
            const sum = [0, 0, 0];
            for (let i = 0; i < d.length; i += 4) {
              sum[0] += d[i];
              sum[1] += d[i + 1];
              sum[2] += d[i + 2];
            }
            const n = d.length / 4;
            return { name: r.name, rgb: sum.map((s) => Math.round(s / n)) };
          }),
        };
      },
      { b64: bytes.toString("base64"), mime, regions },
    );
  } finally {
    await ctx.close();
  }
}

/** connection-status's data-state (or null). */
export function connState(role) {
  return role.page
    .getByTestId("connection-status")
    .first()
    .getAttribute("data-state", { timeout: 2000 })
    .catch(() => null);
}

export async function waitConnState(role, state, { timeout = 20_000 } = {}) {
  let last = null;
  await waitFor(
    async () => {
      last = await connState(role);
      return last === state;
    },
    { timeout, interval: 200, message: `${role.name}'s connection-status data-state="${state}"` },
  ).catch((e) => {
    throw new Error(`${e.message}; last data-state=${JSON.stringify(last)}`);
  });
}

/** Number of capture-items inside capture-list. */
export function captureCount(role) {
  return role.page.locator('[data-testid="capture-list"] [data-testid="capture-item"]').count();
}
