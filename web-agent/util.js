// Small helpers shared by the two views of the console: DOM building, REST calls, translations,
// toasts and a confirm dialog. Nothing here touches the session connection.

import { makeT } from "/shared/i18n.js";
import { STRINGS } from "./strings.js";

/** Current UI language and translator; `setLocale` swaps both and re-renders via listeners. */
const i18nState = { locale: "en", t: (k) => k, listeners: new Set() };

export function setLocale(locale) {
  i18nState.locale = locale;
  i18nState.t = makeT(STRINGS, locale);
  document.documentElement.lang = locale;
  applyStrings(document);
  for (const fn of i18nState.listeners) fn(locale);
}
export const locale = () => i18nState.locale;
export const t = (key, vars) => i18nState.t(key, vars);
export function onLocaleChange(fn) {
  i18nState.listeners.add(fn);
}

/** Fills `[data-i18n]` text and `[data-i18n-placeholder|title|aria-label]` attributes. */
export function applyStrings(root) {
  for (const n of root.querySelectorAll("[data-i18n]")) n.textContent = t(n.dataset.i18n);
  for (const [attr, key] of [
    ["placeholder", "i18nPlaceholder"],
    ["title", "i18nTitle"],
    ["aria-label", "i18nAriaLabel"],
    ["alt", "i18nAlt"],
  ]) {
    const sel = `[data-${key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase())}]`;
    for (const n of root.querySelectorAll(sel)) n.setAttribute(attr, t(n.dataset[key]));
  }
}

/** `h("button.btn.primary", {type: "button", onclick}, "text", child)`. */
export function h(tag, attrs, ...children) {
  const [head, ...classes] = tag.split(".");
  const [name, id] = head.split("#");
  const e = document.createElement(name || "div");
  if (id) e.id = id;
  if (classes.length) e.className = classes.join(" ");
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k === "text") e.textContent = v;
    else if (v === true) e.setAttribute(k, "");
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

export const $ = (sel, root = document) => root.querySelector(sel);

/** A random UUID, also where `crypto.randomUUID` is missing (plain http on a LAN address). */
export function uuid() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const x = [...b].map((v) => v.toString(16).padStart(2, "0")).join("");
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code);
    this.status = status;
    this.code = code;
  }
}

/** A REST call to `/api/v1`; JSON in and out; problem+json refusals become `ApiError`s. */
export async function api(path, { method = "GET", auth, body, headers = {}, raw = false } = {}) {
  const h2 = { ...headers };
  if (auth) h2.Authorization = `Bearer ${auth}`;
  let payload = body;
  if (body !== undefined && !(body instanceof FormData) && typeof body !== "string") {
    h2["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(`/api/v1${path}`, { method, headers: h2, body: payload });
  } catch (e) {
    throw new ApiError(0, "network", t("err_network"));
  }
  if (!res.ok) {
    let code = `http_${res.status}`;
    let message = res.statusText;
    try {
      const p = await res.json();
      code = p.code || code;
      message = p.detail || p.title || message;
    } catch {
      /* not JSON */
    }
    throw new ApiError(res.status, code, message);
  }
  if (raw) return res;
  if (res.status === 204) return null;
  return res.json();
}

/** A human message for an error, translated where it is ours. */
export function errorText(e) {
  if (e instanceof ApiError) return e.code === "network" ? t("err_network") : `${e.message} (${e.code})`;
  return e?.message || String(e);
}

// ---- toasts -------------------------------------------------------------------------------------

export function toast(message, kind = "info", ms = 5000) {
  let box = $("#toasts");
  if (!box) {
    box = h("div#toasts.toasts", { role: "status", "aria-live": "polite" });
    document.body.append(box);
  }
  const n = h(`div.toast.toast-${kind}`, {}, message);
  box.append(n);
  setTimeout(() => n.classList.add("leaving"), ms);
  setTimeout(() => n.remove(), ms + 300);
}

// ---- modal dialogs ------------------------------------------------------------------------------

/** A modal built on <dialog>: resolves true on confirm, false on cancel / Esc. */
export function confirmDialog({ title, body, yes, danger = true, testid = "confirm" }) {
  return new Promise((resolve) => {
    const dlg = h(
      "dialog.modal",
      { "aria-labelledby": "dlg-title", "data-testid": `${testid}-dialog` },
      h("h2#dlg-title.modal-title", {}, title),
      h("p.modal-body", {}, body),
      h(
        "div.modal-actions",
        {},
        h("button.btn.ghost", { type: "button", value: "no", "data-testid": `${testid}-cancel` }, t("cancel")),
        h(
          `button.btn.${danger ? "danger" : "primary"}`,
          { type: "button", value: "yes", "data-testid": `${testid}-yes` },
          yes,
        ),
      ),
    );
    let answered = false;
    const done = (v) => {
      if (answered) return;
      answered = true;
      dlg.close();
      dlg.remove();
      resolve(v);
    };
    dlg.addEventListener("click", (e) => {
      const b = e.target.closest("button");
      if (b) done(b.value === "yes");
      else if (e.target === dlg) done(false);
    });
    dlg.addEventListener("cancel", (e) => {
      e.preventDefault();
      done(false);
    });
    document.body.append(dlg);
    dlg.showModal();
    dlg.querySelector("button.btn.ghost").focus();
  });
}

export function fmtTime(iso, loc) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const sameDay = d.toDateString() === new Date().toDateString();
  return new Intl.DateTimeFormat(loc, sameDay
    ? { hour: "2-digit", minute: "2-digit" }
    : { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" }).format(d);
}

/** Copies text; falls back to a selected hidden textarea where the Clipboard API is refused. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const ta = h("textarea.offscreen", { readonly: true });
    ta.value = text;
    document.body.append(ta);
    ta.select();
    let ok = false;
    try {
      ok = document.execCommand("copy");
    } catch {
      ok = false;
    }
    ta.remove();
    return ok;
  }
}
