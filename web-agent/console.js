// The session console (`agent_url`): the customer's live video, guidance (target box, hints, text),
// capture requests with the frame-grab fallback, the checklist and the gallery.
//
// State rules: every `welcome` replaces the captures and the checklist; sequenced events are then
// applied in order (the SessionClient drops duplicates by seq, we also dedupe captures by id).
// Pending capture tiles are local: they survive reconnects and are resolved exactly once.

import { SessionClient, wsUrl } from "/shared/session.js";
import { Call } from "/shared/call.js";
import { pickLocale, label, AREAS, ANGLES, HINTS } from "/shared/i18n.js";
import { $, h, t, api, uuid, toast, confirmDialog, errorText, setLocale, locale, onLocaleChange, ApiError } from "./util.js";

const CAPTURE_TIMEOUT_MS = 8000;
const JPEG_QUALITY = 0.92;
const HINT_IDS = HINTS && HINTS.length ? HINTS
  : ["closer", "farther", "left", "right", "up", "down", "hold_steady", "more_light", "less_glare"];
const HINT_GLYPHS = {
  closer: "⊕", farther: "⊖", left: "←", right: "→", up: "↑", down: "↓",
  hold_steady: "◎", more_light: "☀", less_glare: "◐",
};
const MIN_BOX = 0.02; // a drag smaller than this (fraction of the frame) is a click, not a box

const S = {
  token: null,
  sessionId: null,
  client: null,
  call: null,
  welcomed: false,
  session: null,
  peerPresent: false,
  callState: null,
  captures: new Map(), // id -> capture
  checklist: [],
  pending: new Map(), // request_id -> pending tile state
  selectedSlot: null,
  pendingAddSelect: null, // {area, angle} of a slot just added: select it when it shows up
  guide: { box: null, hint: null, text: null },
  caps: null, // device.capabilities of the customer
  torchOn: false,
  ended: null, // {kind: "closed"|"expired"|"replaced"|"unauthorized"}
  micStream: null,
  micOk: null,
  userMuted: false,
  localeChosen: false,
  remoteStream: null,
  statsTimer: null,
};

const els = {};

export function startConsole({ token, sessionId }) {
  S.token = token;
  S.sessionId = sessionId;
  setLocale(pickLocale(null, navigator.languages));
  $("#console").hidden = false;
  for (const id of ["remote-video", "stage", "overlay", "guide-box", "draft-box", "stage-empty", "stage-empty-text",
    "area-select", "angle-select", "slot-line", "capture-button", "add-slot", "checklist", "capture-list",
    "gallery-empty", "gallery-count", "checklist-progress", "progress-bar", "conn-status", "peer-status",
    "hints", "guide-text", "unmute", "mic-state", "torch", "zoom", "zoom-wrap", "zoom-out", "photo-res",
    "lightbox", "lightbox-img", "lightbox-caption", "lightbox-open", "flash", "draw-tip"]) {
    els[id.replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = document.getElementById(id);
  }

  buildVocabSelects();
  buildHints();
  wireControls();
  wireOverlay();
  wireVideo();
  wireKeyboard();
  onLocaleChange(renderAll);
  renderAll();

  // Drop the token from the address bar's history entry? No: a reload must rejoin. Keep it.
  S.client = new SessionClient({ url: wsUrl(location, token), token });
  S.client.addEventListener("state", (e) => onState(e.detail));
  S.client.addEventListener("welcome", (e) => onWelcome(e.detail));
  S.client.addEventListener("event", (e) => onEvent(e.detail));
  S.client.addEventListener("error", (e) => {
    const d = e.detail || {};
    if (d.ref === undefined || d.ref === null) console.warn("server error", d);
  });

  S.call = new Call({ client: S.client, polite: false });
  S.call.addEventListener("track", (e) => onTrack(e.detail));
  S.call.addEventListener("state", (e) => {
    S.callState = e.detail?.connectionState || null;
    renderQualityCall();
  });

  S.client.connect();
  startMic();
  S.statsTimer = setInterval(updateStats, 1000);
}

// ---- connection -------------------------------------------------------------------------------------

function onState({ state, reason }) {
  renderConn();
  if (state !== "closed") return;
  if (reason === "session_closed") endSession("closed");
  else if (reason === "session_expired") endSession("expired");
  else if (reason === "replaced") endSession("replaced");
  else if (reason === "unauthorized" || reason === "forbidden") endSession("unauthorized");
}

function onWelcome(w) {
  S.welcomed = true;
  S.session = w.session || S.session;
  if (!S.sessionId && S.session?.id) S.sessionId = S.session.id;
  if (!S.localeChosen && S.session) {
    S.localeChosen = true;
    const loc = pickLocale(S.session.locale, navigator.languages);
    if (loc !== locale()) setLocale(loc);
  }
  setPeer(!!w.peer_present);
  // The customer keeps its overlay across our own reconnects (and a replay brings any peer.joined
  // we missed); only a welcome that replays nothing may hide that the customer reloaded meanwhile.
  if (w.peer_present && w.resumed === false) resendGuide();
  S.captures = new Map();
  for (const c of w.captures || []) S.captures.set(c.id, c);
  for (const c of w.captures || []) if (c.request_id) resolvePending(c.request_id);
  setChecklist(w.checklist || [], { fromWelcome: true });
  if (S.session?.status === "closed" || S.session?.status === "expired") {
    endSession(S.session.status);
  }
  renderHeader();
  renderGallery();
  renderControls();
}

function onEvent(ev) {
  switch (ev.type) {
    case "capture.created":
      addCapture(ev.capture);
      break;
    case "checklist.updated":
      setChecklist(ev.checklist || []);
      break;
    case "peer.joined":
      if (ev.role === "customer") {
        setPeer(true);
        // A (re)joining customer page starts with no guide (the welcome does not carry it): send
        // the one this console shows as current, so that both screens agree.
        resendGuide();
      }
      break;
    case "peer.left":
      if (ev.role === "customer") {
        setPeer(false);
        S.caps = null;
        renderCaps();
      }
      break;
    case "capture.failed": {
      const p = S.pending.get(ev.request_id);
      if (p) startFallback(p, "failed", ev.message || ev.code);
      break;
    }
    case "device.capabilities":
      S.caps = ev;
      renderCaps();
      break;
    case "chat":
      if (ev.from === "customer" && ev.text) toast(`${t("chat_title")}: ${ev.text}`, "info", 8000);
      break;
    case "session.closed":
      endSession(ev.reason === "expired" ? "expired" : "closed");
      break;
    default:
      break;
  }
}

function setPeer(present) {
  S.peerPresent = present;
  renderPeer();
  renderStage();
}

// ---- media ------------------------------------------------------------------------------------------

async function startMic() {
  if (!navigator.mediaDevices?.getUserMedia) {
    S.micOk = false;
    renderMic();
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      video: false,
    });
    if (S.ended) {
      for (const tr of stream.getTracks()) tr.stop();
      return;
    }
    S.micStream = stream;
    S.micOk = true;
    S.call.setLocalStream(stream);
  } catch (e) {
    // No microphone, or refused: the call still works, receive-only.
    S.micOk = false;
  }
  renderMic();
}

