// The customer page: joins the session as soon as it loads (so the agent sees the customer
// present), explains what will happen, starts the rear camera on a tap, sends it to the agent over
// WebRTC, shows the agent's guide over the preview, and on the agent's capture.request takes a
// full-resolution still and uploads it. Everything the page shows comes from the session's events;
// every `welcome` rebuilds the lists.

import { SessionClient, wsUrl } from "/shared/session.js";
import { Call } from "/shared/call.js";
import { pickLocale, makeT, label, applyTranslations } from "/shared/i18n.js";
import { STRINGS } from "./strings.js";
import { takeStill, withTimeout } from "./still.js";
import { uploadStill } from "./upload.js";

const $ = (id) => document.getElementById(id);
const HINTS = new Set(["closer", "farther", "left", "right", "up", "down", "hold_steady", "more_light", "less_glare"]);
const TOAST_MS = 4500;

// ---------------------------------------------------------------- state

const token = new URLSearchParams(location.hash.slice(1)).get("token");

const S = {
  locale: pickLocale(null, navigator.languages),
  session: null,
  sessionId: null,
  agentPresent: false,
  screen: "intro",
  error: null, // the camera problem shown on the error screen
  ended: null, // "session_closed" | "session_expired" | "replaced" | "unauthorized" | "forbidden"
  captures: new Map(), // id -> capture, in the order taken
  checklist: [],
  currentSlot: null, // slot id of the last capture.request or guide target
  currentTarget: null, // {area, angle}
  guide: {},
  stream: null,
  micMissing: false,
  muted: false,
  facing: "environment",
  torch: undefined,
  zoom: undefined,
  starting: false,
  requests: new Map(), // request_id -> job (a job keeps its bytes until the server took them)
  toasted: new Set(),
  wakeLock: null,
};
let t = makeT(STRINGS, S.locale);
let client = null;
let call = null;

// ---------------------------------------------------------------- language

function setLocale(locale) {
  S.locale = locale;
  t = makeT(STRINGS, locale);
  document.documentElement.lang = locale;
  applyTranslations(document, t);
  document.title = t("brand");
  renderAll();
}

function areaAngle(area, angle) {
  const a = area ? label("area", area, S.locale) : "";
  const b = angle ? label("angle", angle, S.locale) : "";
  return [a, b].filter(Boolean).join(" · ");
}

function slotLabel(slot) {
  return slot.label || areaAngle(slot.area, slot.angle);
}

// ---------------------------------------------------------------- screens

function show(screen) {
  S.screen = screen;
  document.body.dataset.screen = screen;
  for (const name of ["intro", "error", "camera", "ended"]) $(`screen-${name}`).hidden = name !== screen;
  if (screen !== "camera") setSheetExpanded(false);
  renderGuide();
}

function renderAll() {
  renderStatus();
  renderClaimMeta();
  renderChecklist();
  renderCaptures();
  renderGuide();
  renderError();
  renderEnded();
  renderMute();
  renderSheetToggle();
  renderWaiting();
  setStartBusy(S.starting);
}

function renderClaimMeta() {
  const el = $("claim-meta");
  el.replaceChildren();
  const s = S.session;
  if (!s) return void (el.hidden = true);
  if (s.claim_ref) el.append(span(t("claim_ref", { ref: s.claim_ref })));
  if (s.vehicle && s.vehicle.plate) el.append(span(t("vehicle", { plate: s.vehicle.plate })));
  el.hidden = el.childElementCount === 0;
}

function span(text, cls) {
  const e = document.createElement("span");
  if (cls) e.className = cls;
  e.textContent = text;
  return e;
}

// ---------------------------------------------------------------- connection status

function renderStatus() {
  const state = client ? client.state : "connecting";
  const el = document.querySelector('[data-testid="connection-status"]');
  el.dataset.state = state;
  if (client && client.reason) el.dataset.reason = client.reason;
  else delete el.dataset.reason;
  const ended = state === "closed" && (S.ended === "session_closed" || S.ended === "session_expired");
  // One short line: while connected, whether the agent is there; otherwise the connection state.
  el.dataset.agent = S.agentPresent ? "present" : "absent";
  el.querySelector(".status-text").textContent =
    state === "open" ? t(S.agentPresent ? "agent_present" : "agent_absent") : t(ended ? "status_ended" : `status_${state}`);
  el.title = t(`status_${state}`);

  const banner = $("banner");
  const down = state === "reconnecting" || (state === "connecting" && S.session != null);
  banner.hidden = !down || S.ended != null;
  document.body.classList.toggle("has-banner", !banner.hidden);
  $("banner-text").textContent = navigator.onLine === false ? t("banner_offline") : t("banner_reconnecting");
}

