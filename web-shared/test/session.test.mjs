import { test } from "node:test";
import assert from "node:assert/strict";
import { SessionClient, SessionError, wsUrl, joinUrlFor, TERMINAL_CLOSE_CODES } from "../session.js";

// ---- test doubles: a scripted WebSocket, a manual clock, a scripted fetch ----

/** A clock whose setTimeout callbacks run only when the test advances it. */
class FakeClock {
  constructor() {
    this.t = 1_000_000;
    this.timers = new Map();
    this.nextId = 1;
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.timers.set(id, { at: this.t + Math.max(0, ms ?? 0), fn, ms });
      return id;
    };
    this.clearTimeout = (id) => this.timers.delete(id);
    this.now = () => this.t;
  }
  /** Delays of the timers currently armed, sorted. */
  pending() {
    return [...this.timers.values()].map((x) => x.at - this.t).sort((a, b) => a - b);
  }
  /** Moves time forward, running due timers in order (including ones they arm). */
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let next = null;
      for (const [id, x] of this.timers) {
        if (x.at <= end && (next == null || x.at < next[1].at)) next = [id, x];
      }
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = next[1].at;
      next[1].fn();
    }
    this.t = end;
  }
}

/** Makes a WebSocket class whose instances the test drives; `sockets` lists them in order. */
function makeFakeWebSocket() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.sent = [];
      this.readyState = 0;
      this.closedWith = null;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      sockets.push(this);
    }
    send(text) {
      if (this.readyState !== 1) throw new Error("InvalidStateError");
      this.sent.push(JSON.parse(text));
    }
    close(code) {
      this.closedWith = code ?? 1005;
      this.readyState = 3;
    }
    // ---- driven by the test ----
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    receive(msg) {
      this.onmessage?.({ data: typeof msg === "string" ? msg : JSON.stringify(msg) });
    }
    /** The server (or the network) closes the connection. */
    drop(code = 1006) {
      this.readyState = 3;
      if (code === 1006) this.onerror?.({}); // as browsers: an error only for a failed connection
      this.onclose?.({ code, reason: "", wasClean: code !== 1006 });
    }
    sentOf(type) {
      return this.sent.filter((m) => m.type === type);
    }
  }
  return { FakeWebSocket, sockets };
}

/** A fetch answering from a queue of scripted responses (or a function). */
function makeFakeFetch(answer) {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url, init });
    const a = typeof answer === "function" ? answer(url, init) : answer;
    if (a instanceof Error) throw a;
    return {
      status: a.status,
      ok: a.status >= 200 && a.status < 300,
      json: async () => a.body,
    };
  };
  return { fetch, calls };
}

/** Lets pending promise callbacks (the probe's awaits) run. */
const flush = () => new Promise((r) => setImmediate(r));

function welcome(extra = {}) {
  return {
    type: "welcome",
    session: { id: "s1", locale: "en" },
    role: "agent",
    peer_present: false,
    ice_servers: [],
    last_seq: 0,
    resumed: false,
    captures: [],
    checklist: [],
    ...extra,
  };
}

// ---- tests ----

function setup({ random = () => 0.5, fetchAnswer = { status: 200, body: {} }, ...opts } = {}) {
  const clock = new FakeClock();
  const { FakeWebSocket, sockets } = makeFakeWebSocket();
  const f = makeFakeFetch(fetchAnswer);
  const client = new SessionClient({
    url: "ws://cl.test/ws?token=tok",
    token: "tok",
    WebSocket: FakeWebSocket,
    fetch: f.fetch,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: clock.now,
    random,
    ...opts,
  });
  const log = { state: [], events: [], welcomes: [], errors: [] };
  client.addEventListener("state", (e) => log.state.push(e.detail));
  client.addEventListener("event", (e) => log.events.push(e.detail));
  client.addEventListener("welcome", (e) => log.welcomes.push(e.detail));
  client.addEventListener("error", (e) => log.errors.push(e.detail));
  const last = () => sockets[sockets.length - 1];
  /** Opens the latest socket and welcomes it. */
  const up = (w = {}) => {
    last().open();
    last().receive(welcome(w));
  };
  return { client, clock, sockets, last, up, log, fetchCalls: f.calls };
}

