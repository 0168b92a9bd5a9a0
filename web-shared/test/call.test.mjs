import { test } from "node:test";
import assert from "node:assert/strict";
import { Call, videoScale, routeSignal, summarizeStats, newPcId, watchdogDelay, DEFAULT_MAX_BITRATE } from "../call.js";

// ---- pure parts ----

test("videoScale keeps the encoded video within 1280x720 in either orientation", () => {
  const cases = [
    [{ width: 1920, height: 1080 }, 1.5],
    [{ width: 1080, height: 1920 }, 1.5],
    [{ width: 1280, height: 720 }, 1],
    [{ width: 640, height: 480 }, 1],
    [{ width: 3840, height: 2160 }, 3],
    [{ width: 1920, height: 1440 }, 2], // 4:3: the short edge decides
    [{ width: 4032, height: 3024 }, 4.2],
    [{}, 1],
    [undefined, 1],
    [{ width: 0, height: 0 }, 1],
  ];
  for (const [s, want] of cases) assert.ok(Math.abs(videoScale(s) - want) < 1e-9, `${JSON.stringify(s)} -> ${videoScale(s)}`);
  for (const [w, h] of [[1920, 1080], [1080, 1920], [4032, 3024], [3024, 4032], [2560, 1920], [1600, 1200], [2000, 800]]) {
    const k = videoScale({ width: w, height: h });
    const [ow, oh] = [w / k, h / k];
    assert.ok(Math.max(ow, oh) <= 1280 + 1e-9 && Math.min(ow, oh) <= 720 + 1e-9, `${w}x${h} -> ${ow}x${oh}`);
    assert.ok(Math.max(ow, oh) >= 1280 - 1e-9 || Math.min(ow, oh) >= 720 - 1e-9, "not scaled further than needed");
  }
  assert.equal(videoScale({ width: 1280, height: 720 }, 640, 360), 2);
});

test("routeSignal: adopt, recreate on an offer from an unknown pc, ignore stale signals", () => {
  const offer = { type: "offer", sdp: "o" };
  const answer = { type: "answer", sdp: "a" };
  const cand = { candidate: "candidate:1", sdpMid: "0" };
  // No remote yet: a description is adopted, a candidate is not.
  assert.equal(routeSignal("L", null, { pc: "R1", description: offer }), "accept");
  assert.equal(routeSignal("L", null, { pc: "R1", description: answer, to: "L" }), "accept");
  assert.equal(routeSignal("L", null, { pc: "R1", candidate: cand }), "ignore");
  // The known remote.
  assert.equal(routeSignal("L", "R1", { pc: "R1", description: offer }), "accept");
  assert.equal(routeSignal("L", "R1", { pc: "R1", description: answer, to: "L" }), "accept");
  assert.equal(routeSignal("L", "R1", { pc: "R1", candidate: cand, to: "L" }), "accept");
  assert.equal(routeSignal("L", "R1", { pc: "R1", candidate: cand }), "accept");
  assert.equal(routeSignal("L", "R1", { pc: "R1", candidate: null }), "accept");
  // The peer reloaded: an offer from a pc we do not know.
  assert.equal(routeSignal("L", "R1", { pc: "R2", description: offer }), "recreate");
  // The peer started over and answers our offer.
  assert.equal(routeSignal("L", "R1", { pc: "R2", description: answer, to: "L" }), "accept");
  // Stale: from an old remote, or addressed to one of our old connections.
  assert.equal(routeSignal("L", "R1", { pc: "R0", description: answer }), "ignore");
  assert.equal(routeSignal("L", "R1", { pc: "R0", candidate: cand }), "ignore");
  assert.equal(routeSignal("L", "R1", { pc: "R2", description: offer, to: "OLD" }), "ignore");
  assert.equal(routeSignal("L", "R1", { pc: "R1", candidate: cand, to: "OLD" }), "ignore");
  assert.equal(routeSignal("L", null, { pc: "R1", description: offer, to: "OLD" }), "ignore");
  // Malformed.
  assert.equal(routeSignal("L", "R1", null), "ignore");
  assert.equal(routeSignal("L", "R1", { description: offer }), "ignore");
  assert.equal(routeSignal("L", "R1", { pc: "R1" }), "ignore");
});