function onTrack(d) {
  const video = els.remoteVideo;
  let stream = d?.streams?.[0];
  if (!stream) {
    if (!S.remoteStream) S.remoteStream = new MediaStream();
    stream = S.remoteStream;
    if (d?.track && !stream.getTracks().includes(d.track)) stream.addTrack(d.track);
  }
  if (video.srcObject !== stream) video.srcObject = stream;
  video.play().catch(() => {});
  if (d?.track) {
    d.track.addEventListener("unmute", renderStage);
    d.track.addEventListener("ended", renderStage);
  }
  renderStage();
}

function wireVideo() {
  const v = els.remoteVideo;
  for (const ev of ["loadedmetadata", "resize", "playing", "emptied", "loadeddata"]) {
    v.addEventListener(ev, () => {
      layoutOverlay();
      renderStage();
    });
  }
  new ResizeObserver(layoutOverlay).observe(els.stage);
  els.unmute.addEventListener("click", (e) => {
    e.stopPropagation();
    setMuted(!v.muted);
    S.userMuted = v.muted;
  });
  // Autoplay policy: the video starts muted; the agent's first gesture on the page turns the sound on.
  const firstGesture = () => {
    if (!S.userMuted && v.muted) setMuted(false);
    document.removeEventListener("pointerdown", firstGesture, true);
    document.removeEventListener("keydown", firstGesture, true);
  };
  document.addEventListener("pointerdown", firstGesture, true);
  document.addEventListener("keydown", firstGesture, true);
}

function setMuted(m) {
  const v = els.remoteVideo;
  v.muted = m;
  if (!m) v.play().catch(() => {});
  renderMute();
}

const hasVideo = () => {
  const v = els.remoteVideo;
  return !!v.srcObject && v.videoWidth > 0 && v.readyState >= 2;
};

// ---- guide overlay ------------------------------------------------------------------------------

/** The rectangle the video's picture occupies inside the element (object-fit: contain letterboxing). */
function contentRect() {
  const v = els.remoteVideo;
  const cw = v.clientWidth;
  const ch = v.clientHeight;
  const vw = v.videoWidth;
  const vh = v.videoHeight;
  if (!vw || !vh || !cw || !ch) return null;
  const scale = Math.min(cw / vw, ch / vh);
  const w = vw * scale;
  const hh = vh * scale;
  return { x: v.offsetLeft + (cw - w) / 2, y: v.offsetTop + (ch - hh) / 2, w, h: hh };
}

function layoutOverlay() {
  const r = contentRect();
  const o = els.overlay;
  if (!r || S.ended) {
    o.hidden = true;
    return;
  }
  o.hidden = false;
  o.style.left = `${r.x}px`;
  o.style.top = `${r.y}px`;
  o.style.width = `${r.w}px`;
  o.style.height = `${r.h}px`;
}

