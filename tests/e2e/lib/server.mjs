// Starts the real capturelink binary for a test: 127.0.0.1 on a free port, a fresh temp data dir,
// a known API key. Builds nothing: scripts/test builds the binary first (or set CAPTURELINK_BIN).

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, createWriteStream, mkdirSync, statSync } from "node:fs";
import { randomBytes } from "node:crypto";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");

/** The binary to test: $CAPTURELINK_BIN, else target/debug or target/release, whichever is newer. */
export function binaryPath() {
  if (process.env.CAPTURELINK_BIN) {
    const p = path.resolve(process.env.CAPTURELINK_BIN);
    if (!existsSync(p)) throw new Error(`CAPTURELINK_BIN=${p} does not exist`);
    return p;
  }
  const candidates = ["target/debug/capturelink", "target/release/capturelink"]
    .map((p) => path.join(REPO_ROOT, p))
    .filter((p) => existsSync(p))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  if (candidates.length === 0) {
    throw new Error(
      "no capturelink binary: run `cargo build` (or set CAPTURELINK_BIN) before the e2e tests",
    );
  }
  return candidates[0];
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class Server {
  /**
   * @param {{logDir?: string, extraArgs?: string[], name?: string}} [opts]
   */
  constructor({ logDir, extraArgs = [], name = "server" } = {}) {
    this.bin = binaryPath();
    this.dataDir = mkdtempSync(path.join(os.tmpdir(), "capturelink-e2e-"));
    this.apiKey = "e2e_" + randomBytes(16).toString("hex");
    this.extraArgs = extraArgs;
    this.name = name;
    this.logDir = logDir;
    this.port = null;
    this.proc = null;
    this.starts = 0;
    this.output = []; // the last lines the server printed, for failure messages
  }

  get origin() {
    return `http://127.0.0.1:${this.port}`;
  }

  get api() {
    return `${this.origin}/api/v1`;
  }

  /** Starts the server (on the same port and data dir as before, when restarted) and waits for /healthz. */
  async start({ timeoutMs = 30_000 } = {}) {
    if (this.proc) throw new Error("server already running");
    if (this.port == null) this.port = await freePort();
    const args = [
      "serve",
      "--listen",
      `127.0.0.1:${this.port}`,
      "--data-dir",
      this.dataDir,
      "--api-key",
      this.apiKey,
      ...this.extraArgs,
    ];
    this.starts += 1;
    const proc = spawn(this.bin, args, {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "info", NO_COLOR: "1" },
    });
    this.proc = proc;
    let log = null;
    if (this.logDir) {
      mkdirSync(this.logDir, { recursive: true });
      log = createWriteStream(path.join(this.logDir, `${this.name}.log`), { flags: "a" });
      log.write(`\n===== start #${this.starts}: ${this.bin} ${args.join(" ").replace(this.apiKey, "<key>")}\n`);
    }
    const keep = (chunk) => {
      const text = chunk.toString();
      if (log) log.write(text);
      for (const line of text.split("\n")) {
        if (line) this.output.push(line);
      }
      if (this.output.length > 200) this.output.splice(0, this.output.length - 200);
    };
    proc.stdout.on("data", keep);
    proc.stderr.on("data", keep);
    const exited = new Promise((resolve) => {
      proc.on("exit", (code, signal) => {
        if (log) log.write(`===== exited: code=${code} signal=${signal}\n`);
        if (log) log.end();
        resolve({ code, signal });
      });
    });
    proc.exited = exited;
    let gone = null;
    exited.then((r) => (gone = r));

    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (gone) {
        this.proc = null;
        throw new Error(
          `capturelink exited while starting (${JSON.stringify(gone)}):\n${this.tail()}`,
        );
      }
      try {
        const res = await fetch(`${this.origin}/healthz`, { signal: AbortSignal.timeout(1000) });
        if (res.ok) return this;
      } catch {
        // not up yet
      }
      if (Date.now() > deadline) {
        await this.kill();
        throw new Error(`capturelink did not answer /healthz within ${timeoutMs} ms:\n${this.tail()}`);
      }
      await sleep(100);
    }
  }

  /** Graceful stop (SIGTERM), SIGKILL after `graceMs`. */
  async stop({ graceMs = 10_000 } = {}) {
    const proc = this.proc;
    if (!proc) return;
    proc.kill("SIGTERM");
    const t = setTimeout(() => proc.kill("SIGKILL"), graceMs);
    await proc.exited;
    clearTimeout(t);
    this.proc = null;
  }

  /** kill -9: no graceful shutdown at all. */
  async kill() {
    const proc = this.proc;
    if (!proc) return;
    proc.kill("SIGKILL");
    await proc.exited;
    this.proc = null;
  }

  async restart(opts) {
    await this.stop(opts);
    return this.start(opts);
  }

  /** Stops the server and removes its data dir. */
  async dispose() {
    await this.kill();
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  tail(n = 40) {
    return this.output.slice(-n).join("\n");
  }

  /** REST call with the API key; returns the parsed JSON (throws on a non-2xx with the body). */
  async request(method, p, body, headers = {}) {
    const res = await fetch(`${this.api}${p}`, {
      method,
      headers: {
        authorization: `Bearer ${this.apiKey}`,
        ...(body !== undefined ? { "content-type": "application/json" } : {}),
        ...headers,
      },
      body: body !== undefined ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${p} -> ${res.status}: ${text}`);
    return text ? JSON.parse(text) : null;
  }

  /** The raw bytes of a URL of this server, with the API key. */
  async bytes(url) {
    const res = await fetch(url, { headers: { authorization: `Bearer ${this.apiKey}` } });
    if (!res.ok) throw new Error(`GET ${url} -> ${res.status}: ${await res.text()}`);
    return { type: res.headers.get("content-type"), body: Buffer.from(await res.arrayBuffer()) };
  }

  createSession(body = {}) {
    return this.request("POST", "/sessions", { claim_ref: `E2E-${Date.now()}`, ...body });
  }
}