test("summarizeStats: rtt from the selected pair, inbound video, bitrates from byte deltas", () => {
  const report = (inV, inA, out, rtt = 0.042) => [
    { id: "T", type: "transport", selectedCandidatePairId: "P2" },
    { id: "P1", type: "candidate-pair", nominated: true, state: "succeeded", currentRoundTripTime: 0.5 },
    { id: "P2", type: "candidate-pair", nominated: true, state: "succeeded", currentRoundTripTime: rtt },
    { id: "IV0", type: "inbound-rtp", kind: "video", bytesReceived: 0, frameWidth: 2, frameHeight: 2 },
    { id: "IV", type: "inbound-rtp", kind: "video", bytesReceived: inV, frameWidth: 1280, frameHeight: 720, framesPerSecond: 30 },
    { id: "IA", type: "inbound-rtp", kind: "audio", bytesReceived: inA },
    { id: "OA", type: "outbound-rtp", kind: "audio", bytesSent: out },
  ];
  const first = summarizeStats(report(100_000, 10_000, 5_000), null, 10_000);
  assert.deepEqual(first.stats, { rttMs: 42, width: 1280, height: 720, fps: 30, inKbps: null, outKbps: null });
  assert.deepEqual(first.sample, { t: 10_000, inBytes: 110_000, outBytes: 5_000 });
  // 2 s later: +250 000 bytes in = 1000 kbit/s; +4 000 bytes out = 16 kbit/s.
  const m = new Map(report(340_000, 20_000, 9_000).map((s) => [s.id, s]));
  const second = summarizeStats(m, first.sample, 12_000);
  assert.equal(second.stats.inKbps, 1000);
  assert.equal(second.stats.outKbps, 16);
  // Counters that went backwards (a new connection) give no rate.
  assert.equal(summarizeStats(report(1, 1, 1), second.sample, 13_000).stats.inKbps, null);
  // Firefox style: no transport stats, the pair is marked selected.
  const ff = summarizeStats([{ id: "p", type: "candidate-pair", selected: true, currentRoundTripTime: 0.1 }], null, 0);
  assert.deepEqual(ff.stats, { rttMs: 100, width: null, height: null, fps: null, inKbps: null, outKbps: null });
  assert.deepEqual(summarizeStats([], null, 0).stats, { rttMs: null, width: null, height: null, fps: null, inKbps: null, outKbps: null });
});

test("newPcId is random hex", () => {
  const a = newPcId();
  assert.match(a, /^[0-9a-f]{16}$/);
  assert.notEqual(a, newPcId());
});

// ---- the Call against a scripted RTCPeerConnection and session client ----

class FakeSender {
  constructor(track) {
    this.track = track;
    this.params = { encodings: [{ active: true }] };
    this.setCalls = [];
    this.replaced = [];
  }
  getParameters() {
    return structuredClone(this.params);
  }
  async setParameters(p) {
    this.params = p;
    this.setCalls.push(p);
  }
  async replaceTrack(t) {
    this.replaced.push(t);
    this.track = t;
  }
}

function makeFakePC() {
  const all = [];
  class FakePC {
    constructor(config) {
      this.config = config;
      this.signalingState = "stable";
      this.connectionState = "new";
      this.iceConnectionState = "new";
      this.senders = [];
      this.transceivers = [];
      this.localDescription = null;
      this.remoteDescription = null;
      this.remoteCalls = [];
      this.candidates = [];
      this.closed = false;
      this.restarts = 0;
      this.statsList = [];
      all.push(this);
    }
    getConfiguration() {
      return this.config;
    }
    setConfiguration(c) {
      this.config = c;
    }
    addTrack(track) {
      const s = new FakeSender(track);
      this.senders.push(s);
      this.transceivers.push({ kind: track.kind, direction: "sendrecv", sender: s });
      return s;
    }
    addTransceiver(kind, init) {
      this.transceivers.push({ kind, direction: init?.direction ?? "sendrecv" });
    }
    getSenders() {
      return this.senders;
    }
    async setLocalDescription() {
      if (this.signalingState === "have-remote-offer") {
        this.localDescription = { type: "answer", sdp: `answer-${all.indexOf(this)}` };
        this.signalingState = "stable";
      } else {
        this.localDescription = { type: "offer", sdp: `offer-${all.indexOf(this)}` };
        this.signalingState = "have-local-offer";
      }
    }
    async setRemoteDescription(d) {
      this.remoteCalls.push(d);
      this.remoteDescription = d;
      this.signalingState = d.type === "offer" ? "have-remote-offer" : "stable"; // implicit rollback
    }
    async addIceCandidate(c) {
      if (!this.remoteDescription) throw new Error("InvalidStateError");
      this.candidates.push(c);
    }
    restartIce() {
      this.restarts++;
    }
    close() {
      this.closed = true;
    }
    async getStats() {
      return this.statsList;
    }
    // driven by the test
    ice(state) {
      this.iceConnectionState = state;
      this.oniceconnectionstatechange?.();
    }
    conn(state) {
      this.connectionState = state;
      this.onconnectionstatechange?.();
    }
  }
  return { FakePC, all };
}