function wireOverlay() {
  const o = els.overlay;
  let start = null;
  const frac = (e) => {
    const r = o.getBoundingClientRect();
    return {
      x: Math.min(1, Math.max(0, (e.clientX - r.left) / r.width)),
      y: Math.min(1, Math.max(0, (e.clientY - r.top) / r.height)),
    };
  };
  const boxFrom = (a, b) => {
    const x = Math.min(a.x, b.x);
    const y = Math.min(a.y, b.y);
    return { x, y, w: Math.abs(a.x - b.x), h: Math.abs(a.y - b.y) };
  };
  o.addEventListener("pointerdown", (e) => {
    if (e.button !== 0 || S.ended) return;
    e.preventDefault();
    o.setPointerCapture(e.pointerId);
    start = frac(e);
    placeBox(els.draftBox, { ...start, w: 0, h: 0 });
    els.draftBox.hidden = false;
  });
  o.addEventListener("pointermove", (e) => {
    if (!start) return;
    placeBox(els.draftBox, boxFrom(start, frac(e)));
  });
  const finish = (e, cancelled) => {
    if (!start) return;
    const box = boxFrom(start, frac(e));
    start = null;
    els.draftBox.hidden = true;
    if (cancelled || box.w < MIN_BOX || box.h < MIN_BOX) return;
    S.guide.box = roundBox(box);
    renderGuide();
    sendGuide();
  };
  o.addEventListener("pointerup", (e) => finish(e, false));
  o.addEventListener("pointercancel", (e) => finish(e, true));
}

/** Rounded to 4 decimals and kept inside the frame (the server refuses a box that leaves it). */
function roundBox(b) {
  const r = (v) => Math.round(v * 10000) / 10000;
  const x = r(b.x);
  const y = r(b.y);
  const w = Math.min(r(b.w), r(1 - x));
  const hh = Math.min(r(b.h), r(1 - y));
  return { x, y, w, h: hh };
}

function placeBox(el, b) {
  el.style.left = `${b.x * 100}%`;
  el.style.top = `${b.y * 100}%`;
  el.style.width = `${b.w * 100}%`;
  el.style.height = `${b.h * 100}%`;
}

function sendGuide() {
  if (S.ended) return;
  const g = S.guide;
  const msg = { type: "guide" };
  if (g.box) msg.box = g.box;
  if (g.hint) msg.hint = g.hint;
  if (g.text) msg.text = g.text;
  S.client.send(msg).catch((e) => toast(t("toast_send_failed", { message: e?.message || e?.code || "" }), "error"));
}

/** Sends the current guide again, if there is one (after the customer page (re)joined). */
function resendGuide() {
  const g = S.guide;
  if (!S.ended && (g.box || g.hint || g.text)) sendGuide();
}

function clearGuide() {
  S.guide = { box: null, hint: null, text: null };
  els.guideText.value = "";
  renderGuide();
  if (!S.ended) {
    S.client.send({ type: "guide" }).catch((e) => toast(t("toast_send_failed", { message: e?.message || "" }), "error"));
  }
}

// ---- controls -----------------------------------------------------------------------------------

function buildVocabSelects() {
  fillSelect(els.areaSelect, "area", AREAS);
  fillSelect(els.angleSelect, "angle", ANGLES);
  if (!els.areaSelect.dataset.init) {
    els.areaSelect.value = "overview";
    els.angleSelect.value = "front_left_45";
    els.areaSelect.dataset.init = "1";
  }
}

function fillSelect(sel, kind, ids) {
  const keep = sel.value;
  sel.replaceChildren(...ids.map((id) => h("option", { value: id }, label(kind, id, locale()))));
  if (keep) sel.value = keep;
}

function buildHints() {
  els.hints.replaceChildren(
    ...HINT_IDS.map((hint) =>
      h(
        "button.btn.hint",
        {
          type: "button",
          "data-testid": `guide-hint-${hint}`,
          "data-hint": hint,
          "aria-pressed": String(S.guide.hint === hint),
          onclick: () => {
            S.guide.hint = S.guide.hint === hint ? null : hint;
            renderGuide();
            sendGuide();
          },
        },
        h("span.hint-glyph", { "aria-hidden": "true" }, HINT_GLYPHS[hint] || "•"),
        h("span.hint-label", {}, label("hint", hint, locale())),
      )),
  );
}

function wireControls() {
  els.captureButton.addEventListener("click", () => doCapture());
  els.addSlot.addEventListener("click", addSlot);
  const onPick = () => {
    matchSlotToPickers();
    renderSlotLine();
    renderChecklist();
  };
  els.areaSelect.addEventListener("change", onPick);
  els.angleSelect.addEventListener("change", onPick);
  $("#guide-text-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = els.guideText.value.trim().slice(0, 500);
    S.guide.text = text || null;
    renderGuide();
    sendGuide();
  });
  $("#guide-clear").addEventListener("click", clearGuide);
  els.torch.addEventListener("click", () => {
    S.torchOn = !S.torchOn;
    renderCaps();
    S.client.send({ type: "camera", torch: S.torchOn }).catch((e) => toast(t("toast_send_failed", { message: e?.message || "" }), "error"));
  });
  let zoomTimer = null;
  els.zoom.addEventListener("input", () => {
    els.zoomOut.textContent = `${Number(els.zoom.value).toFixed(1)}×`;
    clearTimeout(zoomTimer);
    zoomTimer = setTimeout(() => {
      const z = Math.min(100, Math.max(0.01, Number(els.zoom.value)));
      S.client.send({ type: "camera", zoom: z }).catch(() => {});
    }, 120);
  });
  $("#end-session").addEventListener("click", onEndClick);
  for (const b of document.querySelectorAll("#console .lang-toggle")) {
    b.addEventListener("click", () => setLocale(locale() === "en" ? "zh-CN" : "en"));
  }
  // Lightbox
  $("#lightbox-close").addEventListener("click", () => els.lightbox.close());
  els.lightbox.addEventListener("click", (e) => {
    if (e.target === els.lightbox) els.lightbox.close();
  });
  els.lightbox.addEventListener("close", () => els.lightboxImg.removeAttribute("src"));
}

