// Smoke: every page loads with zero console errors, zero uncaught exceptions and zero
// Content-Security-Policy violations, and is served with a Content-Security-Policy header.

import { test } from "node:test";
import assert from "node:assert/strict";
import { Scenario, startCameraIfAsked } from "./lib/scenario.mjs";
import { sleep, waitConnState } from "./lib/browser.mjs";

test("smoke: the pages load without console errors or CSP violations", { timeout: 120_000 }, async (t) => {
  const sc = new Scenario("0-smoke");
  try {
    await sc.start();
    const session = await sc.server.createSession({ claim_ref: "CLM-E2E-SMOKE", locale: "en" });
    const zh = await sc.server.createSession({
      claim_ref: "CLM-E2E-SMOKE-ZH",
      locale: "zh-CN",
      vehicle: { plate: "沪A12345" },
      customer: { name: "王芳" },
    });
    const pages = [
      { name: "agent-home", url: `${sc.server.origin}/agent/` },
      { name: "customer-no-token", url: `${sc.server.origin}/customer/`, phone: true },
      { name: "agent-session", url: session.agent_url, open: true },
      { name: "customer-session", url: session.customer_url, phone: true, open: true, camera: true },
      // Chinese: the session's locale (customer) and the browser's (agent).
      { name: "agent-session-zh", url: zh.agent_url, open: true, locale: "zh-CN" },
      { name: "customer-session-zh", url: zh.customer_url, phone: true, open: true, camera: true, locale: "zh-CN" },
    ];
    for (const p of pages) {
      await t.test(p.name, async () => {
        const role = await sc.open(p.name, null, { phone: !!p.phone, locale: p.locale });
        const res = await role.page.goto(p.url, { waitUntil: "load" });
        assert.equal(res.status(), 200, `${p.url} -> ${res.status()}`);
        const csp = res.headers()["content-security-policy"];
        assert.ok(csp, `${p.name}: a Content-Security-Policy header`);
        t.diagnostic(`${p.name} CSP: ${csp}`);
        const dirs = Object.fromEntries(
          csp.split(";").map((d) => d.trim().split(/\s+/)).filter((d) => d[0]).map(([k, ...v]) => [k.toLowerCase(), v]),
        );
        const scripts = dirs["script-src"] || dirs["default-src"];
        assert.ok(scripts, `${p.name}: the CSP restricts scripts (script-src or default-src)`);
        for (const bad of ["'unsafe-inline'", "'unsafe-eval'", "*", "data:", "http:", "https:"]) {
          assert.ok(!scripts.includes(bad), `${p.name}: script sources must not include ${bad}: ${csp}`);
        }
        assert.ok(dirs["default-src"] || dirs["object-src"], `${p.name}: default-src or object-src set`);
        if (p.camera) await startCameraIfAsked(role);
        if (p.open) await waitConnState(role, "open");
        await sleep(1500); // late module errors, late CSP reports
        await sc.snap(p.name, role);
        if (p.locale === "zh-CN") {
          const lang = await role.page.evaluate(() => document.documentElement.lang);
          assert.match(lang, /^zh/, `${p.name}: <html lang> follows the locale`);
          const text = await role.page.evaluate(() => document.body.innerText);
          assert.match(text, /[\u4e00-\u9fff]/, `${p.name}: the page is in Chinese`);
        }
        assert.deepEqual(role.pageErrors, [], `${p.name}: uncaught exceptions`);
        assert.deepEqual(role.cspViolations, [], `${p.name}: CSP violations`);
        assert.deepEqual(
          role.consoleErrors,
          [],
          `${p.name}: console errors (failed requests: ${JSON.stringify(role.failedRequests)})`,
        );
      });
    }
  } finally {
    await sc.dispose();
  }
});