class FakeClient extends EventTarget {
  constructor() {
    super();
    this.welcome = null;
    this.sent = [];
  }
  send(msg, opts) {
    this.sent.push({ msg: structuredClone(msg), opts });
    return Promise.resolve(true);
  }
  doWelcome(w) {
    this.welcome = { type: "welcome", role: "agent", peer_present: false, ice_servers: [], resumed: false, ...w };
    this.dispatchEvent(new CustomEvent("welcome", { detail: this.welcome }));
  }
  doEvent(e) {
    this.dispatchEvent(new CustomEvent("event", { detail: e }));
  }
  signals() {
    return this.sent.filter((s) => s.msg.type === "signal");
  }
}

const tick = () => new Promise((r) => setImmediate(r));
const track = (kind, settings = {}) => ({ kind, readyState: "live", getSettings: () => settings });
const stream = (...tracks) => ({ getTracks: () => tracks });

function setup({ role = "agent", polite = role === "customer", ...opts } = {}) {
  const { FakePC, all } = makeFakePC();
  const client = new FakeClient();
  const timers = [];
  const call = new Call({
    client,
    polite,
    RTCPeerConnection: FakePC,
    setTimeout: (fn, ms) => timers.push({ fn, ms }) - 1,
    clearTimeout: (i) => timers[i] && (timers[i].cleared = true),
    ...opts,
  });
  const states = [];
  call.addEventListener("state", (e) => states.push(e.detail));
  // Runs the pending timers (those `which` picks: e.g. by delay).
  const runTimers = (which = () => true) =>
    timers.filter((t) => !t.cleared && !t.ran && which(t)).forEach((t) => ((t.ran = true), t.fn()));
  return { call, client, pcs: all, states, timers, runTimers, role };
}

test("the first welcome creates the connection with its ICE servers; the agent can receive video without sending it", () => {
  const { call, client, pcs } = setup({ receiveVideo: true });
  const mic = track("audio");
  call.setLocalStream(stream(mic));
  assert.equal(pcs.length, 0, "nothing before the welcome");
  const ice = [{ urls: ["stun:stun.example:3478"] }];
  client.doWelcome({ ice_servers: ice });
  assert.equal(pcs.length, 1);
  assert.deepEqual(pcs[0].config.iceServers, ice);
  assert.deepEqual(pcs[0].transceivers.map((t) => [t.kind, t.direction]), [["audio", "sendrecv"], ["video", "recvonly"]]);
  assert.equal(pcs[0].senders[0].track, mic);
  assert.equal(call.pc, pcs[0]);
});

test("receiveVideo/receiveAudio default to true on the impolite side only", () => {
  const agent = setup({ role: "agent" });
  agent.client.doWelcome({});
  assert.deepEqual(agent.pcs[0].transceivers.map((t) => [t.kind, t.direction]), [["audio", "recvonly"], ["video", "recvonly"]]);
  const customer = setup({ role: "customer" });
  customer.call.setLocalStream(stream(track("video", { width: 640, height: 480 }), track("audio")));
  customer.client.doWelcome({ role: "customer" });
  assert.deepEqual(customer.pcs[0].transceivers.map((t) => [t.kind, t.direction]), [["audio", "sendrecv"], ["video", "sendrecv"]]);
  const off = setup({ role: "agent", receiveVideo: false, receiveAudio: false });
  off.client.doWelcome({});
  assert.deepEqual(off.pcs[0].transceivers, []);
});