function renderWaiting() {
  $("waiting").hidden = !(S.screen === "camera" && S.session && !S.agentPresent && client && client.state === "open");
}

// ---------------------------------------------------------------- session events

function onWelcome(w) {
  S.session = w.session || null;
  S.sessionId = (w.session && w.session.id) || S.sessionId;
  S.agentPresent = !!w.peer_present;
  // Every welcome replaces the lists: a resumed one still carries the full state.
  S.captures = new Map();
  for (const c of w.captures || []) S.captures.set(c.id, c);
  S.checklist = Array.isArray(w.checklist) ? w.checklist : [];
  const locale = pickLocale(S.session && S.session.locale, navigator.languages);
  if (locale !== S.locale) setLocale(locale);
  else renderAll();
  if (S.stream) sendCapabilities();
}

function onEvent(m) {
  switch (m.type) {
    case "peer.joined":
      if (m.role === "agent") {
        S.agentPresent = true;
        if (S.stream) sendCapabilities();
      }
      break;
    case "peer.left":
      if (m.role === "agent") S.agentPresent = false;
      break;
    case "guide":
      S.guide = m;
      if (m.target && m.target.area) S.currentTarget = m.target;
      renderGuide();
      renderChecklist();
      return;
    case "capture.request":
      onCaptureRequest(m);
      return;
    case "camera":
      onCameraCommand(m).catch((e) => console.warn("camera command", e));
      return;
    case "capture.created":
      if (m.capture) addCapture(m.capture, true);
      return;
    case "checklist.updated":
      if (Array.isArray(m.checklist)) S.checklist = m.checklist;
      renderChecklist();
      return;
    case "session.closed":
      endSession(m.reason === "expired" ? "session_expired" : "session_closed");
      return;
    default:
      return;
  }
  renderStatus();
  renderWaiting();
}

function onState({ state, reason }) {
  renderStatus();
  renderWaiting();
  if (state === "closed" && reason && reason !== "client") endSession(reason);
}

// ---------------------------------------------------------------- checklist and captures

function addCapture(c, announce) {
  const isNew = !S.captures.has(c.id);
  S.captures.set(c.id, c);
  if (isNew) renderCaptures();
  if (announce && !S.toasted.has(c.id)) {
    S.toasted.add(c.id);
    showToast(c);
  }
}

function thumbSrc(c) {
  if (!c.thumbnail_url) return "";
  let u;
  try {
    u = new URL(c.thumbnail_url, location.href);
  } catch {
    return "";
  }
  // The page's CSP allows images from its own origin only; a public URL that names another host
  // for the same server (a proxy, a LAN address) is read from this one instead.
  if (u.origin !== location.origin) u = new URL(u.pathname + u.search, location.origin);
  u.searchParams.set("token", token);
  return u.toString();
}

function renderCaptures() {
  const list = $("capture-list");
  const items = [...S.captures.values()];
  const existing = new Map([...list.children].map((li) => [li.dataset.captureId, li]));
  const frag = document.createDocumentFragment();
  for (const c of items) {
    let li = existing.get(c.id);
    const text = areaAngle(c.area, c.angle);
    if (!li) {
      li = document.createElement("li");
      li.setAttribute("data-testid", "capture-item");
      li.dataset.captureId = c.id;
      const img = document.createElement("img");
      img.loading = "lazy";
      img.decoding = "async";
      img.src = thumbSrc(c);
      li.append(img, span("", "capture-label"));
    }
    li.querySelector("img").alt = t("photo_alt", { label: text });
    li.querySelector(".capture-label").textContent = text;
    frag.append(li);
  }
  list.replaceChildren(frag);
  $("captures-empty").hidden = items.length > 0;
  $("photo-count").textContent = String(items.length);
}