/** Delay of the only armed timer (the retry, while down). */
function retryDelay(clock) {
  const p = clock.pending();
  assert.equal(p.length, 1, `one timer armed, got ${p}`);
  return p[0];
}

test("wsUrl and joinUrlFor follow the page's origin", () => {
  assert.equal(wsUrl({ protocol: "https:", host: "cl.example:8443" }, "a b/c"), "wss://cl.example:8443/ws?token=a%20b%2Fc");
  assert.equal(wsUrl({ protocol: "http:", host: "127.0.0.1:8080" }, "t"), "ws://127.0.0.1:8080/ws?token=t");
  assert.equal(joinUrlFor("wss://h.example/ws?token=x&last_seq=3"), "https://h.example/api/v1/join");
  assert.equal(joinUrlFor("ws://127.0.0.1:8080/ws?token=x"), "http://127.0.0.1:8080/api/v1/join");
});

test("connects with the subprotocol, no last_seq at first, and opens on welcome", () => {
  const { client, sockets, up, log } = setup();
  assert.equal(client.state, "connecting");
  client.connect();
  client.connect(); // idempotent
  assert.equal(sockets.length, 1);
  assert.deepEqual(sockets[0].protocols, ["capturelink.v1"]);
  assert.equal(new URL(sockets[0].url).searchParams.get("last_seq"), null);
  assert.equal(new URL(sockets[0].url).searchParams.get("token"), "tok");
  sockets[0].open();
  assert.equal(client.state, "connecting", "open only once welcomed");
  up({ last_seq: 4, peer_present: true });
  assert.equal(client.state, "open");
  assert.equal(client.reason, null);
  assert.equal(client.lastSeq, 4);
  assert.equal(client.welcome.peer_present, true);
  assert.equal(log.welcomes.length, 1);
  assert.deepEqual(log.state.at(-1), { state: "open", reason: null });
});

test("first retry comes within 0.5 s whatever the jitter", () => {
  for (const r of [0, 0.3, 0.999999]) {
    const { client, clock, sockets, up } = setup({ random: () => r });
    client.connect();
    up();
    sockets[0].drop(1006);
    assert.equal(client.state, "reconnecting");
    const d = retryDelay(clock);
    assert.ok(d < 500 && d > 0, `first delay ${d} with random ${r}`);
    clock.advance(d - 1);
    assert.equal(sockets.length, 1);
    clock.advance(1);
    assert.equal(sockets.length, 2, "retried");
  }
});

test("backoff grows exponentially to the 5 s cap and never gives up", () => {
  const { client, clock, sockets } = setup({ random: () => 0 }); // no jitter taken off
  client.connect();
  const delays = [];
  for (let i = 0; i < 40; i++) {
    sockets.at(-1).drop(1006);
    const d = retryDelay(clock);
    delays.push(d);
    clock.advance(d);
    assert.equal(sockets.length, i + 2, "a new attempt after each failure");
  }
  assert.deepEqual(delays.slice(0, 7), [250, 500, 1000, 2000, 4000, 5000, 5000]);
  assert.ok(delays.every((d) => d <= 5000));
  assert.equal(client.state, "reconnecting");
});

test("jitter spreads the delays below the cap", () => {
  let i = 0;
  const seq = [0.1, 0.9, 0.5, 0.2, 0.8, 0.0, 0.99, 0.4, 0.6, 0.3, 0.7, 0.05];
  const { client, clock, sockets } = setup({ random: () => seq[i++ % seq.length] });
  client.connect();
  const delays = [];
  for (let k = 0; k < 12; k++) {
    sockets.at(-1).drop(1006);
    const d = retryDelay(clock);
    delays.push(d);
    clock.advance(d);
  }
  // attempt k: base = min(5000, 250 * 2^k); delay = base * (1 - 0.5 * random)
  delays.forEach((d, k) => {
    const base = Math.min(5000, 250 * 2 ** k);
    assert.equal(d, Math.round(base * (1 - 0.5 * seq[k])), `attempt ${k}`);
  });
  const capped = delays.slice(5);
  assert.ok(capped.every((d) => d >= 2500 && d <= 5000), `capped ${capped}`);
  assert.ok(new Set(capped).size > 3, "jittered, not constant");
});