test("offers go out as signals with the pc id, never queued; the welcome's ICE servers are updated", async () => {
  const { call, client, pcs } = setup();
  client.doWelcome({ ice_servers: [] });
  pcs[0].conn("connected");
  pcs[0].onnegotiationneeded();
  await tick();
  const [s] = client.signals();
  assert.deepEqual(s.opts, { queue: false });
  assert.equal(s.msg.data.pc, call.pcId);
  assert.deepEqual(s.msg.data.description, { type: "offer", sdp: "offer-0" });
  assert.equal("to" in s.msg.data, false, "no remote known yet");
  const ice2 = [{ urls: ["turn:t.example"], username: "u", credential: "c" }];
  client.doWelcome({ ice_servers: ice2, peer_present: true, resumed: true });
  assert.equal(pcs.length, 1, "connected: a resume does not restart the call");
  assert.deepEqual(pcs[0].config.iceServers, ice2);
});

test("polite side: an offer during its own first offer wins, answered from a new connection (no rollback)", async () => {
  const { call, client, pcs } = setup({ role: "customer" });
  const mic = track("audio");
  call.setLocalStream(stream(mic));
  client.doWelcome({ role: "customer", peer_present: true });
  const firstId = call.pcId;
  pcs[0].onnegotiationneeded();
  await tick();
  assert.equal(pcs[0].signalingState, "have-local-offer");
  client.doEvent({ type: "signal", from: "agent", seq: 5, data: { pc: "A1", description: { type: "offer", sdp: "agent-offer" } } });
  client.doEvent({ type: "signal", from: "agent", seq: 6, data: { pc: "A1", candidate: { candidate: "c1" } } });
  await tick();
  // Nothing was ever negotiated on pcs[0]: rolling its offer back can break Chromium's ICE
  // gathering for good, so the offer is applied on a fresh connection instead.
  assert.equal(pcs.length, 2, "a new connection");
  assert.equal(pcs[0].closed, true);
  assert.deepEqual(pcs[0].remoteCalls, [], "no rollback on the old connection");
  assert.deepEqual(pcs[1].remoteCalls.map((d) => d.sdp), ["agent-offer"]);
  assert.deepEqual(pcs[1].candidates, [{ candidate: "c1" }]);
  assert.equal(pcs[1].senders[0].track, mic, "local tracks on the new connection");
  const answer = client.signals().at(-1).msg.data;
  assert.equal(answer.description.type, "answer");
  assert.equal(answer.to, "A1");
  assert.equal(answer.pc, call.pcId);
  assert.notEqual(answer.pc, firstId);
});

test("polite side: an offer during its own offer on a negotiated connection rolls it back (same connection)", async () => {
  const { call, client, pcs } = setup({ role: "customer" });
  client.doWelcome({ role: "customer", peer_present: true });
  client.doEvent({ type: "signal", from: "agent", data: { pc: "A1", description: { type: "offer", sdp: "o1" } } });
  await tick();
  pcs[0].conn("connected");
  const id = call.pcId;
  pcs[0].onnegotiationneeded(); // e.g. the camera was added
  await tick();
  assert.equal(pcs[0].signalingState, "have-local-offer");
  client.doEvent({ type: "signal", from: "agent", data: { pc: "A1", to: id, description: { type: "offer", sdp: "o2" } } });
  await tick();
  assert.equal(pcs.length, 1, "kept");
  assert.equal(call.pcId, id);
  assert.deepEqual(pcs[0].remoteCalls.map((d) => d.sdp), ["o1", "o2"]);
  const answer = client.signals().at(-1).msg.data;
  assert.deepEqual([answer.description.type, answer.pc, answer.to], ["answer", id, "A1"]);
});

test("polite side: an offer in the same tick as its own pending setLocalDescription still gets a new connection", async () => {
  const { client, pcs } = setup({ role: "customer" });
  client.doWelcome({ role: "customer", peer_present: true });
  pcs[0].onnegotiationneeded(); // makingOffer, setLocalDescription not settled yet
  client.doEvent({ type: "signal", from: "agent", data: { pc: "A1", description: { type: "offer", sdp: "o" } } });
  await tick();
  await tick();
  assert.equal(pcs.length, 2);
  assert.deepEqual(pcs[1].remoteCalls.map((d) => d.sdp), ["o"]);
  const offers = client.signals().filter((s) => s.msg.data.description?.type === "offer");
  assert.deepEqual(offers, [], "the replaced connection's offer is not sent after it was replaced");
});