function renderChecklist() {
  const ul = $("slots");
  ul.replaceChildren();
  const total = S.checklist.length;
  const done = S.checklist.filter((s) => s.status === "done").length;
  // The slot being photographed: the last request's, else the first pending slot matching the guide's target.
  let current = S.currentSlot;
  const cur = S.checklist.find((s) => s.id === current);
  if (!cur || cur.status === "done") {
    current = null;
    if (S.currentTarget) {
      const m = S.checklist.find(
        (s) => s.status !== "done" && s.area === S.currentTarget.area && s.angle === S.currentTarget.angle,
      );
      if (m) current = m.id;
    }
  }
  for (const slot of S.checklist) {
    const li = document.createElement("li");
    li.dataset.slotId = slot.id;
    li.dataset.status = slot.status === "done" ? "done" : "pending";
    li.dataset.current = String(slot.id === current);
    li.setAttribute("data-testid", "checklist-slot");
    const mark = document.createElement("span");
    mark.className = "slot-mark";
    mark.innerHTML = '<svg class="icon" aria-hidden="true"><use href="#i-check"/></svg>';
    const text = document.createElement("span");
    text.className = "slot-text";
    text.append(span(slotLabel(slot), "slot-title"));
    if (slot.label) text.append(span(areaAngle(slot.area, slot.angle), "slot-sub"));
    const state = span(
      slot.status === "done" ? t("slot_done") : slot.id === current ? t("slot_current") : t("slot_pending"),
      "slot-state",
    );
    li.append(mark, text, state);
    ul.append(li);
  }
  const progress = `${done} / ${total}`;
  $("checklist-progress").textContent = progress;
  $("progress-summary").textContent = progress;
  $("progress-fill").style.width = total ? `${Math.round((done / total) * 100)}%` : "0%";
  $("slots-empty").hidden = total > 0;
}

let toastTimer = null;
function showToast(c) {
  const el = $("toast");
  $("toast-thumb").src = thumbSrc(c);
  $("toast-thumb").alt = "";
  $("toast-label").textContent = areaAngle(c.area, c.angle);
  el.classList.remove("leaving");
  el.hidden = false;
  if ($("shot-status").dataset.kind !== "failed") shotStatus(null); // the toast says it better
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    el.classList.add("leaving");
    toastTimer = setTimeout(() => {
      el.hidden = true;
      el.classList.remove("leaving");
    }, 300);
  }, TOAST_MS);
}

// ---------------------------------------------------------------- the sheet (checklist + photos)

function setSheetExpanded(on) {
  $("sheet").dataset.expanded = String(on);
  $("sheet-toggle").setAttribute("aria-expanded", String(on));
  renderSheetToggle();
}

function renderSheetToggle() {
  const on = $("sheet").dataset.expanded === "true";
  $("sheet-toggle-label").textContent = t(on ? "hide_details" : "show_details");
}

// ---------------------------------------------------------------- the guide overlay

function renderGuide() {
  const g = S.guide || {};
  const overlay = $("guide-overlay");
  const hasBox = g.box && g.box.w > 0 && g.box.h > 0;
  const hasHint = typeof g.hint === "string" && HINTS.has(g.hint);
  const hasText = typeof g.text === "string" && g.text.trim() !== "";
  const hasTarget = g.target && g.target.area;
  overlay.hidden = !(hasBox || hasHint || hasText || hasTarget);

  const hint = $("guide-hint");
  hint.hidden = !hasHint;
  if (hasHint) {
    if (hint.dataset.hint !== g.hint) {
      // restart the pop-in animation for a new instruction
      hint.dataset.hint = g.hint;
      hint.classList.remove("again");
      void hint.offsetWidth;
    }
    $("guide-hint-use").setAttribute("href", `#i-hint-${g.hint}`);
    $("guide-hint-text").textContent = t(`hint_${g.hint}`);
  } else {
    delete hint.dataset.hint;
  }

  const text = $("guide-text");
  text.hidden = !hasText;
  text.textContent = hasText ? g.text : "";

  const target = $("guide-target");
  target.hidden = !hasTarget;
  target.textContent = hasTarget ? t("target_now", { label: areaAngle(g.target.area, g.target.angle) }) : "";

  $("guide-box").hidden = !hasBox;
  if (hasBox) layoutGuideBox();
}

