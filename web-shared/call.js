// The WebRTC call between the agent console and the customer page, signalled over the session
// connection (SessionClient). Perfect negotiation (https://w3c.github.io/webrtc-pc/#perfect-negotiation-example):
// the customer is polite, the agent impolite, so both may offer at any time without glare.
//
// Each RTCPeerConnection has a random id `pc`, sent in every signal; a signal may also carry `to`,
// the id of the peer connection it answers or continues. That is how a side tells a reloaded peer
// (an offer from an unknown `pc`: start over and answer it) from stale signals of a connection
// already replaced (ignored).

export const DEFAULT_MAX_BITRATE = 1_500_000; // bits/s for the outgoing video
export const DEFAULT_MAX_LONG_EDGE = 1280;
export const DEFAULT_MAX_SHORT_EDGE = 720;
export const DEFAULT_WATCHDOG_MS = 10_000; // not connected this long (peer present): a new connection
export const DEFAULT_WATCHDOG_MAX_MS = 30_000;

/**
 * How long the watchdog waits before replacing a connection that is not `connected`, after
 * `restarts` replacements that did not connect: baseMs x 1.5^restarts, at most maxMs, +-10% jitter.
 */
export function watchdogDelay(restarts, { baseMs = DEFAULT_WATCHDOG_MS, maxMs = DEFAULT_WATCHDOG_MAX_MS, random = Math.random } = {}) {
  const ms = Math.min(maxMs, baseMs * 1.5 ** Math.max(0, restarts));
  return Math.round(ms * (0.9 + 0.2 * random()));
}

/**
 * scaleResolutionDownBy that brings a track of `settings` ({width, height}) within
 * maxLong x maxShort in either orientation (a phone in portrait reports 720x1280). 1 when unknown.
 */
export function videoScale(settings, maxLong = DEFAULT_MAX_LONG_EDGE, maxShort = DEFAULT_MAX_SHORT_EDGE) {
  const w = Number(settings?.width);
  const h = Number(settings?.height);
  if (!(w > 0) || !(h > 0)) return 1;
  return Math.max(1, Math.max(w, h) / maxLong, Math.min(w, h) / maxShort);
}

/**
 * What to do with an incoming signal `data` ({pc, to?, description} or {pc, to?, candidate}),
 * given this side's peer connection id and the id of the remote one it talks to (null if none):
 * "accept" (process it; the caller adopts data.pc as the remote), "recreate" (an offer from a new
 * remote connection, e.g. after a reload: start over with a fresh connection, then accept it), or
 * "ignore" (meant for a connection that no longer exists).
 */
export function routeSignal(localPc, remotePc, data) {
  if (!data || typeof data !== "object" || typeof data.pc !== "string") return "ignore";
  if (data.to != null && data.to !== localPc) return "ignore"; // for one of our old connections
  const d = data.description;
  if (d && typeof d === "object") {
    if (remotePc == null || data.pc === remotePc) return "accept";
    if (d.type === "offer") return "recreate";
    // An answer from a connection we did not know, addressed to ours: the peer started over
    // and answered our offer.
    return data.to === localPc ? "accept" : "ignore";
  }
  if ("candidate" in data) return data.pc === remotePc ? "accept" : "ignore";
  return "ignore";
}

/**
 * Reduces a getStats() report (an RTCStatsReport or any iterable of stats) to
 * {rttMs, width, height, fps, inKbps, outKbps}; the bitrates come from the byte counters'
 * change since `prev` (the `sample` a previous call returned). Returns {stats, sample}.
 */