test("a welcome resets the backoff", () => {
  const { client, clock, sockets, up } = setup({ random: () => 0 });
  client.connect();
  for (let i = 0; i < 4; i++) {
    sockets.at(-1).drop(1006);
    clock.advance(retryDelay(clock));
  }
  up();
  sockets.at(-1).drop(1001);
  assert.equal(retryDelay(clock), 250);
});

test("resumes with last_seq, keeps its seq across a resumed welcome, drops duplicates", () => {
  const { client, clock, sockets, up, log } = setup();
  client.connect();
  up({ last_seq: 7 });
  sockets[0].receive({ type: "chat", text: "a", from: "customer", seq: 8 });
  sockets[0].receive({ type: "chat", text: "b", from: "customer", seq: 9 });
  sockets[0].drop(1006);
  clock.advance(retryDelay(clock));
  assert.equal(new URL(sockets[1].url).searchParams.get("last_seq"), "9");
  assert.equal(new URL(sockets[1].url).searchParams.get("token"), "tok");
  // The server's welcome.last_seq is its latest; the replay (10, 11) follows it.
  up({ last_seq: 11, resumed: true });
  assert.equal(client.lastSeq, 9, "a resumed welcome does not skip the replay");
  sockets[1].receive({ type: "chat", text: "b", from: "customer", seq: 9 }); // duplicate
  sockets[1].receive({ type: "peer.left", role: "customer", reason: "closed", seq: 10 });
  sockets[1].receive({ type: "peer.joined", role: "customer", seq: 11 });
  sockets[1].receive({ type: "peer.joined", role: "customer", seq: 11 }); // duplicate
  sockets[1].receive({ type: "chat", text: "old", from: "customer", seq: 3 }); // stale
  assert.deepEqual(log.events.map((e) => e.seq), [8, 9, 10, 11]);
  assert.equal(client.lastSeq, 11);
  assert.equal(log.welcomes.length, 2);
  assert.equal(log.welcomes[1].resumed, true);
});

test("a welcome with resumed:false replaces the state and the seq", () => {
  const { client, clock, sockets, up, log } = setup();
  client.connect();
  up({ last_seq: 20, captures: [{ id: "c1" }] });
  sockets[0].receive({ type: "chat", text: "x", from: "agent", seq: 21 });
  sockets[0].drop(1006);
  clock.advance(retryDelay(clock));
  assert.equal(new URL(sockets[1].url).searchParams.get("last_seq"), "21");
  // The server could not continue from 21 (restored database): full state, lower seq.
  up({ last_seq: 5, resumed: false, captures: [{ id: "c1" }, { id: "c2" }] });
  assert.equal(log.welcomes.length, 2);
  assert.equal(log.welcomes[1].resumed, false);
  assert.deepEqual(client.welcome.captures.map((c) => c.id), ["c1", "c2"]);
  assert.equal(client.lastSeq, 5);
  sockets[1].receive({ type: "chat", text: "new", from: "agent", seq: 6 });
  assert.deepEqual(log.events.map((e) => e.text), ["x", "new"], "seq 6 is not taken for a duplicate");
});

test("messages sent while down are queued (bounded), sent after welcome, settled by ack/error", async () => {
  const { client, sockets, up, log } = setup({ maxQueue: 3 });
  client.connect();
  const results = [];
  const ps = ["a", "b", "c", "d", "e"].map((text, i) =>
    client.send({ type: "chat", text }).then(
      (v) => (results[i] = v),
      (e) => (results[i] = e),
    ),
  );
  await flush();
  assert.deepEqual(results.slice(0, 2), [false, false], "the oldest two were pushed out");
  assert.equal(results[2], undefined);
  sockets[0].open();
  assert.equal(sockets[0].sent.length, 0, "nothing before the welcome");
  up();
  const chats = sockets[0].sentOf("chat");
  assert.deepEqual(chats.map((m) => m.text), ["c", "d", "e"]);
  const ids = chats.map((m) => m.id);
  assert.equal(new Set(ids).size, 3, "distinct ids");
  assert.ok(ids.every((id) => id != null));
  sockets[0].receive({ type: "ack", id: ids[0] });
  sockets[0].receive({ type: "error", code: "invalid_message", message: "too long", ref: ids[1] });
  sockets[0].receive({ type: "ack", id: ids[2] });
  await Promise.all(ps);
  assert.equal(results[2], true);
  assert.ok(results[3] instanceof SessionError);
  assert.equal(results[3].code, "invalid_message");
  assert.equal(results[3].ref, ids[1]);
  assert.equal(results[4], true);
  assert.deepEqual(log.errors, [{ code: "invalid_message", message: "too long", ref: ids[1] }]);
});

