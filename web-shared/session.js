// The session connection shared by the agent console and the customer page: one WebSocket to
// /ws that reconnects by itself, resumes by seq, queues what the page sends while down, and
// measures the round trip. Runs unmodified in browsers and in Node 20 (with an injected WebSocket).

/** ws(s)://host/ws?token=… for the page's own origin (CSP connect-src 'self'). */
export function wsUrl(location, token) {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.host}/ws?token=${encodeURIComponent(token)}`;
}

/** The REST probe next to a /ws URL: same host, http(s), /api/v1/join. */
export function joinUrlFor(url) {
  const u = new URL(url);
  u.protocol = u.protocol === "wss:" ? "https:" : "http:";
  u.pathname = "/api/v1/join";
  u.search = "";
  u.hash = "";
  return u.toString();
}

/** Close codes after which reconnecting cannot help. */
export const TERMINAL_CLOSE_CODES = Object.freeze({
  4009: "session_closed",
  4010: "session_expired",
  4008: "replaced",
  4001: "unauthorized",
  4003: "forbidden",
});
const RATE_LIMITED = 4029;
// The server closes the connection (1009) on a bigger message; resending it after the reconnect
// would loop forever, so such a message is refused up front.
const MAX_MESSAGE_BYTES = 64 * 1024;
const SUBPROTOCOL = "capturelink.v1";

/** A server `error` answering one of our messages (or a local refusal such as `too_big`). */
export class SessionError extends Error {
  constructor(code, message, ref) {
    super(message || code);
    this.name = "SessionError";
    this.code = code;
    this.ref = ref ?? null;
  }
}

export class SessionClient extends EventTarget {
  constructor(opts = {}) {
    super();
    if (!opts.url) throw new TypeError("SessionClient: url is required");
    this.url = opts.url;
    this.token = opts.token ?? null;
    this.joinUrl = opts.joinUrl ?? joinUrlFor(opts.url);
    // Wrapped rather than stored: browsers throw "Illegal invocation" when a host function such as
    // fetch or setTimeout is called with `this` set to something other than the global object.
    this._WebSocket = opts.WebSocket ?? globalThis.WebSocket;
    this._fetch = opts.fetch ?? ((...a) => globalThis.fetch(...a));
    this._setTimeout = opts.setTimeout ?? ((f, ms) => globalThis.setTimeout(f, ms));
    this._clearTimeout = opts.clearTimeout ?? ((h) => globalThis.clearTimeout(h));
    this._random = opts.random ?? Math.random;
    this._now = opts.now ?? (() => Date.now());
    this.maxQueue = opts.maxQueue ?? 100;
    this.pingIntervalMs = opts.pingIntervalMs ?? 5000;
    this.pingTimeoutMs = opts.pingTimeoutMs ?? 4000;
    // A connection attempt that neither fails nor gets a welcome in this time is abandoned (a
    // browser can take minutes to give up on a host that does not answer).
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 10000;
    this.backoff = { firstMs: 250, maxMs: 5000, factor: 2, jitter: 0.5, ...opts.backoff };

    this.state = "connecting";
    this.reason = null;
    this.lastSeq = null; // null until the first welcome
    this.rttMs = null;
    this.welcome = null;

    this._started = false;
    this._ws = null;
    this._opened = false; // the current socket fired `open`
    this._welcomed = false; // the current socket delivered its welcome
    this._attempt = 0; // failed attempts since the last welcome
    this._queue = []; // entries waiting for the next welcome, oldest first
    this._pending = new Map(); // id -> entry, sent and waiting for ack / error
    this._nextId = 1;
    this._endedBy = null; // set by a `session.closed` event: the next close is final
    this._retryTimer = null;
    this._connectTimer = null;
    this._pingTimer = null;
    this._pongTimer = null;
    this._pingT = null;
  }

  /** Starts connecting (once). */
  connect() {
    if (this._started || this.state === "closed") return;
    this._started = true;
    this._open();
  }

  /** Ends the connection for good (reason `client`). */
  close() {
    if (this.state === "closed") return;
    this._finish("client");
  }

  /**
   * Skips the backoff wait and reconnects now, if the client is waiting to retry (a page may call
   * this on `online` or when it becomes visible again).
   */
  retryNow() {
    if (this.state === "closed" || !this._started || this._ws || this._retryTimer == null) return;
    this._clear("_retryTimer");
    this._open();
  }

  /**
   * Sends a client message; an `id` is added unless it has one. Resolves true on the server's
   * `ack`, rejects with a SessionError on its `error`, resolves false when the message was dropped
   * (sent with {queue: false} while down, pushed out of the full queue, or the client closed).
   * A queued message still unanswered when the connection breaks is sent again after the next
   * welcome (at least once: the server may see it twice).
   */
  send(msg, { queue = true } = {}) {
    if (this.state === "closed") return Promise.resolve(false);
    const id = msg.id ?? `c${this._nextId++}`;
    const text = JSON.stringify({ ...msg, id });
    if (new TextEncoder().encode(text).length > MAX_MESSAGE_BYTES) {
      return Promise.reject(new SessionError("too_big", "message over 64 KiB", id));
    }
    return new Promise((resolve, reject) => {
      const entry = { id, text, queued: queue, resolve, reject };
      if (this.state === "open" && this._ws) this._transmit(entry);
      else if (!queue) resolve(false);
      else this._enqueue([entry], false);
    });
  }

  // ---- connection lifecycle ----

  _open() {
    this._retryTimer = null;
    let url = this.url;
    if (this.lastSeq != null) {
      const u = new URL(url);
      u.searchParams.set("last_seq", String(this.lastSeq));
      url = u.toString();
    }
    let ws;
    try {
      ws = new this._WebSocket(url, [SUBPROTOCOL]);
    } catch {
      this._lost(null, false);
      return;
    }
    this._ws = ws;
    this._opened = false;
    this._welcomed = false;
    ws.onopen = () => {
      if (this._ws === ws) this._opened = true;
    };
    ws.onmessage = (e) => {
      if (this._ws === ws) this._onMessage(e.data);
    };
    ws.onclose = (e) => {
      if (this._ws === ws) {
        this._detach();
        this._lost(e.code, this._opened);
      }
    };
    // An `error` always means close code 1006 (a failed connection; a clean close fires no error).
    // Handled here rather than waiting for the close event, which some implementations omit
    // (Node 20's WebSocket after a refused upgrade).
    ws.onerror = () => {
      if (this._ws === ws) {
        this._detach(4000); // a no-op on a socket already closing
        this._lost(1006, this._opened);
      }
    };
    this._connectTimer = this._setTimeout(() => {
      this._connectTimer = null;
      if (this._ws === ws && !this._welcomed) this._abandon();
    }, this.connectTimeoutMs);
  }

  /** Gives up on the current socket without waiting for its close handshake. */
  _abandon() {
    const opened = this._opened;
    this._detach(4000);
    this._lost(null, opened);
  }

  /** Forgets the current socket (closing it with `code` if given) and stops its timers. */
  _detach(code) {
    const ws = this._ws;
    this._ws = null;
    this._welcomed = false;
    this._clear("_connectTimer");
    this._clear("_pingTimer");
    this._clear("_pongTimer");
    this._pingT = null;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    if (code != null) {
      try {
        ws.close(code);
      } catch {
        /* already closing */
      }
    }
  }

  /** The socket is gone: retry, or end for good. `opened`: it had opened before it went. */
  _lost(code, opened) {
    // What was sent on the lost socket and not answered: queued messages go out again after the
    // next welcome, ahead of those queued since; the others (signals) are reported dropped.
    const inflight = [];
    for (const e of this._pending.values()) {
      if (e.queued) inflight.push(e);
      else e.resolve(false);
    }
    this._pending.clear();
    if (inflight.length) this._enqueue(inflight, true);
    if (this.state === "closed") return;

    const terminal = TERMINAL_CLOSE_CODES[code] ?? this._endedBy;
    if (terminal) {
      this._finish(terminal);
      return;
    }
    let delay;
    if (code === RATE_LIMITED) {
      delay = this.backoff.maxMs;
      this._attempt++;
      this._setState("reconnecting", "rate_limited");
    } else {
      delay = this._nextDelay();
      this._setState("reconnecting", null);
    }
    this._retryTimer = this._setTimeout(() => this._open(), delay);
    // A refused upgrade (401/410) looks like any network failure to a browser: ask the REST API.
    if (!opened) this._probe();
  }

  /** Exponential backoff, capped, with the jitter taken off the top so the cap holds. */
  _nextDelay() {
    const b = this.backoff;
    const base = Math.min(b.maxMs, b.firstMs * Math.pow(b.factor, this._attempt));
    this._attempt++;
    return Math.round(base * (1 - b.jitter * this._random()));
  }

  async _probe() {
    if (this.token == null) return;
    let res;
    try {
      res = await this._fetch(this.joinUrl, {
        headers: { Authorization: `Bearer ${this.token}` },
        cache: "no-store",
      });
    } catch {
      return; // offline or server down: keep retrying
    }
    if (this.state === "closed" || this.state === "open") return;
    if (res.status === 401) {
      this._finish("unauthorized");
    } else if (res.status === 410) {
      let code = null;
      try {
        code = (await res.json())?.code ?? null;
      } catch {
        /* no body: closed */
      }
      if (this.state === "closed" || this.state === "open") return;
      this._finish(code === "session_expired" ? "session_expired" : "session_closed");
    }
  }

  _finish(reason) {
    this._clear("_retryTimer");
    this._detach(1000);
    for (const e of this._pending.values()) e.resolve(false);
    this._pending.clear();
    for (const e of this._queue) e.resolve(false);
    this._queue = [];
    this._setState("closed", reason);
  }

  _setState(state, reason) {
    if (this.state === state && this.reason === reason) return;
    this.state = state;
    this.reason = reason;
    this._emit("state", { state, reason });
  }

  // ---- messages ----

  _onMessage(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (!msg || typeof msg !== "object" || typeof msg.type !== "string") return;
    switch (msg.type) {
      case "welcome":
        this._onWelcome(msg);
        return;
      case "pong":
        this._onPong(msg);
        return;
      case "ack": {
        const e = this._pending.get(msg.id);
        if (e) {
          this._pending.delete(msg.id);
          e.resolve(true);
        }
        return;
      }
      case "error": {
        const e = msg.ref != null ? this._pending.get(msg.ref) : undefined;
        if (e) {
          this._pending.delete(msg.ref);
          e.reject(new SessionError(msg.code, msg.message, msg.ref));
        }
        this._emit("error", { code: msg.code, message: msg.message, ref: msg.ref ?? null });
        return;
      }
    }
    if (typeof msg.seq === "number") {
      if (this.lastSeq != null && msg.seq <= this.lastSeq) return; // already applied
      this.lastSeq = msg.seq;
    }
    if (msg.type === "session.closed") {
      this._endedBy = msg.reason === "expired" ? "session_expired" : "session_closed";
    }
    this._emit("event", msg);
  }

  _onWelcome(msg) {
    this._clear("_connectTimer");
    this._welcomed = true;
    this._attempt = 0;
    this.welcome = msg;
    // On a resume the server replays everything after our lastSeq next, so keep it; otherwise its
    // last_seq is where live events continue (and may be lower than ours after a restore).
    if (!msg.resumed || this.lastSeq == null) {
      this.lastSeq = typeof msg.last_seq === "number" ? msg.last_seq : 0;
    }
    this.state = "open";
    this.reason = null;
    // The queue goes out before anything the welcome's listeners send.
    const queued = this._queue;
    this._queue = [];
    for (const e of queued) this._transmit(e);
    this._emit("state", { state: "open", reason: null });
    this._emit("welcome", msg);
    this._ping();
  }

  _transmit(entry) {
    const ws = this._ws;
    try {
      ws.send(entry.text);
    } catch {
      if (entry.queued) this._enqueue([entry], false);
      else entry.resolve(false);
      return;
    }
    this._pending.set(entry.id, entry);
  }

  /** Adds entries to the queue (at the front if `first`), dropping the oldest past maxQueue. */
  _enqueue(entries, first) {
    this._queue = first ? [...entries, ...this._queue] : [...this._queue, ...entries];
    while (this._queue.length > this.maxQueue) this._queue.shift().resolve(false);
  }

  // ---- heartbeat ----

  _ping() {
    this._pingTimer = null;
    const ws = this._ws;
    if (!ws || !this._welcomed) return;
    const t = this._now();
    try {
      ws.send(JSON.stringify({ type: "ping", t }));
    } catch {
      this._abandon();
      return;
    }
    this._pingT = t;
    this._pongTimer = this._setTimeout(() => {
      this._pongTimer = null;
      if (this._ws === ws) this._abandon(); // no pong: the socket is dead
    }, this.pingTimeoutMs);
  }

  _onPong(msg) {
    if (this._pingT == null || msg.t !== this._pingT) return;
    this.rttMs = Math.max(0, this._now() - this._pingT);
    this._pingT = null;
    this._clear("_pongTimer");
    this._clear("_pingTimer");
    this._pingTimer = this._setTimeout(() => this._ping(), this.pingIntervalMs);
  }

  // ---- helpers ----

  _clear(name) {
    if (this[name] != null) {
      this._clearTimeout(this[name]);
      this[name] = null;
    }
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