export function summarizeStats(report, prev, nowMs) {
  const list = typeof report?.values === "function" ? [...report.values()] : [...(report || [])];
  const byId = new Map(list.map((s) => [s.id, s]));
  let pair = null;
  for (const s of list) {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId) ?? pair;
  }
  pair ??= list.find((s) => s.type === "candidate-pair" && (s.selected || (s.nominated && s.state === "succeeded"))) ?? null;
  let video = null;
  let inBytes = 0;
  let outBytes = 0;
  for (const s of list) {
    if (s.type === "inbound-rtp") {
      inBytes += s.bytesReceived ?? 0;
      // The busiest inbound video stream (an unused recvonly transceiver also reports one).
      if ((s.kind ?? s.mediaType) === "video" && (!video || (s.bytesReceived ?? 0) > (video.bytesReceived ?? 0))) video = s;
    } else if (s.type === "outbound-rtp") {
      outBytes += s.bytesSent ?? 0;
    }
  }
  const kbps = (now, before) => {
    if (!prev || !(nowMs > prev.t) || now < before) return null;
    return Math.round(((now - before) * 8) / (nowMs - prev.t)); // bits per ms = kbit/s
  };
  const stats = {
    rttMs: typeof pair?.currentRoundTripTime === "number" ? Math.round(pair.currentRoundTripTime * 1000) : null,
    width: video?.frameWidth ?? null,
    height: video?.frameHeight ?? null,
    fps: typeof video?.framesPerSecond === "number" ? video.framesPerSecond : null,
    inKbps: kbps(inBytes, prev?.inBytes),
    outKbps: kbps(outBytes, prev?.outBytes),
  };
  return { stats, sample: { t: nowMs, inBytes, outBytes } };
}

