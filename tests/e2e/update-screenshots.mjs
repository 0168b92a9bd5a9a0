// Copies the screenshots the README shows from the last end-to-end run
// (target/e2e-artifacts/) into docs/screenshots/, under stable names.
//   node --test tests/e2e/ && node tests/e2e/update-screenshots.mjs

import { copyFileSync, existsSync, mkdirSync, readdirSync } from "node:fs";
import path from "node:path";
import { REPO_ROOT } from "./lib/server.mjs";

const FROM = path.join(REPO_ROOT, "target", "e2e-artifacts");
const TO = path.join(REPO_ROOT, "docs", "screenshots");

// [scenario folder, step, role, file name in docs/screenshots]
const PICKS = [
  ["0-smoke", "agent-home", "agent-home", "agent-home.png"],
  ["0-smoke", "agent-session-zh", "agent-session-zh", "agent-zh.png"],
  ["0-smoke", "customer-session-zh", "customer-session-zh", "customer-zh.png"],
  ["1-call", "call-connected", "agent", "agent-call.png"],
  ["1-call", "call-connected", "customer", "customer-call.png"],
  ["1-call", "guide-box-and-hint", "agent", "agent-guide.png"],
  ["1-call", "guide-box-and-hint", "customer", "customer-guide.png"],
  ["1-call", "captured", "customer", "customer-captured.png"],
  ["1-call", "second-capture", "agent", "agent-captures.png"],
  ["1-call", "server-down", "customer", "customer-reconnecting.png"],
  ["1-call", "end-confirm", "agent", "agent-end-confirm.png"],
  ["1-call", "ended", "agent", "agent-ended.png"],
  ["1-call", "ended", "customer", "customer-ended.png"],
  ["2-fallback", "fallback-captured", "agent", "agent-frame-fallback.png"],
];

mkdirSync(TO, { recursive: true });
let missing = 0;
for (const [scenario, step, role, out] of PICKS) {
  const dir = path.join(FROM, scenario);
  const re = new RegExp(`^\\d\\d-${step}-${role}\\.png$`);
  const file = existsSync(dir) ? readdirSync(dir).find((f) => re.test(f)) : null;
  if (!file) {
    console.error(`missing: ${scenario}/NN-${step}-${role}.png`);
    missing++;
    continue;
  }
  copyFileSync(path.join(dir, file), path.join(TO, out));
  console.log(`${scenario}/${file} -> docs/screenshots/${out}`);
}
process.exit(missing ? 1 : 0);