// The agent draws the box in fractions of the frame it receives; the preview shows that frame with
// object-fit: cover, i.e. scaled to fill the screen and cropped at the sides (or top and bottom).
// Map the fractions through that scale and crop, then clip to the screen.
function layoutGuideBox() {
  const g = S.guide || {};
  const box = $("guide-box");
  const video = $("local-video");
  if (!g.box || box.hidden) return;
  const ew = video.clientWidth;
  const eh = video.clientHeight;
  const vw = video.videoWidth || ew;
  const vh = video.videoHeight || eh;
  if (!ew || !eh || !vw || !vh) return;
  const scale = Math.max(ew / vw, eh / vh);
  const dw = vw * scale;
  const dh = vh * scale;
  const ox = (ew - dw) / 2;
  const oy = (eh - dh) / 2;
  let fx = g.box.x;
  if (video.classList.contains("mirrored")) fx = 1 - g.box.x - g.box.w; // the preview is a mirror image
  let left = ox + fx * dw;
  let top = oy + g.box.y * dh;
  let right = left + g.box.w * dw;
  let bottom = top + g.box.h * dh;
  left = Math.max(0, left);
  top = Math.max(0, top);
  right = Math.min(ew, right);
  bottom = Math.min(eh, bottom);
  box.style.left = `${Math.round(left)}px`;
  box.style.top = `${Math.round(top)}px`;
  box.style.width = `${Math.max(0, Math.round(right - left))}px`;
  box.style.height = `${Math.max(0, Math.round(bottom - top))}px`;
}

// ---------------------------------------------------------------- camera

function videoTrack() {
  return S.stream ? S.stream.getVideoTracks()[0] || null : null;
}

function videoConstraints(facing) {
  return { facingMode: { ideal: facing }, width: { ideal: 1280 }, height: { ideal: 720 } };
}

/** getUserMedia with the fallbacks: without the microphone, then with any camera. */
async function openMedia(facing) {
  const md = navigator.mediaDevices;
  try {
    return { stream: await md.getUserMedia({ video: videoConstraints(facing), audio: true }), mic: true };
  } catch (first) {
    console.warn("getUserMedia (camera + mic) failed:", first.name, first.message);
    try {
      return { stream: await md.getUserMedia({ video: videoConstraints(facing), audio: false }), mic: false };
    } catch (second) {
      console.warn("getUserMedia (camera) failed:", second.name, second.message);
      if (second.name !== "OverconstrainedError") throw second;
      return { stream: await md.getUserMedia({ video: true, audio: false }), mic: false };
    }
  }
}

function classifyCameraError(e) {
  switch (e && e.name) {
    case "NotAllowedError":
    case "PermissionDeniedError":
    case "SecurityError":
      return "denied";
    case "NotFoundError":
    case "DevicesNotFoundError":
    case "OverconstrainedError":
      return "notfound";
    case "NotReadableError":
    case "TrackStartError":
    case "AbortError":
      return "busy";
    case "unsupported":
      return "unsupported";
    default:
      return "generic";
  }
}

async function startCamera() {
  if (S.starting || S.ended) return;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showCameraError({ name: "unsupported" });
    return;
  }
  S.starting = true;
  setStartBusy(true);
  try {
    const { stream, mic } = await openMedia(S.facing);
    if (S.ended) {
      stream.getTracks().forEach((tr) => tr.stop());
      return;
    }
    S.micMissing = !mic;
    rememberCameraStarted();
    await useStream(stream);
    show("camera");
    renderAll();
    requestWakeLock();
    // The agent's audio may have arrived before the tap; playing it needs this user gesture.
    $("remote-audio").play().catch(() => {});
    sendCapabilities();
    if (S.pendingCamera) {
      const cmd = S.pendingCamera;
      S.pendingCamera = null;
      onCameraCommand(cmd).catch(() => {});
    }
  } catch (e) {
    console.warn("camera failed", e);
    showCameraError(e);
  } finally {
    S.starting = false;
    setStartBusy(false);
  }
}