function wireKeyboard() {
  document.addEventListener("keydown", (e) => {
    if (e.repeat || e.ctrlKey || e.metaKey || e.altKey) return;
    if (document.querySelector("dialog[open]")) return;
    const target = e.target instanceof Element ? e.target : null;
    const inText = target?.closest("input, textarea, select, [contenteditable]");
    // Space and C are the shutter, as in camera apps, except while typing or picking from a list
    // (a focused button is still pressed with Enter).
    if (!(e.key === " " || e.code === "Space" || e.key === "c" || e.key === "C")) return;
    if (inText) return;
    e.preventDefault();
    doCapture();
  });
}

async function onEndClick() {
  if (S.ended) return;
  const ok = await confirmDialog({
    title: t("end_confirm_title"),
    body: t("end_confirm_body"),
    yes: t("end_confirm_yes"),
    testid: "end",
  });
  if (!ok) return;
  try {
    await S.client.send({ type: "session.close" });
  } catch (e) {
    // The socket may be down: the REST call ends the session just the same.
    if (!S.sessionId) {
      toast(t("toast_closed_failed", { message: e?.message || "" }), "error");
      return;
    }
    try {
      await api(`/sessions/${encodeURIComponent(S.sessionId)}/close`, { method: "POST", auth: S.token });
      endSession("closed");
    } catch (ex) {
      if (ex instanceof ApiError && ex.status === 410) endSession(ex.code === "session_expired" ? "expired" : "closed");
      else toast(t("toast_closed_failed", { message: errorText(ex) }), "error");
    }
  }
}

// ---- checklist ------------------------------------------------------------------------------------

function slotLabel(s) {
  return s.label || `${label("area", s.area, locale())} · ${label("angle", s.angle, locale())}`;
}

function setChecklist(list, { fromWelcome = false } = {}) {
  const before = new Map(S.checklist.map((s) => [s.id, s]));
  S.checklist = list;
  const sel = list.find((s) => s.id === S.selectedSlot);
  // A slot just added from the console: select it.
  if (S.pendingAddSelect) {
    const added = list.find((s) => !before.has(s.id) && s.area === S.pendingAddSelect.area && s.angle === S.pendingAddSelect.angle);
    if (added) {
      S.pendingAddSelect = null;
      selectSlot(added);
      return;
    }
  }
  if (!sel) {
    S.selectedSlot = null;
    if (fromWelcome || before.size === 0) {
      const first = list.find((s) => s.status !== "done");
      if (first) {
        selectSlot(first);
        return;
      }
    }
  } else if (sel.status === "done" && before.get(sel.id)?.status !== "done") {
    // The selected shot is done: move on to the next one still to take.
    const idx = list.indexOf(sel);
    const next = [...list.slice(idx + 1), ...list.slice(0, idx)].find((s) => s.status !== "done");
    if (next) {
      selectSlot(next);
      return;
    }
  }
  renderChecklist();
  renderSlotLine();
}

function selectSlot(slot) {
  S.selectedSlot = slot.id;
  els.areaSelect.value = slot.area;
  els.angleSelect.value = slot.angle;
  renderChecklist();
  renderSlotLine();
  els.checklist.querySelector("[aria-current=true]")?.scrollIntoView({ block: "nearest" });
}

/** After a manual pick: keep the selected slot if it still matches, else the first open slot that does. */
function matchSlotToPickers() {
  const area = els.areaSelect.value;
  const angle = els.angleSelect.value;
  const cur = S.checklist.find((s) => s.id === S.selectedSlot);
  if (cur && cur.area === area && cur.angle === angle) return;
  const m = S.checklist.find((s) => s.area === area && s.angle === angle && s.status !== "done")
    || S.checklist.find((s) => s.area === area && s.angle === angle);
  S.selectedSlot = m ? m.id : null;
}

function addSlot() {
  if (S.ended) return;
  const area = els.areaSelect.value;
  const angle = els.angleSelect.value;
  S.pendingAddSelect = { area, angle };
  S.client.send({ type: "checklist.add", area, angle }).catch((e) => {
    S.pendingAddSelect = null;
    toast(t("toast_send_failed", { message: e?.message || e?.code || "" }), "error");
  });
}

// ---- captures ---------------------------------------------------------------------------------------

function addCapture(c) {
  if (!c?.id) return;
  S.captures.set(c.id, c);
  if (c.request_id) resolvePending(c.request_id);
  renderGallery();
  renderChecklist();
}