test("impolite side: an offer during its own offer is ignored, and so are its candidates", async () => {
  const { client, pcs } = setup({ role: "agent" });
  const warn = console.warn;
  const warned = [];
  console.warn = (...a) => warned.push(a);
  try {
    client.doWelcome({ peer_present: true });
    pcs[0].onnegotiationneeded();
    await tick();
    client.doEvent({ type: "signal", from: "customer", data: { pc: "C1", description: { type: "offer", sdp: "cust-offer" } } });
    client.doEvent({ type: "signal", from: "customer", data: { pc: "C1", candidate: { candidate: "c" } } });
    await tick();
    assert.deepEqual(pcs[0].remoteCalls, [], "not applied");
    assert.equal(pcs[0].signalingState, "have-local-offer");
    assert.deepEqual(warned, [], "the failed candidate is expected");
    // The customer answers our offer instead.
    client.doEvent({ type: "signal", from: "customer", data: { pc: "C1", to: client.signals()[0].msg.data.pc, description: { type: "answer", sdp: "cust-answer" } } });
    await tick();
    assert.deepEqual(pcs[0].remoteCalls.map((d) => d.sdp), ["cust-answer"]);
    assert.equal(pcs[0].signalingState, "stable");
  } finally {
    console.warn = warn;
  }
});

test("impolite side: the connection of an ignored offer is not adopted; the answer may come from a new one", async () => {
  const { call, client, pcs } = setup({ role: "agent" });
  client.doWelcome({ peer_present: true });
  pcs[0].onnegotiationneeded();
  await tick();
  const me = call.pcId;
  client.doEvent({ type: "signal", data: { pc: "C1", description: { type: "offer", sdp: "c1-offer" } } });
  client.doEvent({ type: "signal", data: { pc: "C1", candidate: { candidate: "c1-cand" } } });
  await tick();
  // Our candidates gathered meanwhile are not addressed to C1 (the customer gives C1 up).
  pcs[0].onicecandidate({ candidate: { candidate: "a-cand" } });
  const cand = client.signals().at(-1).msg.data;
  assert.deepEqual(cand, { pc: me, candidate: { candidate: "a-cand" } });
  // The customer answers from a new connection C2, addressed to ours.
  client.doEvent({ type: "signal", data: { pc: "C2", to: me, description: { type: "answer", sdp: "c2-answer" } } });
  client.doEvent({ type: "signal", data: { pc: "C1", candidate: { candidate: "late-c1" } } });
  client.doEvent({ type: "signal", data: { pc: "C2", to: me, candidate: { candidate: "c2-cand" } } });
  await tick();
  assert.equal(pcs.length, 1);
  assert.deepEqual(pcs[0].remoteCalls.map((d) => d.sdp), ["c2-answer"]);
  assert.deepEqual(pcs[0].candidates, [{ candidate: "c2-cand" }]);
  pcs[0].onicecandidate({ candidate: { candidate: "a-cand-2" } });
  assert.equal(client.signals().at(-1).msg.data.to, "C2");
});

test("peer.joined or a welcome with peer_present starts over unless connected", () => {
  const { call, client, pcs } = setup();
  client.doWelcome({});
  const first = call.pcId;
  client.doEvent({ type: "peer.joined", role: "customer", seq: 1 });
  assert.equal(pcs.length, 2, "not connected: a new connection");
  assert.equal(pcs[0].closed, true);
  assert.notEqual(call.pcId, first);
  client.doEvent({ type: "peer.joined", role: "agent", seq: 2 });
  assert.equal(pcs.length, 2, "our own role's join is not the peer's");
  client.doWelcome({ peer_present: true, resumed: true });
  assert.equal(pcs.length, 3);
  client.doWelcome({ peer_present: false, resumed: true });
  assert.equal(pcs.length, 3, "no peer: nothing to renegotiate with");
  pcs[2].conn("connected");
  client.doEvent({ type: "peer.joined", role: "customer", seq: 3 });
  client.doWelcome({ peer_present: true, resumed: true });
  assert.equal(pcs.length, 3, "connected: kept");
  assert.equal(pcs[2].closed, false);
});