async function useStream(stream) {
  const old = S.stream;
  S.stream = stream;
  S.torch = undefined;
  S.zoom = undefined;
  const video = $("local-video");
  video.srcObject = stream;
  const track = stream.getVideoTracks()[0];
  const facing = track && track.getSettings ? track.getSettings().facingMode : undefined;
  // Mirror only a camera that faces the user (the fake camera reports no facing mode).
  video.classList.toggle("mirrored", facing === "user" || (!facing && S.facing === "user"));
  for (const tr of stream.getTracks()) {
    tr.addEventListener("ended", () => {
      if (S.stream === stream && !S.ended && tr.kind === "video") cameraStopped();
    });
  }
  for (const tr of stream.getAudioTracks()) tr.enabled = !S.muted;
  try {
    await video.play();
  } catch {
    /* autoplay of a muted video: plays as soon as frames arrive */
  }
  call.setLocalStream(stream);
  if (old && old !== stream) {
    for (const tr of old.getTracks()) if (!stream.getTracks().includes(tr)) tr.stop();
  }
}

function stopCamera() {
  if (S.stream) for (const tr of S.stream.getTracks()) tr.stop();
  S.stream = null;
  $("local-video").srcObject = null;
  releaseWakeLock();
}

function cameraStopped() {
  stopCamera();
  showCameraError({ name: "stopped" });
}

function showCameraError(e) {
  S.error = e && e.name === "stopped" ? "stopped" : classifyCameraError(e);
  renderError();
  show("error");
}

function renderError() {
  if (!S.error) return;
  const k = S.error;
  $("error-title").textContent = t(`err_${k}_title`);
  $("error-body").textContent = t(`err_${k}_body`);
  const more = k === "denied" ? t("err_denied_more") : k === "busy" ? t("err_busy_more") : "";
  $("error-more").textContent = more;
  $("error-more").hidden = !more;
  $("retry-camera").hidden = k === "unsupported";
  $("copy-link").hidden = !(k === "notfound" || k === "unsupported") || !navigator.clipboard;
}

function setStartBusy(busy) {
  const btn = $("start-camera");
  btn.disabled = busy;
  btn.querySelector(".btn-label").textContent = t(busy ? "starting_camera" : "start_camera");
  $("retry-camera").disabled = busy;
}

/** The device's abilities, for the agent's torch and zoom controls. */
async function sendCapabilities() {
  const track = videoTrack();
  if (!client || !track) return;
  const caps = track.getCapabilities ? track.getCapabilities() : {};
  const msg = { type: "device.capabilities", torch: caps.torch === true || (Array.isArray(caps.torch) && caps.torch.includes(true)) };
  if (caps.zoom && typeof caps.zoom.max === "number" && caps.zoom.max > caps.zoom.min) {
    msg.zoom = { min: caps.zoom.min, max: caps.zoom.max, step: caps.zoom.step || 0.1 };
  }
  const photo = await photoCapabilities(track);
  if (photo) msg.photo = photo;
  else if (caps.width && caps.width.max && caps.height && caps.height.max) {
    msg.photo = { width: caps.width.max, height: caps.height.max };
  }
  if (videoTrack() !== track) return;
  // Not queued: every welcome and every arrival of the agent sends it again anyway.
  client.send(msg, { queue: false }).catch((e) => console.info("device.capabilities refused:", e.code || e));
}

async function photoCapabilities(track) {
  if (typeof ImageCapture !== "function") return null;
  try {
    const pc = await withTimeout(new ImageCapture(track).getPhotoCapabilities(), 2000);
    if (pc && pc.imageWidth && pc.imageWidth.max && pc.imageHeight && pc.imageHeight.max) {
      return { width: pc.imageWidth.max, height: pc.imageHeight.max };
    }
  } catch {
    /* not supported by this camera */
  }
  return null;
}

/** The agent's camera command: torch and zoom where the device has them, or the other camera. */
async function onCameraCommand(m) {
  if (!S.stream) {
    S.pendingCamera = { ...(S.pendingCamera || {}), ...m }; // applied once the camera starts
    if (m.facing === "environment" || m.facing === "user") S.facing = m.facing;
    return;
  }
  if ((m.facing === "environment" || m.facing === "user") && m.facing !== S.facing) {
    await switchFacing(m.facing);
  }
  const track = videoTrack();
  if (!track || !track.getCapabilities) return;
  const caps = track.getCapabilities();
  let changed = false;
  if (typeof m.torch === "boolean" && caps.torch) {
    S.torch = m.torch;
    changed = true;
  }
  if (typeof m.zoom === "number" && caps.zoom && typeof caps.zoom.max === "number") {
    S.zoom = Math.min(caps.zoom.max, Math.max(caps.zoom.min, m.zoom));
    changed = true;
  }
  if (changed) await applyDeviceSettings(track);
}