function resolvePending(requestId) {
  const p = S.pending.get(requestId);
  if (!p || p.resolved) return;
  p.resolved = true;
  clearTimeout(p.timer);
  S.pending.delete(requestId);
  renderGallery();
}

function flash() {
  const f = els.flash;
  f.classList.remove("go");
  void f.offsetWidth; // restart the animation
  f.classList.add("go");
}

function doCapture(over) {
  if (S.ended || !S.welcomed) return;
  if (!S.peerPresent) {
    toast(t("toast_customer_absent"), "warn");
    return;
  }
  const area = over?.area || els.areaSelect.value;
  const angle = over?.angle || els.angleSelect.value;
  const slotId = over ? over.slot_id || null : S.selectedSlot;
  const p = {
    request_id: uuid(),
    area,
    angle,
    slot_id: slotId || null,
    status: "waiting",
    reason: null,
    resolved: false,
    fallbackStarted: false,
    timer: null,
  };
  S.pending.set(p.request_id, p);
  flash();
  renderGallery();
  p.timer = setTimeout(() => startFallback(p, "timeout"), CAPTURE_TIMEOUT_MS);
  const msg = { type: "capture.request", request_id: p.request_id, area, angle };
  if (p.slot_id) msg.slot_id = p.slot_id;
  S.client.send(msg).catch((e) => {
    toast(t("toast_capture_refused", { message: e?.message || e?.code || "" }), "error");
    startFallback(p, "failed", e?.code || e?.message);
  });
}

/** The phone did not deliver (timeout) or said it cannot: grab the video frame and upload it. */
function startFallback(p, why, reason) {
  if (p.resolved || p.fallbackStarted) return;
  p.fallbackStarted = true;
  clearTimeout(p.timer);
  p.status = why === "failed" ? "failed_phone" : "fallback";
  p.reason = reason || null;
  renderGallery();
  uploadFrame(p);
}

/**
 * One frame of the customer's video, as a JPEG at the frame's own size. The size must come from the
 * frame itself: while the received resolution steps up, `videoWidth` can lag the frame drawImage()
 * paints, and a canvas sized from it stores a cropped or squeezed picture.
 */
async function grabFrame() {
  const v = els.remoteVideo;
  if (!hasVideo()) return null;
  const source = (await grabTrackFrame(v)) || (await grabPresentedFrame(v));
  if (!source) return null;
  const c = document.createElement("canvas");
  c.width = source.width;
  c.height = source.height;
  c.getContext("2d").drawImage(source.image, 0, 0);
  source.image.close?.();
  return new Promise((res) => c.toBlob((b) => res(b), "image/jpeg", JPEG_QUALITY));
}

/** ImageCapture.grabFrame(): an ImageBitmap of the track's next frame, with its own size. */
async function grabTrackFrame(v) {
  const track = v.srcObject?.getVideoTracks?.().find((tr) => tr.readyState === "live" && !tr.muted)
    || v.srcObject?.getVideoTracks?.().find((tr) => tr.readyState === "live");
  if (!track || typeof ImageCapture !== "function") return null;
  try {
    const bmp = await withTimeout(new ImageCapture(track).grabFrame(), 3000);
    return bmp && bmp.width > 0 && bmp.height > 0 ? { image: bmp, width: bmp.width, height: bmp.height } : null;
  } catch (e) {
    console.info("ImageCapture.grabFrame failed, drawing from the video element:", e?.name || e);
    return null;
  }
}

/**
 * Without ImageCapture: a copy of the video's next presented frame, sized from that frame's own
 * metadata (requestVideoFrameCallback) and drawn in the same callback; else the current frame with
 * the size read right before drawing it.
 */
function grabPresentedFrame(v) {
  const copy = (w, h) => {
    if (!(w > 0) || !(h > 0)) return null;
    const c = document.createElement("canvas");
    c.width = w;
    c.height = h;
    c.getContext("2d").drawImage(v, 0, 0, w, h);
    return { image: c, width: w, height: h };
  };
  if (typeof v.requestVideoFrameCallback !== "function") return Promise.resolve(copy(v.videoWidth, v.videoHeight));
  return new Promise((res) => {
    const timer = setTimeout(() => res(copy(v.videoWidth, v.videoHeight)), 1000);
    v.requestVideoFrameCallback((_now, meta) => {
      clearTimeout(timer);
      res(copy(meta.width, meta.height));
    });
  });
}

function withTimeout(promise, ms) {
  return new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error("timeout")), ms);
    promise.then(
      (v) => (clearTimeout(timer), res(v)),
      (e) => (clearTimeout(timer), rej(e)),
    );
  });
}