/** A random id for a peer connection (getRandomValues works outside secure contexts too). */
export function newPcId() {
  const b = new Uint8Array(8);
  globalThis.crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

export class Call extends EventTarget {
  /**
   * opts: client (a SessionClient), polite (true for the customer), receiveVideo / receiveAudio
   * (offer to receive that kind even without sending it; default: true on the impolite side),
   * maxBitrate, maxLongEdge, maxShortEdge, disconnectedGraceMs (how long ICE may stay
   * `disconnected` before an ICE restart), watchdogMs / watchdogMaxMs (a connection not
   * `connected` this long while the peer is present is replaced; the wait grows up to the max),
   * RTCPeerConnection, setTimeout, clearTimeout, now, random.
   */
  constructor(opts = {}) {
    super();
    if (!opts.client) throw new TypeError("Call: client is required");
    this._client = opts.client;
    this._polite = !!opts.polite;
    // The agent (impolite) wants the customer's camera and voice whatever it sends itself.
    this._receiveVideo = opts.receiveVideo ?? !this._polite;
    this._receiveAudio = opts.receiveAudio ?? !this._polite;
    this._maxBitrate = opts.maxBitrate ?? DEFAULT_MAX_BITRATE;
    this._maxLong = opts.maxLongEdge ?? DEFAULT_MAX_LONG_EDGE;
    this._maxShort = opts.maxShortEdge ?? DEFAULT_MAX_SHORT_EDGE;
    this._graceMs = opts.disconnectedGraceMs ?? 4000;
    this._PC = opts.RTCPeerConnection ?? globalThis.RTCPeerConnection;
    this._setTimeout = opts.setTimeout ?? ((f, ms) => globalThis.setTimeout(f, ms));
    this._clearTimeout = opts.clearTimeout ?? ((h) => globalThis.clearTimeout(h));
    this._now = opts.now ?? (() => Date.now());
    this._random = opts.random ?? Math.random;
    this._watchdogMs = opts.watchdogMs ?? DEFAULT_WATCHDOG_MS;
    this._watchdogMaxMs = Math.max(this._watchdogMs, opts.watchdogMaxMs ?? DEFAULT_WATCHDOG_MAX_MS);

    this._pc = null;
    this._pcId = null;
    this._remotePcId = null;
    this._senders = { audio: null, video: null };
    this._iceServers = [];
    this._localStream = null;
    this._makingOffer = false;
    this._ignoreOffer = false;
    this._answerPending = false;
    this._negotiated = false; // a remote description was applied on this connection
    this._iceRestarts = 0; // since the last `connected`
    this._disconnectTimer = null;
    this._peerPresent = false;
    this._watchdogTimer = null;
    this._watchdogRestarts = 0; // connections the watchdog replaced since the last `connected`
    this._lastErrorRestart = -Infinity;
    this._sample = null; // the byte counters of the last stats() call, for the rates
    this._rates = { inKbps: null, outKbps: null };
    this._closed = false;

    this._onClientWelcome = (e) => this._onWelcome(e.detail);
    this._onClientEvent = (e) => this._onEvent(e.detail);
    this._onClientState = (e) => {
      if (e.detail.state === "closed") this.close();
    };
    this._client.addEventListener("welcome", this._onClientWelcome);
    this._client.addEventListener("event", this._onClientEvent);
    this._client.addEventListener("state", this._onClientState);
    if (this._client.welcome) this._onWelcome(this._client.welcome);
  }

  /** The current RTCPeerConnection (replaced when the call starts over), or null. */
  get pc() {
    return this._pc;
  }

  get pcId() {
    return this._pcId;
  }

  /** Sends the tracks of `stream` (or stops sending with null); existing senders get replaceTrack. */
  setLocalStream(stream) {
    this._localStream = stream || null;
    if (this._pc) this._attachLocal(this._pc);
  }

  /** Starts over with a new RTCPeerConnection (the peer follows when it sees the new `pc`). */
  restart() {
    if (!this._closed && this._client.welcome) this._startOver();
  }

  async stats() {
    const empty = { rttMs: null, width: null, height: null, fps: null, inKbps: null, outKbps: null };
    const pc = this._pc;
    if (!pc) return empty;
    let report;
    try {
      report = await pc.getStats();
    } catch {
      return empty;
    }
    const prev = this._sample?.pcId === this._pcId ? this._sample : null;
    const now = this._now();
    const { stats, sample } = summarizeStats(report, prev, now);
    if (prev && now - prev.t < 500) {
      // Too soon for a meaningful byte delta: repeat the last rates, keep the older sample.
      stats.inKbps = this._rates.inKbps;
      stats.outKbps = this._rates.outKbps;
    } else if (pc === this._pc) {
      this._sample = { ...sample, pcId: this._pcId };
      this._rates = { inKbps: stats.inKbps, outKbps: stats.outKbps };
    }
    return stats;
  }

  close() {
    if (this._closed) return;
    this._closed = true;
    this._client.removeEventListener("welcome", this._onClientWelcome);
    this._client.removeEventListener("event", this._onClientEvent);
    this._client.removeEventListener("state", this._onClientState);
    this._teardown();
    this._emit("state", { connectionState: "closed", iceConnectionState: "closed" });
  }

  // ---- session events ----

  _onWelcome(w) {
    if (this._closed) return;
    this._iceServers = Array.isArray(w.ice_servers) ? w.ice_servers : [];
    this._peerPresent = !!w.peer_present;
    if (!this._pc) {
      this._startOver();
      return;
    }
    try {
      this._pc.setConfiguration({ ...this._pc.getConfiguration(), iceServers: this._iceServers });
    } catch {
      /* applied by the next connection */
    }
    // Signals are not replayed: whatever was in flight while we were away is lost.
    if (w.peer_present && !this._connected()) this._startOver();
  }

  _onEvent(m) {
    if (this._closed || !m) return;
    if (m.type === "signal") {
      this._onSignal(m.data);
    } else if (m.type === "peer.joined" && m.role !== this._client.welcome?.role) {
      this._peerPresent = true;
      if (!this._connected()) this._startOver();
    } else if (m.type === "peer.left" && m.role !== this._client.welcome?.role) {
      this._peerPresent = false;
    }
  }

  _connected() {
    return this._pc?.connectionState === "connected";
  }

  // ---- the peer connection ----

  _startOver() {
    this._teardown();
    const pc = new this._PC({ iceServers: this._iceServers });
    this._pc = pc;
    this._pcId = newPcId();
    this._remotePcId = null;
    this._senders = { audio: null, video: null };
    this._makingOffer = this._ignoreOffer = this._answerPending = this._negotiated = false;
    this._iceRestarts = 0;
    this._sample = null;

    pc.onnegotiationneeded = () => this._negotiate(pc);
    pc.onicecandidate = (e) => {
      if (this._pc === pc && e.candidate) {
        const c = typeof e.candidate.toJSON === "function" ? e.candidate.toJSON() : e.candidate;
        this._signal({ candidate: c });
      }
    };
    pc.ontrack = (e) => {
      if (this._pc !== pc) return;
      const streams = e.streams && e.streams.length ? [...e.streams] : [new MediaStream([e.track])];
      this._emit("track", { track: e.track, streams });
    };
    pc.oniceconnectionstatechange = () => this._onIceState(pc);
    pc.onconnectionstatechange = () => this._onConnectionState(pc);
    pc.onsignalingstatechange = () => {
      // Some browsers only expose the encodings once negotiated: apply the cap (again) then.
      if (this._pc === pc && pc.signalingState === "stable") this._capAllVideo(pc);
    };

    this._attachLocal(pc);
    if (this._receiveAudio && !this._senders.audio) pc.addTransceiver("audio", { direction: "recvonly" });
    if (this._receiveVideo && !this._senders.video) pc.addTransceiver("video", { direction: "recvonly" });
    this._armWatchdog(pc);
    this._emitState(pc);
  }

  _teardown() {
    this._clearDisconnectTimer();
    this._clearWatchdog();
    const pc = this._pc;
    this._pc = null;
    if (!pc) return;
    pc.onnegotiationneeded = pc.onicecandidate = pc.ontrack = null;
    pc.oniceconnectionstatechange = pc.onconnectionstatechange = pc.onsignalingstatechange = null;
    try {
      pc.close();
    } catch {
      /* already closed */
    }
  }

  _attachLocal(pc) {
    const stream = this._localStream;
    for (const kind of ["audio", "video"]) {
      const track = stream?.getTracks().find((t) => t.kind === kind && t.readyState !== "ended") ?? null;
      const sender = this._senders[kind];
      if (track && sender) {
        if (sender.track !== track) {
          sender.replaceTrack(track).then(
            () => kind === "video" && this._capVideo(sender),
            (err) => this._warn("replaceTrack failed", err),
          );
        }
      } else if (track) {
        // addTrack, not addTransceiver: its transceiver can be matched to the m-line of an offer
        // from the peer, so a glare resolved in the peer's favour needs no second round.
        this._senders[kind] = pc.addTrack(track, stream);
        if (kind === "video") this._capVideo(this._senders[kind]);
      } else if (sender?.track) {
        sender.replaceTrack(null).catch(() => {});
      }
    }
  }

  _capAllVideo(pc) {
    for (const s of pc.getSenders()) if (s.track?.kind === "video") this._capVideo(s);
  }

  /**
   * The outgoing video cap: a bitrate ceiling, and scaleResolutionDownBy from the track's
   * settings so that at most 1280x720 is encoded. The camera track itself stays at full
   * resolution, which the customer page needs for its still.
   */
  async _capVideo(sender) {
    const track = sender?.track;
    if (!track || track.kind !== "video" || typeof sender.getParameters !== "function") return;
    const params = sender.getParameters();
    if (!params.encodings || params.encodings.length === 0) return; // not negotiated yet
    const scale = videoScale(track.getSettings?.() ?? {}, this._maxLong, this._maxShort);
    let changed = false;
    for (const enc of params.encodings) {
      if (enc.maxBitrate !== this._maxBitrate) {
        enc.maxBitrate = this._maxBitrate;
        changed = true;
      }
      if (Math.abs((enc.scaleResolutionDownBy ?? 1) - scale) > 1e-6) {
        enc.scaleResolutionDownBy = scale;
        changed = true;
      }
    }
    if (!changed) return;
    try {
      await sender.setParameters(params);
    } catch (err) {
      this._warn("setParameters failed", err);
    }
  }

  async _negotiate(pc) {
    if (this._pc !== pc) return;
    try {
      this._makingOffer = true;
      await pc.setLocalDescription();
      if (this._pc === pc) this._signal({ description: desc(pc.localDescription) });
    } catch (err) {
      if (this._pc === pc) this._warn("offer failed", err); // else: closed under it, replaced
    } finally {
      if (this._pc === pc) this._makingOffer = false;
    }
  }

  _onSignal(data) {
    let route = routeSignal(this._pcId, this._remotePcId, data);
    if (route === "ignore") return;
    const d = data.description;
    if (route === "accept" && d?.type === "offer" && this._pc && this._offerCollides(this._pc)) {
      if (!this._polite) {
        // Glare, and we are the impolite side: the offer is ignored, and so is its connection. Its
        // sender gives it up and answers ours, maybe from a new connection (below), so its id must
        // not become our `to`, nor its candidates be added.
        this._ignoreOffer = true;
        return;
      }
      // Glare on the polite side. Perfect negotiation rolls our offer back; but when nothing was
      // ever negotiated on this connection, that rollback undoes the creation of its ICE transport,
      // and Chromium then sometimes never gathers a candidate again (no candidate, no state change,
      // a silent call; restartIce() does not cure it). Nothing to keep: answer on a new connection.
      if (!this._negotiated) route = "recreate";
    }
    if (route === "recreate") this._startOver();
    this._remotePcId = data.pc;
    const pc = this._pc;
    if (d) this._onDescription(pc, d);
    else this._onCandidate(pc, data.candidate);
  }

  /** Whether an offer arriving now collides with our own negotiation (glare). */
  _offerCollides(pc) {
    return this._makingOffer || !(pc.signalingState === "stable" || this._answerPending);
  }

  async _onDescription(pc, d) {
    try {
      const collision = d.type === "offer" && this._offerCollides(pc);
      this._ignoreOffer = !this._polite && collision;
      if (this._ignoreOffer) return;
      this._answerPending = d.type === "answer";
      await pc.setRemoteDescription(d); // on the polite side this rolls back our own offer
      this._answerPending = false;
      if (this._pc === pc) this._negotiated = true;
      if (d.type === "offer") {
        await pc.setLocalDescription();
        if (this._pc === pc) this._signal({ description: desc(pc.localDescription) });
      }
    } catch (err) {
      if (this._pc !== pc) return;
      this._answerPending = false;
      this._warn(`applying the remote ${d?.type} failed`, err);
      // A description that cannot be applied leaves the negotiation stuck: start over, which the
      // peer follows. At most every few seconds, so two confused sides cannot spin.
      if (this._now() - this._lastErrorRestart > 3000) {
        this._lastErrorRestart = this._now();
        this._startOver();
      }
    }
  }

  async _onCandidate(pc, candidate) {
    try {
      await pc.addIceCandidate(candidate ?? undefined);
    } catch (err) {
      // Candidates of an offer we ignored (impolite side, glare) are expected to fail.
      if (!this._ignoreOffer && this._pc === pc) this._warn("addIceCandidate failed", err);
    }
  }

  _signal(payload) {
    const data = { pc: this._pcId, ...payload };
    if (this._remotePcId) data.to = this._remotePcId;
    // Never queued: a stale offer or candidate delivered after a reconnect does more harm than
    // good; the welcome / peer.joined handling starts the negotiation over instead.
    this._client.send({ type: "signal", data }, { queue: false }).catch(() => {
      /* peer_absent and the like: renegotiated on peer.joined */
    });
  }

  // ---- recovery ----

  _onIceState(pc) {
    if (this._pc !== pc) return;
    const s = pc.iceConnectionState;
    if (s === "failed") {
      this._clearDisconnectTimer();
      this._recover(pc);
    } else if (s === "disconnected") {
      // Often transient (a network switch); restart only if it lasts.
      if (this._disconnectTimer == null) {
        this._disconnectTimer = this._setTimeout(() => {
          this._disconnectTimer = null;
          if (this._pc === pc && pc.iceConnectionState === "disconnected") this._recover(pc);
        }, this._graceMs);
      }
    } else {
      this._clearDisconnectTimer();
    }
    this._emitState(pc);
  }

  _onConnectionState(pc) {
    if (this._pc !== pc) return;
    if (pc.connectionState === "connected") {
      this._iceRestarts = 0;
      this._watchdogRestarts = 0;
      this._clearWatchdog();
      this._capAllVideo(pc);
    } else if (pc.connectionState === "failed" && pc.iceConnectionState !== "failed") {
      this._startOver(); // DTLS failed over a working ICE path: an ICE restart would not help
      return;
    } else {
      this._armWatchdog(pc); // lost (or not yet there): ICE restarts get this long to bring it back
    }
    this._emitState(pc);
  }

  /**
   * The safety net: a connection that is not `connected` within the watchdog's time while the peer
   * is present is replaced by a new one (a fresh `pc` id, which the peer follows). Whatever kept
   * it from connecting (a lost signal, a browser bug), a new connection starts from a clean slate.
   * The wait grows with each replacement (x1.5, up to watchdogMaxMs) and is reset by `connected`;
   * it never gives up. The polite side waits longer, so that normally the impolite side starts
   * over and the polite one follows, rather than both at once.
   */
  _armWatchdog(pc) {
    if (this._watchdogTimer != null || this._closed || this._pc !== pc || !this._peerPresent) return;
    if (!(this._watchdogMs > 0) || !Number.isFinite(this._watchdogMs)) return;
    const ms = watchdogDelay(this._watchdogRestarts, {
      baseMs: this._watchdogMs * (this._polite ? 1.5 : 1),
      maxMs: this._watchdogMaxMs * (this._polite ? 1.5 : 1),
      random: this._random,
    });
    this._watchdogTimer = this._setTimeout(() => {
      this._watchdogTimer = null;
      this._onWatchdog(pc);
    }, ms);
  }

  _onWatchdog(pc) {
    if (this._closed || this._pc !== pc || this._connected()) return;
    // The peer away: its return (peer.joined) starts over. Our own connection down: the next
    // welcome does (signals cannot go out meanwhile).
    if (!this._peerPresent) return;
    if (this._client.state != null && this._client.state !== "open") return;
    this._watchdogRestarts++;
    globalThis.console?.info?.(
      `call: not connected after the watchdog's wait (${pc.connectionState}/${pc.iceConnectionState}); starting over (#${this._watchdogRestarts})`,
    );
    this._startOver();
  }

  _clearWatchdog() {
    if (this._watchdogTimer != null) {
      this._clearTimeout(this._watchdogTimer);
      this._watchdogTimer = null;
    }
  }

  /** ICE restart first; when restarts keep failing, a new connection. */
  _recover(pc) {
    if (this._iceRestarts < 2 && typeof pc.restartIce === "function") {
      this._iceRestarts++;
      pc.restartIce();
    } else {
      this._startOver();
    }
  }

  _clearDisconnectTimer() {
    if (this._disconnectTimer != null) {
      this._clearTimeout(this._disconnectTimer);
      this._disconnectTimer = null;
    }
  }

  _emitState(pc) {
    this._emit("state", { connectionState: pc.connectionState, iceConnectionState: pc.iceConnectionState });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _warn(what, err) {
    globalThis.console?.warn?.(`call: ${what}`, err);
  }
}

function desc(d) {
  return { type: d.type, sdp: d.sdp };
}