/** applyConstraints replaces the whole set, so the size constraints go along with torch and zoom. */
function constraintsWithDevice(base) {
  const adv = {};
  if (S.torch !== undefined) adv.torch = S.torch;
  if (S.zoom !== undefined) adv.zoom = S.zoom;
  const c = { ...base };
  delete c.advanced;
  if (Object.keys(adv).length) c.advanced = [adv];
  return c;
}

async function applyDeviceSettings(track) {
  try {
    await track.applyConstraints(constraintsWithDevice(track.getConstraints()));
  } catch (e) {
    console.warn("applyConstraints (torch/zoom) failed", e);
  }
}

async function switchFacing(facing) {
  const old = S.stream;
  const audio = old ? old.getAudioTracks() : [];
  const prevFacing = S.facing;
  // Many phones cannot open two cameras at once: release this one first.
  if (old) for (const tr of old.getVideoTracks()) tr.stop();
  let video;
  try {
    video = await navigator.mediaDevices.getUserMedia({ video: videoConstraints(facing), audio: false });
    S.facing = facing;
  } catch (e) {
    console.warn("switching camera failed", e);
    try {
      video = await navigator.mediaDevices.getUserMedia({ video: videoConstraints(prevFacing), audio: false });
    } catch (e2) {
      showCameraError(e2);
      return;
    }
  }
  await useStream(new MediaStream([...video.getVideoTracks(), ...audio]));
  renderGuide();
  sendCapabilities();
}

// ---------------------------------------------------------------- capture requests

function onCaptureRequest(m) {
  const rid = m.request_id;
  if (typeof rid !== "string" || !rid) return;
  if (m.slot_id) S.currentSlot = m.slot_id;
  if (m.area) S.currentTarget = { area: m.area, angle: m.angle };
  renderChecklist();
  const known = S.requests.get(rid);
  if (known) {
    // The same request again: never a second picture for it. Resend the kept bytes if they are not
    // in yet; take the still again only if none was ever taken (nothing was uploaded under this id).
    if (!known.running && !known.done) runJob(known);
    return;
  }
  const meta = { area: m.area, angle: m.angle, request_id: rid, source: "customer_still" };
  if (m.slot_id) meta.slot_id = m.slot_id;
  const job = { rid, meta, blob: null, done: false, running: false };
  S.requests.set(rid, job);
  runJob(job);
}

async function runJob(job) {
  job.running = true;
  try {
    if (!job.blob) {
      if (!S.stream || S.screen !== "camera") {
        return failJob(job, "camera_unavailable", "the customer has not started the camera");
      }
      flash();
      shotStatus("busy", t("capturing"));
      let still;
      const t0 = performance.now();
      try {
        still = await takeStill(videoTrack(), $("local-video"), constraintsWithDevice);
      } catch (e) {
        return failJob(job, e.code || "still_failed", `still: ${e.name || ""} ${e.message || e}`.trim());
      }
      job.blob = still.blob;
      job.size = still;
      console.info(
        `still for ${job.rid}: ${still.width}x${still.height} ${still.blob.type} ${still.blob.size} B via ${still.via} in ${Math.round(performance.now() - t0)} ms`,
      );
    }
    shotStatus("busy", t("uploading"));
    const result = await uploadStill({
      sessionId: S.sessionId,
      token,
      requestId: job.rid,
      meta: job.meta,
      blob: job.blob,
      onRetry: () => shotStatus("busy", t("upload_retrying")),
      isCancelled: () => S.ended != null,
    });
    if (result.ok) {
      console.info(`upload for ${job.rid} done`);
      job.done = true;
      job.blob = null; // acknowledged: the server has these bytes under this request id
      // The toast (from this answer or the capture.created event, whichever came first) confirms it.
      if (result.capture && result.capture.id) {
        addCapture(result.capture, true);
        shotStatus(null);
      } else {
        shotStatus("done", t("uploaded"), 2000);
      }
    } else if (result.code === "request_fulfilled") {
      job.done = true; // someone (the agent's frame grab) filled it already
      job.blob = null;
      shotStatus(null);
    } else if (result.code === "cancelled" || result.code === "session_closed" || result.code === "session_expired") {
      shotStatus(null);
    } else {
      // A refusal the server answered (an HTTP status) it reports to the agent itself.
      const reported = result.status != null;
      return failJob(job, result.code || "upload_failed", result.message || "upload failed", reported);
    }
  } finally {
    job.running = false;
  }
}

