// A scenario: one server, one Chromium with a fake camera, the agent's and the customer's pages,
// screenshots and logs under target/e2e-artifacts/<scenario>/, and steps reported one by one.

import path from "node:path";
import { writeFileSync } from "node:fs";
import { Server } from "./server.mjs";
import { launch, makeCamera, Role, Shots, waitFor, sleep } from "./browser.mjs";

export class Scenario {
  /**
   * @param {string} name artifacts folder
   * @param {{camera?: boolean|{width:number,height:number}, fakeDeviceConfig?: string}} [opts]
   */
  constructor(name, { camera = true, fakeDeviceConfig } = {}) {
    this.name = name;
    this.shots = new Shots(name);
    this.dir = this.shots.dir;
    this.server = new Server({ logDir: this.dir, name: "server" });
    this.camera = camera ? makeCamera(typeof camera === "object" ? camera : {}) : null;
    this.fakeDeviceConfig = fakeDeviceConfig;
    this.browser = null;
    this.roles = [];
    this.failedStep = null;
    this.results = [];
  }

  async start() {
    await this.server.start();
    this.browser = await launch({ camera: this.camera, fakeDeviceConfig: this.fakeDeviceConfig });
    return this;
  }

  async open(name, url, { phone = false, locale } = {}) {
    const role = await Role.open(this.browser, name, { origin: this.server.origin, phone, locale });
    this.roles.push(role);
    if (url) await role.page.goto(url, { waitUntil: "load" });
    return role;
  }

  /** Keeps a stored image next to the screenshots (a person can look at what was stored). */
  saveImage(name, bytes, mime) {
    const ext = { "image/jpeg": "jpg", "image/png": "png", "image/webp": "webp" }[mime] || "bin";
    writeFileSync(path.join(this.dir, `${name}.${ext}`), bytes);
  }

  snap(step, ...roles) {
    return this.shots.take(step, ...(roles.length ? roles : this.roles));
  }

  /**
   * Runs one step as a subtest. A failed step takes a FAILED screenshot of both pages; after a failed
   * step that is not `soft`, the remaining steps are reported as skipped (they depend on it).
   */
  async step(t, name, fn, { soft = false } = {}) {
    if (this.failedStep) {
      this.results.push({ name, result: "skipped" });
      await t.test(name, { skip: `depends on the failed step "${this.failedStep}"` }, () => {});
      return false;
    }
    let ok = false;
    let error = null;
    const t0 = Date.now();
    await t.test(name, async () => {
      try {
        await fn();
        ok = true;
      } catch (e) {
        error = e;
        throw e;
      }
    });
    this.results.push({ name, result: ok ? "ok" : "FAILED", ms: Date.now() - t0, error: error?.message });
    if (!ok) {
      await this.snap(`FAILED-${slug(name)}`).catch(() => {});
      if (!soft) this.failedStep = name;
    }
    return ok;
  }

  async dispose() {
    for (const r of this.roles) {
      try {
        r.saveLog(this.dir);
      } catch {
        // ignore
      }
    }
    writeFileSync(
      path.join(this.dir, "steps.txt"),
      this.results
        .map((r) => `${r.result.padEnd(7)} ${r.name}${r.ms != null ? ` (${r.ms} ms)` : ""}${r.error ? `\n        ${r.error.replace(/\n/g, "\n        ")}` : ""}`)
        .join("\n") + "\n",
    );
    if (this.browser) await this.browser.close().catch(() => {});
    await this.server.dispose().catch(() => {});
    this.camera?.dispose();
  }
}

export function slug(s) {
  return s
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-|-$/g, "")
    .slice(0, 40);
}

/** On the customer page: taps start-camera where the page has one (waits a little for it). */
export async function startCameraIfAsked(customer, { timeout = 8000 } = {}) {
  const btn = customer.page.getByTestId("start-camera");
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    // Tap it when it is there and enabled; the page may also start the camera by itself (e.g. after a
    // reload, the permission being granted) and hide a disabled button: then there is nothing to tap.
    if ((await btn.isVisible().catch(() => false)) && (await btn.isEnabled().catch(() => false))) {
      try {
        await btn.tap({ timeout: 2000 });
        return true;
      } catch {
        // it went away meanwhile: look again
      }
    }
    // Already previewing without a button?
    const playing = await customer.page
      .evaluate(() => {
        const el = document.querySelector('[data-testid="local-video"]');
        const v = el && (el.tagName === "VIDEO" ? el : el.querySelector("video"));
        return !!(v && v.videoWidth > 0);
      })
      .catch(() => false);
    if (playing) return false;
    await sleep(200);
  }
  return false;
}

/** The agent's End button: a data-testid where the page has one, else a button named End … */
export function endButton(agent) {
  const p = agent.page;
  return p
    .locator('[data-testid="end-session"], [data-testid="end-button"], [data-testid="session-end"], [data-testid="end-call"]')
    .or(p.getByRole("button", { name: /^\s*(end|end session|end call|结束|结束会话|结束通话)\s*$/i }))
    .first();
}

/**
 * After End: answers the confirmation, whichever it is: window.confirm() (accepted by the Role's
 * dialog handler) or an in-page modal with a confirm button. Waits up to `timeout` for one of them.
 */
export async function confirmInPageDialog(agent, { timeout = 5000 } = {}) {
  const p = agent.page;
  const dialogsBefore = agent.dialogs.length;
  const modal = p.locator('dialog[open], [role="dialog"]:visible, [role="alertdialog"]:visible').first();
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    if (agent.dialogs.length > dialogsBefore) return "window.confirm";
    if (await modal.isVisible().catch(() => false)) {
      const yes = modal
        .locator('[data-testid$="-yes"], [data-testid="confirm-end"], [data-testid="confirm"]')
        .or(modal.getByRole("button", { name: /end|confirm|yes|ok|结束|确定|确认/i }))
        .first();
      await yes.click();
      return "modal";
    }
    await sleep(100);
  }
  return agent.dialogs.length > dialogsBefore ? "window.confirm" : null;
}

export { waitFor, sleep };