test("an offer from an unknown pc (the peer reloaded) recreates the connection and answers it", async () => {
  const { call, client, pcs } = setup({ role: "agent", receiveVideo: true });
  call.setLocalStream(stream(track("audio")));
  client.doWelcome({ peer_present: true });
  client.doEvent({ type: "signal", data: { pc: "C1", description: { type: "offer", sdp: "c1" } } });
  await tick();
  pcs[0].conn("connected");
  const oldId = call.pcId;
  client.doEvent({ type: "signal", data: { pc: "C2", description: { type: "offer", sdp: "c2" } } });
  await tick();
  assert.equal(pcs.length, 2);
  assert.equal(pcs[0].closed, true);
  assert.deepEqual(pcs[1].remoteCalls.map((d) => d.sdp), ["c2"]);
  assert.equal(pcs[1].senders[0].track.kind, "audio", "local tracks on the new connection");
  assert.deepEqual(pcs[1].transceivers.map((t) => t.direction), ["sendrecv", "recvonly"]);
  const answer = client.signals().at(-1).msg.data;
  assert.equal(answer.to, "C2");
  assert.notEqual(answer.pc, oldId);
  // Leftovers of the old connections are ignored.
  client.doEvent({ type: "signal", data: { pc: "C1", candidate: { candidate: "old" } } });
  client.doEvent({ type: "signal", data: { pc: "C2", to: oldId, candidate: { candidate: "to-old" } } });
  client.doEvent({ type: "signal", data: { pc: "C2", candidate: { candidate: "new" } } });
  await tick();
  assert.deepEqual(pcs[1].candidates, [{ candidate: "new" }]);
  assert.equal(pcs.length, 2);
});

test("ICE failed restarts ICE; a long disconnect too; repeated failures start over", () => {
  const { client, pcs, runTimers, timers, states } = setup({ disconnectedGraceMs: 4000 });
  client.doWelcome({ peer_present: true });
  const pc = pcs[0];
  const grace = (t) => t.ms === 4000; // not the watchdog
  pc.ice("disconnected");
  assert.equal(timers.at(-1).ms, 4000);
  pc.ice("connected"); // came back by itself
  runTimers(grace);
  assert.equal(pc.restarts, 0);
  pc.ice("disconnected");
  runTimers(grace);
  assert.equal(pc.restarts, 1, "still disconnected after the grace period");
  pc.ice("failed");
  assert.equal(pc.restarts, 2);
  pc.ice("failed");
  assert.equal(pcs.length, 2, "two restarts failed: a new connection");
  assert.ok(states.some((s) => s.iceConnectionState === "failed"));
  // Reaching connected resets the count.
  const pc2 = pcs[1];
  pc2.ice("failed");
  pc2.conn("connected");
  pc2.ice("failed");
  pc2.ice("failed");
  assert.equal(pc2.restarts, 3);
  assert.equal(pcs.length, 2);
});

test("DTLS failure over working ICE starts over", () => {
  const { client, pcs } = setup();
  client.doWelcome({ peer_present: true });
  pcs[0].iceConnectionState = "connected";
  pcs[0].conn("failed");
  assert.equal(pcs.length, 2);
});

test("setLocalStream replaces tracks on existing senders and caps the video", async () => {
  const { call, client, pcs } = setup({ role: "customer" });
  client.doWelcome({ role: "customer" });
  const cam1 = track("video", { width: 1920, height: 1080 });
  const mic1 = track("audio");
  call.setLocalStream(stream(cam1, mic1));
  await tick();
  const pc = pcs[0];
  assert.equal(pc.senders.length, 2);
  const video = pc.senders.find((s) => s.track.kind === "video");
  assert.equal(video.params.encodings[0].maxBitrate, DEFAULT_MAX_BITRATE);
  assert.equal(video.params.encodings[0].scaleResolutionDownBy, 1.5);
  const cam2 = track("video", { width: 4032, height: 3024 });
  call.setLocalStream(stream(cam2, mic1));
  await tick();
  await tick();
  assert.equal(pc.senders.length, 2, "no new sender");
  assert.deepEqual(video.replaced, [cam2]);
  assert.ok(Math.abs(video.params.encodings[0].scaleResolutionDownBy - 4.2) < 1e-9);
  const audio = pc.senders.find((s) => s.track?.kind === "audio");
  assert.equal(audio.replaced.length, 0, "same mic: untouched");
  const setCount = video.setCalls.length;
  pc.conn("connected");
  await tick();
  assert.equal(video.setCalls.length, setCount, "cap already applied: no setParameters again");
  call.setLocalStream(null);
  await tick();
  assert.deepEqual(video.replaced.at(-1), null);
});