function failJob(job, code, message, reportedByServer = false) {
  console.warn(`capture ${job.rid} failed: ${code} ${message}`);
  shotStatus("failed", t("upload_failed"), 5000);
  // The agent's console falls back to grabbing a frame from the video. An upload the server
  // refused, it has reported to the agent already (`capture.failed` with the server's code);
  // what never reached it (no camera, no still, the network) only this page can report.
  if (reportedByServer) return;
  client
    .send({ type: "capture.failed", request_id: job.rid, code, message: String(message).slice(0, 500) })
    .catch((e) => console.info("capture.failed refused:", e.code || e));
}

let shotTimer = null;
function shotStatus(kind, text, hideAfterMs) {
  const el = $("shot-status");
  clearTimeout(shotTimer);
  if (!kind) {
    el.hidden = true;
    return;
  }
  el.dataset.kind = kind;
  $("shot-status-text").textContent = text;
  el.hidden = S.screen !== "camera";
  if (hideAfterMs) shotTimer = setTimeout(() => (el.hidden = true), hideAfterMs);
}

function flash() {
  const f = $("flash");
  f.classList.remove("on");
  void f.offsetWidth; // restart the animation
  f.classList.add("on");
  if (navigator.vibrate) {
    try {
      navigator.vibrate(30);
    } catch {
      /* not allowed */
    }
  }
}

// ---------------------------------------------------------------- mute

function renderMute() {
  const btn = $("mute");
  const hasMic = S.stream && S.stream.getAudioTracks().length > 0;
  btn.hidden = !hasMic;
  btn.setAttribute("aria-pressed", String(S.muted));
  $("mute-use").setAttribute("href", S.muted ? "#i-mic-off" : "#i-mic");
  $("mute-label").textContent = t(S.muted ? "unmute" : "mute");
  $("mic-warning").hidden = !(S.screen === "camera" && S.micMissing);
}

function toggleMute() {
  S.muted = !S.muted;
  if (S.stream) for (const tr of S.stream.getAudioTracks()) tr.enabled = !S.muted;
  renderMute();
}

// ---------------------------------------------------------------- wake lock

async function requestWakeLock() {
  if (!("wakeLock" in navigator) || !S.stream || document.visibilityState !== "visible") return;
  if (S.wakeLock && !S.wakeLock.released) return;
  try {
    S.wakeLock = await navigator.wakeLock.request("screen");
  } catch (e) {
    console.info("wake lock unavailable:", e.name || e);
  }
}

function releaseWakeLock() {
  if (S.wakeLock) S.wakeLock.release().catch(() => {});
  S.wakeLock = null;
}

// ---------------------------------------------------------------- the end

function endSession(reason) {
  if (S.ended) return;
  S.ended = reason;
  stopCamera();
  if (call) call.close();
  if (client && client.state !== "closed") client.close();
  S.guide = {};
  $("toast").hidden = true;
  shotStatus(null);
  renderAll();
  show("ended");
}

function renderEnded() {
  const r = S.ended;
  if (!r) return;
  let title;
  let body;
  let warn = false;
  if (r === "session_expired") {
    title = t("expired_title");
    body = t("expired_body");
  } else if (r === "replaced") {
    title = t("replaced_title");
    body = t("replaced_body");
    warn = true;
  } else if (r === "unauthorized" || r === "forbidden" || r === "invalid") {
    title = t("invalid_title");
    body = t("invalid_body");
    warn = true;
  } else {
    title = t("ended_title");
    body = t("ended_body");
  }
  $("ended-title").textContent = title;
  $("ended-body").textContent = body;
  $("ended-icon").dataset.kind = warn ? "warn" : "ok";
  $("ended-icon").querySelector("use").setAttribute("href", warn ? "#i-warn" : "#i-check");
  $("ended-actions").hidden = r !== "replaced";
}