async function uploadFrame(p) {
  const blob = p.blob || (await grabFrame());
  if (!blob) {
    if (!p.resolved) {
      p.status = "error";
      p.reason = t("pending_no_frame");
      renderGallery();
    }
    return;
  }
  p.blob = blob; // a retry sends the same bytes under the same Idempotency-Key
  const meta = { area: p.area, angle: p.angle, source: "agent_frame", note: `frame from video for request ${p.request_id}` };
  if (p.slot_id) meta.slot_id = p.slot_id;
  let lastErr = null;
  for (let attempt = 0; attempt < 4; attempt++) {
    if (S.ended) break;
    if (attempt) await new Promise((r) => setTimeout(r, 500 * 2 ** attempt));
    const fd = new FormData();
    fd.append("meta", JSON.stringify(meta));
    fd.append("image", blob, "frame.jpg");
    try {
      const cap = await api(`/sessions/${encodeURIComponent(S.sessionId)}/captures`, {
        method: "POST",
        auth: S.token,
        body: fd,
        headers: { "Idempotency-Key": `${p.request_id}-frame` },
      });
      S.captures.set(cap.id, cap);
      p.resolved = true;
      S.pending.delete(p.request_id);
      renderGallery();
      renderChecklist();
      return;
    } catch (e) {
      lastErr = e;
      const retriable = e instanceof ApiError && (e.status === 0 || e.status === 503 || e.status === 507 || e.status >= 500);
      if (!retriable) break;
    }
  }
  if (!p.resolved) {
    p.status = "error";
    p.reason = errorText(lastErr);
    renderGallery();
  }
}

function retake(c) {
  els.areaSelect.value = c.area;
  els.angleSelect.value = c.angle;
  const slot = c.slot_id && S.checklist.find((s) => s.id === c.slot_id);
  if (slot) S.selectedSlot = slot.id;
  else matchSlotToPickers();
  renderSlotLine();
  renderChecklist();
  doCapture({ area: c.area, angle: c.angle, slot_id: S.selectedSlot });
}

/** One <img> per capture and place, reused across re-renders: no refetch (the token dies with the session). */
const imgCache = new Map();
function thumbImg(c, cls, alt) {
  const key = `${cls}|${c.id}`;
  let img = imgCache.get(key);
  if (!img) {
    img = h(`img.${cls}`, { src: withToken(c.thumbnail_url), alt: "", loading: "lazy", decoding: "async" });
    imgCache.set(key, img);
  }
  img.alt = alt;
  return img;
}

const withToken = (u) => {
  const url = new URL(u, location.href);
  url.searchParams.set("token", S.token);
  return url.pathname + url.search; // same origin as the page (the CSP allows only 'self')
};

function openLightbox(c) {
  const src = withToken(c.image_url);
  els.lightboxImg.src = src;
  els.lightboxImg.alt = `${label("area", c.area, locale())} · ${label("angle", c.angle, locale())}`;
  els.lightboxCaption.textContent = `${els.lightboxImg.alt} — ${t(`source_${c.source}`)} — ${c.width}×${c.height}`;
  els.lightboxOpen.href = src;
  els.lightbox.showModal();
}

// ---- ending -----------------------------------------------------------------------------------------

function endSession(kind) {
  if (S.ended) return;
  S.ended = { kind };
  // Requests still waiting can no longer be answered: their tiles go.
  for (const p of S.pending.values()) {
    clearTimeout(p.timer);
    p.resolved = true;
  }
  S.pending.clear();
  S.peerPresent = false;
  S.caps = null;
  try {
    S.call?.close();
  } catch {
    /* already closed */
  }
  if (S.micStream) for (const tr of S.micStream.getTracks()) tr.stop();
  if (kind !== "replaced") S.client?.close();
  clearInterval(S.statsTimer);
  for (const id of ["q-rtt", "q-res", "q-kbps", "q-fps"]) {
    const q = document.getElementById(id);
    q.textContent = "–";
    q.dataset.level = "";
  }
  const v = els.remoteVideo;
  v.srcObject = null;
  document.getElementById("console").classList.add("is-ended");
  renderAll();
}

function renderEnded() {
  const b = $("#ended-banner");
  if (!S.ended) {
    b.hidden = true;
    return;
  }
  const k = S.ended.kind;
  b.hidden = false;
  b.dataset.kind = k;
  const title = k === "replaced" ? "replaced_title" : k === "unauthorized" ? "unauthorized_title" : "ended_title";
  const body = k === "replaced" ? "replaced_body" : k === "unauthorized" ? "unauthorized_body" : k === "expired" ? "ended_expired" : "ended_body";
  $("#ended-title").textContent = t(title);
  $("#ended-body").textContent = t(body);
  const act = $("#ended-action");
  if (k === "replaced") {
    act.hidden = false;
    act.textContent = t("reconnect_here");
    act.onclick = () => location.reload();
  } else {
    act.hidden = false;
    act.textContent = t("back_home");
    act.onclick = () => location.assign("/agent/");
  }
}

// ---- rendering --------------------------------------------------------------------------------------

function renderAll() {
  document.title = S.session?.claim_ref
    ? `${S.session.claim_ref} · ${t("app_name")}`
    : `${t("app_name")} · ${t("app_subtitle")}`;
  buildVocabSelects();
  buildHints();
  renderHeader();
  renderConn();
  renderPeer();
  renderStage();
  renderGuide();
  renderMic();
  renderMute();
  renderCaps();
  renderSlotLine();
  renderChecklist();
  renderGallery();
  renderControls();
  renderEnded();
  renderQualityCall();
}