test("the cap waits for the encodings when a browser exposes none before negotiation", async () => {
  const { call, client, pcs } = setup({ role: "customer" });
  client.doWelcome({ role: "customer" });
  const pc = pcs[0];
  const realAdd = pc.addTrack.bind(pc);
  pc.addTrack = (t, s) => {
    const sender = realAdd(t, s);
    sender.params = { encodings: [] };
    return sender;
  };
  call.setLocalStream(stream(track("video", { width: 1280, height: 960 })));
  await tick();
  const sender = pc.senders[0];
  assert.equal(sender.setCalls.length, 0);
  sender.params = { encodings: [{ active: true }] };
  pc.signalingState = "stable";
  pc.onsignalingstatechange();
  await tick();
  assert.equal(sender.params.encodings[0].maxBitrate, DEFAULT_MAX_BITRATE);
  assert.equal(sender.params.encodings[0].scaleResolutionDownBy, 960 / 720);
});

test("track and state events; stats computes rates between calls", async () => {
  let t = 0;
  const { call, client, pcs, states } = setup({ now: () => t });
  const tracks = [];
  call.addEventListener("track", (e) => tracks.push(e.detail));
  assert.deepEqual(await call.stats(), { rttMs: null, width: null, height: null, fps: null, inKbps: null, outKbps: null });
  client.doWelcome({});
  const pc = pcs[0];
  const remote = { kind: "video" };
  const remoteStream = { id: "s" };
  pc.ontrack({ track: remote, streams: [remoteStream] });
  assert.deepEqual(tracks, [{ track: remote, streams: [remoteStream] }]);
  pc.conn("connected");
  assert.deepEqual(states.at(-1), { connectionState: "connected", iceConnectionState: "new" });
  pc.statsList = [{ id: "i", type: "inbound-rtp", kind: "video", bytesReceived: 1000, frameWidth: 640, frameHeight: 360, framesPerSecond: 25 }];
  t = 1000;
  const a = await call.stats();
  assert.equal(a.inKbps, null);
  assert.equal(a.width, 640);
  pc.statsList = [{ id: "i", type: "inbound-rtp", kind: "video", bytesReceived: 126_000, frameWidth: 640, frameHeight: 360 }];
  t = 2000;
  assert.equal((await call.stats()).inKbps, 1000);
  pc.statsList = [{ id: "i", type: "inbound-rtp", kind: "video", bytesReceived: 126_100 }];
  t = 2010;
  assert.equal((await call.stats()).inKbps, 1000, "10 ms later: the last rate, not a noisy one");
  pc.statsList = [{ id: "i", type: "inbound-rtp", kind: "video", bytesReceived: 188_500 }];
  t = 3000;
  assert.equal((await call.stats()).inKbps, 500, "measured from the sample at 2000");
  // A new connection starts its rates afresh.
  call.restart();
  pcs[1].statsList = [{ id: "i", type: "inbound-rtp", kind: "video", bytesReceived: 500_000 }];
  t = 4000;
  assert.equal((await call.stats()).inKbps, null);
});

test("the call ends with the session", () => {
  const { call, client, pcs, states } = setup();
  client.doWelcome({});
  client.dispatchEvent(new CustomEvent("state", { detail: { state: "closed", reason: "session_closed" } }));
  assert.equal(pcs[0].closed, true);
  assert.equal(call.pc, null);
  assert.deepEqual(states.at(-1), { connectionState: "closed", iceConnectionState: "closed" });
  client.doEvent({ type: "peer.joined", role: "customer" });
  client.doWelcome({ peer_present: true });
  assert.equal(pcs.length, 1, "closed for good");
});

test("a Call made after the welcome starts right away", () => {
  const { FakePC, all } = makeFakePC();
  const client = new FakeClient();
  client.doWelcome({ ice_servers: [{ urls: "stun:x" }] });
  new Call({ client, polite: true, RTCPeerConnection: FakePC });
  assert.equal(all.length, 1);
  assert.deepEqual(all[0].config.iceServers, [{ urls: "stun:x" }]);
});

// ---- the watchdog ----

test("watchdogDelay: 1.5x per replacement, capped, +-10% jitter", () => {
  const mid = () => 0.5;
  assert.equal(watchdogDelay(0, { random: mid }), 10_000);
  assert.equal(watchdogDelay(1, { random: mid }), 15_000);
  assert.equal(watchdogDelay(2, { random: mid }), 22_500);
  assert.equal(watchdogDelay(3, { random: mid }), 30_000);
  assert.equal(watchdogDelay(50, { random: mid }), 30_000);
  assert.equal(watchdogDelay(0, { random: () => 0 }), 9_000);
  assert.equal(watchdogDelay(0, { random: () => 1 }), 11_000);
  assert.equal(watchdogDelay(0, { baseMs: 1000, maxMs: 2000, random: mid }), 1000);
  assert.equal(watchdogDelay(5, { baseMs: 1000, maxMs: 2000, random: mid }), 2000);
});