// ---------------------------------------------------------------- helpers

// ---------------------------------------------------------------- start

// A reload in the middle of the call (or the browser discarding a background tab) should not send
// the customer back to the explainer: when this tab already started the camera for this link and
// the permission is still granted, start it again by itself.
const STARTED_KEY = "capturelink.camera_started";

function rememberCameraStarted() {
  try {
    sessionStorage.setItem(STARTED_KEY, token);
  } catch {
    /* storage disabled */
  }
}

async function resumeCameraIfStarted() {
  let started = false;
  try {
    started = sessionStorage.getItem(STARTED_KEY) === token;
  } catch {
    return;
  }
  if (!started || !navigator.permissions || !navigator.mediaDevices) return;
  try {
    const cam = await navigator.permissions.query({ name: "camera" });
    if (cam.state === "granted" && S.screen === "intro" && !S.ended) startCamera();
  } catch {
    /* this browser cannot query the camera permission: the customer taps Start again */
  }
}

function init() {
  setLocale(S.locale);
  show("intro");

  $("start-camera").addEventListener("click", startCamera);
  $("retry-camera").addEventListener("click", startCamera);
  $("mute").addEventListener("click", toggleMute);
  $("sheet-toggle").addEventListener("click", () => setSheetExpanded($("sheet").dataset.expanded !== "true"));
  $("continue-here").addEventListener("click", () => location.reload());
  $("copy-link").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(location.href);
      $("copy-link").querySelector("span").textContent = t("link_copied");
    } catch {
      /* clipboard refused */
    }
  });

  if (!token) {
    S.ended = "invalid";
    renderAll();
    show("ended");
    document.querySelector('[data-testid="connection-status"]').dataset.state = "closed";
    return;
  }

  client = new SessionClient({ url: wsUrl(location, token), token });
  call = new Call({ client, polite: true, receiveAudio: true }); // hear the agent even without a microphone
  client.addEventListener("state", (e) => onState(e.detail));
  client.addEventListener("welcome", (e) => onWelcome(e.detail));
  client.addEventListener("event", (e) => onEvent(e.detail));
  client.addEventListener("error", (e) => {
    // peer_absent: a call signal while the agent is away (expected before they join)
    if (e.detail.code !== "peer_absent") console.info("server error", e.detail);
  });
  call.addEventListener("track", (e) => onRemoteTrack(e.detail));
  client.connect();
  resumeCameraIfStarted();

  const video = $("local-video");
  video.addEventListener("resize", layoutGuideBox);
  video.addEventListener("loadedmetadata", layoutGuideBox);
  if (typeof ResizeObserver === "function") new ResizeObserver(layoutGuideBox).observe(video);
  window.addEventListener("resize", layoutGuideBox);
  window.addEventListener("orientationchange", layoutGuideBox);

  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") {
      requestWakeLock();
      if (client) client.retryNow();
    }
  });
  window.addEventListener("online", () => {
    renderStatus();
    if (client) client.retryNow();
  });
  window.addEventListener("offline", renderStatus);
  window.addEventListener("hashchange", () => location.reload());
  window.addEventListener("pageshow", (e) => {
    if (e.persisted) location.reload(); // back from the back/forward cache with a closed client
  });
  window.addEventListener("pagehide", () => {
    // Leaving the page: let the agent see it at once rather than after the heartbeat.
    if (client && !S.ended) client.close();
  });
}

function onRemoteTrack(ev) {
  const stream = (ev.streams && ev.streams[0]) || new MediaStream([ev.track]);
  const audio = $("remote-audio");
  if (audio.srcObject !== stream) audio.srcObject = stream;
  audio.play().catch(() => {}); // before the first tap the browser may refuse; startCamera plays it
  const videos = stream.getVideoTracks();
  const rv = $("remote-video");
  if (videos.length) {
    rv.srcObject = new MediaStream(videos);
    rv.play().catch(() => {});
    const update = () => ($("remote").hidden = !videos.some((v) => v.readyState === "live" && !v.muted));
    for (const v of videos) {
      v.addEventListener("mute", update);
      v.addEventListener("unmute", update);
      v.addEventListener("ended", update);
    }
    update();
  }
}

init();