function renderHeader() {
  const s = S.session;
  $("#s-claim").textContent = s ? `${t("claim")} ${s.claim_ref}` : "…";
  const sub = [s?.vehicle?.plate, s?.customer?.name].filter(Boolean).join(" · ");
  $("#s-sub").textContent = sub;
}

function renderConn() {
  const el = els.connStatus;
  const st = S.client?.state || "connecting";
  el.dataset.state = st;
  if (st === "closed" && S.client?.reason) el.dataset.reason = S.client.reason;
  el.querySelector(".pill-text").textContent = t(`conn_${st}`);
}

function renderPeer() {
  const el = els.peerStatus;
  el.dataset.present = String(S.peerPresent);
  el.querySelector(".pill-text").textContent = t(S.peerPresent ? "peer_present" : "peer_absent");
}

function renderStage() {
  const show = hasVideo() && !S.ended;
  els.stageEmpty.hidden = show;
  els.stage.classList.toggle("has-video", show);
  els.drawTip.hidden = !show;
  els.stageEmptyText.textContent = S.ended
    ? t(S.ended.kind === "expired" ? "ended_expired" : "ended_title")
    : S.welcomed && !S.peerPresent ? t("waiting_customer") : t("waiting_video");
  els.stageEmpty.classList.toggle("no-spin", !!S.ended || (S.welcomed && !S.peerPresent));
  layoutOverlay();
  renderMute();
}

function renderGuide() {
  const b = S.guide.box;
  els.guideBox.hidden = !b;
  if (b) placeBox(els.guideBox, b);
  for (const btn of els.hints.querySelectorAll("button")) {
    btn.setAttribute("aria-pressed", String(btn.dataset.hint === S.guide.hint));
  }
}

function renderMic() {
  const m = els.micState;
  if (S.micOk === null || S.ended) {
    m.textContent = "";
    return;
  }
  m.textContent = t(S.micOk ? "mic_on" : "mic_off");
  m.dataset.on = String(S.micOk);
}

function renderMute() {
  const v = els.remoteVideo;
  const stream = v.srcObject;
  const hasAudio = !!stream?.getAudioTracks?.().length;
  els.unmute.hidden = !hasAudio || S.ended;
  els.unmute.dataset.muted = String(v.muted);
  els.unmute.querySelector("span:last-child").textContent = t(v.muted ? "unmute" : "mute");
}

function renderCaps() {
  const c = S.caps;
  const show = !!c && !S.ended;
  els.torch.hidden = !(show && c.torch === true);
  els.torch.setAttribute("aria-pressed", String(S.torchOn));
  $("#torch-text").textContent = t(S.torchOn ? "torch_on" : "torch_off");
  const z = show && c.zoom && Number(c.zoom.max) > Number(c.zoom.min) ? c.zoom : null;
  els.zoomWrap.hidden = !z;
  if (z) {
    const zoom = els.zoom;
    if (zoom.min !== String(z.min) || zoom.max !== String(z.max)) {
      zoom.min = z.min;
      zoom.max = z.max;
      zoom.step = z.step || 0.1;
      zoom.value = z.min;
      els.zoomOut.textContent = `${Number(z.min).toFixed(1)}×`;
    }
  }
  const p = show && c.photo && c.photo.width ? c.photo : null;
  els.photoRes.hidden = !p;
  if (p) els.photoRes.textContent = t("camera_photo", { w: p.width, h: p.height });
}

function renderSlotLine() {
  const s = S.checklist.find((x) => x.id === S.selectedSlot);
  els.slotLine.textContent = s ? t("slot_current", { label: slotLabel(s) }) : t("slot_none");
  els.slotLine.classList.toggle("linked", !!s);
}

function renderChecklist() {
  const list = S.checklist;
  const done = list.filter((s) => s.status === "done").length;
  els.checklistProgress.textContent = t("checklist_progress", { done, total: list.length });
  els.progressBar.style.width = list.length ? `${(done / list.length) * 100}%` : "0%";
  if (!list.length) {
    els.checklist.replaceChildren(h("li.empty.small", {}, t("checklist_empty")));
    return;
  }
  els.checklist.replaceChildren(
    ...list.map((s, i) => {
      const cap = s.capture_id && S.captures.get(s.capture_id);
      const isDone = s.status === "done";
      return h(
        "li.slot",
        {
          "data-testid": "checklist-item",
          "data-slot-id": s.id,
          "data-status": s.status,
          "aria-current": s.id === S.selectedSlot ? "true" : null,
        },
        h(
          "button.slot-btn",
          {
            type: "button",
            disabled: !!S.ended,
            onclick: () => selectSlot(s),
            "aria-label": `${i + 1}. ${slotLabel(s)}: ${t(isDone ? "slot_done" : "slot_pending")}`,
          },
          h(`span.slot-check${isDone ? ".done" : ""}`, { "aria-hidden": "true" }, isDone ? "✓" : String(i + 1)),
          h(
            "span.slot-text",
            {},
            h("span.slot-area", {}, s.label || label("area", s.area, locale())),
            h("span.slot-angle", {}, label("angle", s.angle, locale())),
          ),
          cap
            ? thumbImg(cap, "slot-thumb", "")
            : h(`span.slot-state${isDone ? ".done" : ""}`, {}, t(isDone ? "slot_done" : "slot_pending")),
        ),
      );
    }),
  );
}