/** The pending watchdog timers (those armed with the watchdog's delays). */
const watchdogs = (timers) => timers.filter((t) => !t.cleared && !t.ran && t.ms >= 9_000);

test("watchdog: a connection not connected within ~10 s while the peer is present is replaced, with growing waits", async () => {
  const { call, client, pcs, timers, runTimers } = setup({ role: "agent", random: () => 0.5 });
  client.doWelcome({ peer_present: true });
  assert.deepEqual(watchdogs(timers).map((t) => t.ms), [10_000]);
  // Descriptions exchanged, but ICE never gets anywhere (the Chromium case: no candidate at all).
  pcs[0].onnegotiationneeded();
  await tick();
  client.doEvent({ type: "signal", data: { pc: "C1", to: call.pcId, description: { type: "answer", sdp: "a" } } });
  await tick();
  const first = call.pcId;
  runTimers((t) => t.ms >= 9_000);
  assert.equal(pcs.length, 2, "replaced");
  assert.equal(pcs[0].closed, true);
  assert.notEqual(call.pcId, first, "a fresh pc id, which the peer follows");
  assert.deepEqual(watchdogs(timers).map((t) => t.ms), [15_000], "the next wait is longer");
  runTimers((t) => t.ms >= 9_000);
  runTimers((t) => t.ms >= 9_000);
  runTimers((t) => t.ms >= 9_000);
  assert.equal(pcs.length, 5, "never gives up while the peer is there");
  assert.deepEqual(watchdogs(timers).map((t) => t.ms), [30_000], "capped");
  // Connected: disarmed, and the wait is back to the base.
  pcs[4].conn("connected");
  assert.deepEqual(watchdogs(timers), []);
  pcs[4].conn("disconnected"); // lost: ICE restarts get the watchdog's time to bring it back
  assert.deepEqual(watchdogs(timers).map((t) => t.ms), [10_000]);
  pcs[4].conn("connected");
  assert.deepEqual(watchdogs(timers), []);
  assert.equal(pcs.length, 5);
});

test("watchdog: nothing while the peer is away or our session is down; peer.joined re-arms it", () => {
  const { client, pcs, timers, runTimers } = setup({ role: "agent", random: () => 0.5 });
  client.doWelcome({ peer_present: false });
  assert.deepEqual(watchdogs(timers), [], "alone: nothing to connect to");
  client.doEvent({ type: "peer.joined", role: "customer" });
  assert.equal(pcs.length, 2);
  assert.equal(watchdogs(timers).length, 1);
  client.doEvent({ type: "peer.left", role: "customer", reason: "closed" });
  runTimers((t) => t.ms >= 9_000);
  assert.equal(pcs.length, 2, "the peer left meanwhile: no restart");
  client.doEvent({ type: "peer.joined", role: "customer" });
  assert.equal(pcs.length, 3);
  client.state = "reconnecting";
  runTimers((t) => t.ms >= 9_000);
  assert.equal(pcs.length, 3, "our session is down: the next welcome starts over");
  client.state = "open";
  client.doWelcome({ peer_present: true, resumed: true });
  assert.equal(pcs.length, 4);
  runTimers((t) => t.ms >= 9_000);
  assert.equal(pcs.length, 5);
});

test("watchdog: the polite side waits longer; a replaced or closed call leaves no timer behind", () => {
  const customer = setup({ role: "customer", random: () => 0.5 });
  customer.client.doWelcome({ role: "customer", peer_present: true });
  assert.deepEqual(watchdogs(customer.timers).map((t) => t.ms), [15_000]);
  const agent = setup({ role: "agent", random: () => 0.5, watchdogMs: 2000, watchdogMaxMs: 5000 });
  agent.client.doWelcome({ peer_present: true });
  assert.deepEqual(agent.timers.filter((t) => !t.cleared).map((t) => t.ms), [2000]);
  agent.call.restart();
  assert.deepEqual(agent.timers.filter((t) => !t.cleared).map((t) => t.ms), [2000], "one timer, for the new connection");
  agent.call.close();
  assert.deepEqual(agent.timers.filter((t) => !t.cleared), []);
  const off = setup({ role: "agent", watchdogMs: 0 });
  off.client.doWelcome({ peer_present: true });
  assert.deepEqual(off.timers, [], "watchdogMs: 0 turns it off");
});