test("the queue goes out before what the welcome's listeners send", () => {
  const { client, sockets, up } = setup();
  client.addEventListener("welcome", () => client.send({ type: "chat", text: "from listener" }));
  client.connect();
  client.send({ type: "chat", text: "queued" });
  up();
  assert.deepEqual(sockets[0].sentOf("chat").map((m) => m.text), ["queued", "from listener"]);
});

test("a message unanswered when the socket breaks is sent again, with the same id", async () => {
  const { client, clock, sockets, up } = setup();
  client.connect();
  up();
  let result;
  client.send({ type: "capture.request", request_id: "r1", area: "hood", angle: "front" }).then((v) => (result = v));
  const first = sockets[0].sentOf("capture.request")[0];
  sockets[0].drop(1006);
  client.send({ type: "chat", text: "later" });
  clock.advance(retryDelay(clock));
  up({ resumed: true });
  const resent = sockets[1].sent.filter((m) => m.type !== "ping");
  assert.deepEqual(resent.map((m) => m.type), ["capture.request", "chat"], "in the original order");
  assert.equal(resent[0].id, first.id);
  sockets[1].receive({ type: "ack", id: first.id });
  await flush();
  assert.equal(result, true);
});

test("{queue:false} sends are dropped while down and sent while open", async () => {
  const { client, clock, sockets, up } = setup();
  client.connect();
  assert.equal(await client.send({ type: "signal", data: { x: 1 } }, { queue: false }), false);
  up();
  assert.equal(sockets[0].sentOf("signal").length, 0, "not sent after the welcome either");
  const p = client.send({ type: "signal", data: { x: 2 } }, { queue: false });
  const sent = sockets[0].sentOf("signal");
  assert.equal(sent.length, 1);
  assert.deepEqual(sent[0].data, { x: 2 });
  sockets[0].receive({ type: "ack", id: sent[0].id });
  assert.equal(await p, true);
  // In flight when the socket breaks: reported dropped, not resent.
  const q = client.send({ type: "signal", data: { x: 3 } }, { queue: false });
  sockets[0].drop(1006);
  assert.equal(await q, false);
  clock.advance(retryDelay(clock));
  up({ resumed: true });
  assert.equal(sockets[1].sentOf("signal").length, 0);
});

test("ping measures rttMs; a missing pong forces a reconnect", () => {
  const { client, clock, sockets, up } = setup({ pingIntervalMs: 5000, pingTimeoutMs: 4000 });
  client.connect();
  assert.equal(client.rttMs, null);
  up();
  const ping1 = sockets[0].sentOf("ping");
  assert.equal(ping1.length, 1, "a first ping right after the welcome");
  assert.equal(ping1[0].id, undefined, "pings are not acked");
  clock.advance(37);
  sockets[0].receive({ type: "pong", t: ping1[0].t });
  assert.equal(client.rttMs, 37);
  clock.advance(4999);
  assert.equal(sockets[0].sentOf("ping").length, 1);
  clock.advance(1);
  const ping2 = sockets[0].sentOf("ping");
  assert.equal(ping2.length, 2, "the next ping after the interval");
  clock.advance(120);
  sockets[0].receive({ type: "pong", t: 12345 }); // not ours: ignored
  sockets[0].receive({ type: "pong", t: ping2[1].t });
  assert.equal(client.rttMs, 120);
  clock.advance(5000);
  assert.equal(sockets[0].sentOf("ping").length, 3);
  clock.advance(3999);
  assert.equal(client.state, "open");
  clock.advance(1); // no pong within pingTimeoutMs
  assert.equal(client.state, "reconnecting");
  assert.equal(sockets[0].closedWith, 4000, "the dead socket is closed");
  assert.equal(sockets.length, 1);
  clock.advance(500);
  assert.equal(sockets.length, 2, "reconnected without waiting for the close handshake");
  // Events on the abandoned socket are ignored.
  sockets[0].receive({ type: "chat", text: "ghost", seq: 99 });
  assert.notEqual(client.lastSeq, 99);
});