function pendingText(p) {
  switch (p.status) {
    case "waiting":
      return t("pending_waiting");
    case "fallback":
      return t("pending_fallback");
    case "failed_phone":
      return t("pending_failed_phone", { reason: p.reason || "?" });
    case "error":
      return t("pending_error", { reason: p.reason || "?" });
    default:
      return "";
  }
}

function pendingTile(p) {
  const isErr = p.status === "error";
  return h(
    `li.tile.pending${isErr ? ".error" : ""}`,
    { "data-testid": "capture-pending", "data-request-id": p.request_id, "data-status": p.status },
    h("div.thumb.pending-thumb", {}, isErr ? h("span.err-mark", { "aria-hidden": "true" }, "!") : h("div.spinner.small", { "aria-hidden": "true" })),
    h(
      "div.tile-meta",
      {},
      h("span.tile-title", {}, `${label("area", p.area, locale())} · ${label("angle", p.angle, locale())}`),
      h("span.tile-status", { role: "status" }, pendingText(p)),
      isErr && h(
        "span.tile-actions",
        {},
        h("button.btn.secondary.xsmall", {
          type: "button",
          onclick: () => {
            p.status = "fallback";
            renderGallery();
            uploadFrame(p);
          },
        }, t("retry")),
        h("button.btn.ghost.xsmall", {
          type: "button",
          onclick: () => {
            p.resolved = true;
            S.pending.delete(p.request_id);
            renderGallery();
          },
        }, t("dismiss")),
      ),
    ),
  );
}

function captureTile(c) {
  const title = `${label("area", c.area, locale())} · ${label("angle", c.angle, locale())}`;
  const warnings = c.quality?.warnings || [];
  const frame = c.source === "agent_frame";
  return h(
    `li.tile${frame ? ".frame" : ""}`,
    { "data-testid": "capture-item", "data-capture-id": c.id, "data-source": c.source, "data-area": c.area, "data-angle": c.angle },
    h(
      "button.thumb",
      { type: "button", title: t("view_full"), "aria-label": `${t("view_full")}: ${title}`, onclick: () => openLightbox(c) },
      thumbImg(c, "thumb-img", title),
    ),
    h(
      "div.tile-meta",
      {},
      h("span.tile-title", {}, title),
      h(`span.source${frame ? ".warn" : ""}`, { "data-testid": "capture-source" }, t(`source_${c.source}`)),
      h("span.tile-dims", {}, c.width && c.height ? `${c.width}×${c.height}` : ""),
      warnings.length
        ? h("span.warnings", {}, ...warnings.map((w) => h("span.chip.warn", { "data-testid": "capture-warning", "data-warning": w }, label("warning", w, locale()))))
        : null,
      h("span.tile-actions", {},
        h("button.btn.ghost.xsmall", { type: "button", "data-testid": "capture-retake", disabled: !!S.ended, onclick: () => retake(c) }, t("retake"))),
    ),
  );
}

function renderGallery() {
  const caps = [...S.captures.values()].sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
  const pend = [...S.pending.values()].reverse();
  els.captureList.replaceChildren(...pend.map(pendingTile), ...caps.map(captureTile));
  els.galleryEmpty.hidden = caps.length + pend.length > 0;
  els.galleryCount.textContent = String(caps.length);
}

function renderControls() {
  const off = !!S.ended;
  for (const el of document.querySelectorAll("#console .console-main button, #console .console-main input, #console .console-main select")) {
    el.disabled = off;
  }
  $("#end-session").disabled = off;
  els.captureButton.disabled = off || !S.welcomed;
}

// ---- call quality -----------------------------------------------------------------------------------

function renderQualityCall() {
  const st = S.ended ? "closed" : S.callState || "new";
  const el = document.getElementById("q-call");
  el.textContent = t(`call_${st}`) === `call_${st}` ? st : t(`call_${st}`);
  el.dataset.state = st;
}

async function updateStats() {
  let st = null;
  try {
    st = await S.call?.stats();
  } catch {
    st = null;
  }
  const v = els.remoteVideo;
  const rtt = st?.rttMs ?? S.client?.rttMs ?? null;
  const rttEl = document.getElementById("q-rtt");
  rttEl.textContent = rtt == null ? "–" : `${Math.round(rtt)} ms`;
  rttEl.dataset.level = rtt == null ? "" : rtt < 150 ? "good" : rtt < 400 ? "fair" : "poor";
  const w = st?.width || v.videoWidth;
  const hh = st?.height || v.videoHeight;
  document.getElementById("q-res").textContent = w && hh ? `${w}×${hh}` : "–";
  const kbps = st?.inKbps;
  document.getElementById("q-kbps").textContent = kbps == null ? "–"
    : kbps >= 1000 ? `${(kbps / 1000).toFixed(1)} Mbps` : `${Math.round(kbps)} kbps`;
  const fps = st?.fps;
  document.getElementById("q-fps").textContent = fps == null ? "–" : `${Math.round(fps)} fps`;
  renderConn();
  if (els.stage.classList.contains("has-video") !== (hasVideo() && !S.ended)) renderStage();
}