test("each terminal close code ends the session with its reason and no retry", async () => {
  for (const [code, reason] of Object.entries(TERMINAL_CLOSE_CODES)) {
    const { client, clock, sockets, up, log } = setup();
    client.connect();
    up();
    let queued;
    sockets[0].drop(Number(code));
    assert.equal(client.state, "closed", `code ${code}`);
    assert.equal(client.reason, reason);
    assert.deepEqual(log.state.at(-1), { state: "closed", reason });
    assert.deepEqual(clock.pending(), [], "nothing armed");
    clock.advance(60_000);
    assert.equal(sockets.length, 1, "no retry");
    client.send({ type: "chat", text: "x" }).then((v) => (queued = v));
    await flush();
    assert.equal(queued, false);
  }
  assert.deepEqual(
    Object.entries(TERMINAL_CLOSE_CODES).sort(),
    [["4001", "unauthorized"], ["4003", "forbidden"], ["4008", "replaced"], ["4009", "session_closed"], ["4010", "session_expired"]],
  );
});

test("4029 retries after the cap, with reason rate_limited meanwhile", () => {
  const { client, clock, sockets, up } = setup();
  client.connect();
  up();
  sockets[0].drop(4029);
  assert.equal(client.state, "reconnecting");
  assert.equal(client.reason, "rate_limited");
  assert.equal(retryDelay(clock), 5000);
  clock.advance(5000);
  assert.equal(sockets.length, 2);
  up();
  assert.equal(client.reason, null);
});

test("session.closed followed by any close ends the session", () => {
  for (const [reason, expected] of [["closed", "session_closed"], ["expired", "session_expired"]]) {
    const { client, clock, sockets, up, log } = setup();
    client.connect();
    up({ last_seq: 2 });
    sockets[0].receive({ type: "session.closed", reason, by: "agent", seq: 3 });
    assert.equal(log.events.at(-1).type, "session.closed");
    sockets[0].drop(1006); // the close frame got lost
    assert.equal(client.state, "closed");
    assert.equal(client.reason, expected);
    clock.advance(60_000);
    assert.equal(sockets.length, 1);
  }
});

test("a failed upgrade asks /api/v1/join: 410 ends the session with the problem's code", async () => {
  for (const code of ["session_closed", "session_expired"]) {
    const { client, clock, sockets, fetchCalls } = setup({ fetchAnswer: { status: 410, body: { code } } });
    client.connect();
    sockets[0].drop(1006); // never opened: in a browser a refused upgrade looks like this
    assert.equal(fetchCalls.length, 1);
    assert.equal(fetchCalls[0].url, "http://cl.test/api/v1/join");
    assert.equal(fetchCalls[0].init.headers.Authorization, "Bearer tok");
    await flush();
    assert.equal(client.state, "closed");
    assert.equal(client.reason, code);
    assert.deepEqual(clock.pending(), []);
    clock.advance(60_000);
    assert.equal(sockets.length, 1, "no retry");
  }
});

test("a failed upgrade with 401 from the probe ends the session as unauthorized", async () => {
  const { client, sockets, fetchCalls } = setup({ fetchAnswer: { status: 401, body: { code: "invalid_token" } } });
  client.connect();
  sockets[0].drop(1006);
  await flush();
  assert.equal(fetchCalls.length, 1);
  assert.equal(client.state, "closed");
  assert.equal(client.reason, "unauthorized");
});

test("a probe that fails or answers 200 / 5xx keeps the client retrying", async () => {
  for (const answer of [new TypeError("Failed to fetch"), { status: 200, body: { status: "active" } }, { status: 503, body: {} }]) {
    const { client, clock, sockets, fetchCalls } = setup({ fetchAnswer: answer });
    client.connect();
    for (let i = 0; i < 5; i++) {
      sockets.at(-1).drop(1006);
      await flush();
      assert.equal(client.state, "reconnecting");
      clock.advance(retryDelay(clock));
    }
    assert.equal(fetchCalls.length, 5);
    assert.equal(sockets.length, 6);
  }
});

test("an error without a close event counts as a failure", async () => {
  const { client, clock, sockets, fetchCalls } = setup({ fetchAnswer: { status: 410, body: { code: "session_expired" } } });
  client.connect();
  sockets[0].onerror({}); // some implementations fire no close after a refused upgrade
  assert.equal(client.state, "reconnecting");
  assert.equal(fetchCalls.length, 1);
  await flush();
  assert.equal(client.reason, "session_expired");
  // An error followed by a close (browsers) is handled once.
  const b = setup();
  b.client.connect();
  b.up();
  b.sockets[0].drop(1006);
  assert.equal(b.clock.pending().length, 1, "one retry armed");
  b.clock.advance(retryDelay(b.clock));
  assert.equal(b.sockets.length, 2);
  assert.equal(clock.pending().length, 0);
});

test("no probe when the socket had opened before it broke", async () => {
  const { client, sockets, fetchCalls, up } = setup({ fetchAnswer: { status: 410, body: { code: "session_closed" } } });
  client.connect();
  up();
  sockets[0].drop(1006);
  await flush();
  assert.equal(fetchCalls.length, 0);
  assert.equal(client.state, "reconnecting");
});

test("an attempt that never completes is abandoned after connectTimeoutMs", () => {
  const { client, clock, sockets } = setup({ connectTimeoutMs: 3000 });
  client.connect();
  clock.advance(2999);
  assert.equal(sockets.length, 1);
  clock.advance(1);
  assert.equal(sockets[0].closedWith, 4000);
  assert.equal(client.state, "reconnecting");
  clock.advance(500);
  assert.equal(sockets.length, 2);
});

test("close() ends it for good: socket closed with 1000, queued promises resolve false", async () => {
  const { client, clock, sockets, up, log } = setup();
  client.connect();
  up();
  sockets[0].drop(1006);
  const p = client.send({ type: "chat", text: "never" });
  client.close();
  assert.equal(client.state, "closed");
  assert.equal(client.reason, "client");
  assert.equal(await p, false);
  assert.deepEqual(clock.pending(), []);
  clock.advance(60_000);
  assert.equal(sockets.length, 1);
  assert.deepEqual(log.state.at(-1), { state: "closed", reason: "client" });

  const b = setup();
  b.client.connect();
  b.up();
  b.client.close();
  assert.equal(b.sockets[0].closedWith, 1000);
  b.client.connect();
  assert.equal(b.sockets.length, 1, "connect() after close() does nothing");
});

test("retryNow skips the wait", () => {
  const { client, clock, sockets, up } = setup({ random: () => 0 });
  client.connect();
  up();
  for (let i = 0; i < 5; i++) {
    sockets.at(-1).drop(1006);
    if (i < 4) clock.advance(retryDelay(clock));
  }
  assert.ok(retryDelay(clock) > 1000);
  client.retryNow();
  assert.equal(sockets.length, 6);
  assert.deepEqual(clock.pending().length, 1, "only the connect timeout armed");
});

test("a message over 64 KiB is refused locally", async () => {
  const { client, up, sockets } = setup();
  client.connect();
  up();
  await assert.rejects(client.send({ type: "chat", text: "长".repeat(30000) }), (e) => e instanceof SessionError && e.code === "too_big");
  assert.equal(sockets[0].sentOf("chat").length, 0);
});

test("a message with its own id keeps it", async () => {
  const { client, up, sockets } = setup();
  client.connect();
  up();
  const p = client.send({ type: "chat", text: "x", id: "mine" });
  assert.equal(sockets[0].sentOf("chat")[0].id, "mine");
  sockets[0].receive({ type: "ack", id: "mine" });
  assert.equal(await p, true);
});
