// The console's home: the API key (asked once, kept in localStorage), the sessions list with
// status and presence, creating a session, and each session's customer link and QR code.

import { pickLocale, label, AREAS, ANGLES } from "/shared/i18n.js";
import {
  $, h, t, api, ApiError, uuid, toast, confirmDialog, fmtTime, copyText, errorText,
  setLocale, locale, onLocaleChange,
} from "./util.js";

const KEY_STORE = "capturelink.agent.apiKey";
const LOCALE_STORE = "capturelink.agent.locale";
const PAGE_SIZE = 20;

const state = {
  key: null,
  items: [],
  cursor: null,
  filter: "",
  loading: false,
  custom: [], // [{area, angle}] for a custom checklist
  lastCreateBody: null,
  lastCreateKey: null,
  created: null, // the session just created (with links)
  detail: new Map(), // id -> presence fetched for list items that lack it
};

function readKey() {
  try {
    return localStorage.getItem(KEY_STORE);
  } catch {
    return null;
  }
}

export function startHome() {
  let stored = null;
  try {
    stored = localStorage.getItem(LOCALE_STORE);
  } catch {
    /* storage off */
  }
  setLocale(stored === "en" || stored === "zh-CN" ? stored : pickLocale(null, navigator.languages));
  document.title = `${t("app_name")} · ${t("app_subtitle")}`;
  $("#home").hidden = false;

  for (const b of document.querySelectorAll("#home .lang-toggle")) {
    b.addEventListener("click", () => {
      const next = locale() === "en" ? "zh-CN" : "en";
      try {
        localStorage.setItem(LOCALE_STORE, next);
      } catch {
        /* storage off */
      }
      setLocale(next);
    });
  }
  onLocaleChange(() => {
    document.title = `${t("app_name")} · ${t("app_subtitle")}`;
    fillVocabSelects();
    renderSessions();
    renderCustom();
    if (state.created) renderCreated();
  });

  $("#key-form").addEventListener("submit", onKeySubmit);
  $("#forget-key").addEventListener("click", onForgetKey);
  $("#status-filter").addEventListener("change", (e) => {
    state.filter = e.target.value;
    loadSessions(true);
  });
  $("#refresh").addEventListener("click", () => loadSessions(true));
  $("#more").addEventListener("click", () => loadSessions(false));
  setupCreateForm();

  state.key = readKey();
  if (state.key) showSignedIn();
  else showKeyCard();

  // Presence changes by itself: refresh the first page now and then, unless the agent paged on.
  setInterval(() => {
    if (document.visibilityState !== "visible" || !state.key || state.loading) return;
    if (state.pages > 1 || document.querySelector("dialog[open]")) return;
    loadSessions(true);
  }, 15000);
}

// ---- API key --------------------------------------------------------------------------------------

function showKeyCard() {
  $("#key-card").hidden = false;
  $("#home-grid").hidden = true;
  $("#forget-key").hidden = true;
  $("#key-input").focus();
}

function showSignedIn() {
  $("#key-card").hidden = true;
  $("#home-grid").hidden = false;
  $("#forget-key").hidden = false;
  loadSessions(true);
}

async function onKeySubmit(e) {
  e.preventDefault();
  const input = $("#key-input");
  const err = $("#key-error");
  const key = input.value.trim();
  err.hidden = true;
  if (!key) {
    input.focus();
    return;
  }
  const btn = e.submitter || $("#key-form button[type=submit]");
  btn.disabled = true;
  btn.textContent = t("key_checking");
  try {
    await api("/sessions?limit=1", { auth: key });
    try {
      localStorage.setItem(KEY_STORE, key);
    } catch {
      /* storage off: kept for this page only */
    }
    state.key = key;
    input.value = "";
    showSignedIn();
  } catch (ex) {
    err.textContent = ex instanceof ApiError && (ex.status === 401 || ex.status === 403)
      ? t("key_refused")
      : errorText(ex);
    err.hidden = false;
  } finally {
    btn.disabled = false;
    btn.textContent = t("key_save");
  }
}

async function onForgetKey() {
  const ok = await confirmDialog({ title: t("key_forget"), body: t("key_forget_confirm"), yes: t("key_forget"), testid: "forget" });
  if (!ok) return;
  try {
    localStorage.removeItem(KEY_STORE);
  } catch {
    /* storage off */
  }
  state.key = null;
  state.items = [];
  renderSessions();
  showKeyCard();
}

/** A refused key (revoked meanwhile) sends the agent back to the key card. */
function handleAuthError(ex) {
  if (ex instanceof ApiError && ex.status === 401) {
    try {
      localStorage.removeItem(KEY_STORE);
    } catch {
      /* storage off */
    }
    state.key = null;
    showKeyCard();
    const err = $("#key-error");
    err.textContent = t("key_refused");
    err.hidden = false;
    return true;
  }
  return false;
}

// ---- sessions list --------------------------------------------------------------------------------

let loadGen = 0;
async function loadSessions(reset) {
  if (!state.key) return;
  const gen = ++loadGen;
  const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (state.filter) q.set("status", state.filter);
  if (!reset && state.cursor) q.set("cursor", state.cursor);
  state.loading = true;
  const more = $("#more");
  more.disabled = true;
  if (reset) $("#sessions-body").setAttribute("aria-busy", "true");
  $("#sessions-error").hidden = true;
  try {
    const page = await api(`/sessions?${q}`, { auth: state.key });
    if (gen !== loadGen) return;
    state.items = reset ? page.items : dedupe([...state.items, ...page.items]);
    state.pages = reset ? 1 : (state.pages || 1) + 1;
    state.cursor = page.next_cursor || null;
    renderSessions();
    fetchMissingPresence(page.items);
  } catch (ex) {
    if (gen !== loadGen) return;
    if (handleAuthError(ex)) return;
    const e = $("#sessions-error");
    e.textContent = errorText(ex);
    e.hidden = false;
  } finally {
    if (gen === loadGen) {
      state.loading = false;
      more.disabled = false;
      $("#sessions-body").removeAttribute("aria-busy");
    }
  }
}

function dedupe(items) {
  const seen = new Set();
  return items.filter((s) => (seen.has(s.id) ? false : (seen.add(s.id), true)));
}

/** List items normally carry `presence`; where one does not, ask for the session itself. */
async function fetchMissingPresence(items) {
  for (const s of items) {
    if (s.presence || !isOpen(s)) continue;
    try {
      const full = await api(`/sessions/${encodeURIComponent(s.id)}`, { auth: state.key });
      state.detail.set(s.id, full.presence);
      renderSessions();
    } catch {
      /* presence stays unknown */
    }
  }
}

const isOpen = (s) => s.status === "created" || s.status === "active";

function presenceOf(s) {
  return s.presence || state.detail.get(s.id) || null;
}

function renderSessions() {
  const body = $("#sessions-body");
  body.replaceChildren(...state.items.map(sessionRow));
  $("#sessions-empty").hidden = state.items.length > 0 || state.loading;
  $("#more").hidden = !state.cursor;
}

function presenceDot(on, who) {
  const text = t(on ? "presence_online" : "presence_offline", { who });
  return h(`span.presence-dot.${on ? "on" : "off"}`, { title: text, "aria-label": text, role: "img" },
    h("span.dot", { "aria-hidden": "true" }), who);
}

function sessionRow(s) {
  const p = presenceOf(s);
  const vehicle = [s.vehicle?.plate, s.customer?.name].filter(Boolean).join(" · ");
  const open = isOpen(s);
  return h(
    "tr",
    { "data-testid": "session-row", "data-session-id": s.id, "data-status": s.status },
    h("td", {},
      h("div.claim-cell", {},
        h("span.claim-ref", {}, s.claim_ref),
        h("span.row-sub", { title: `${s.id} · ${s.created_at}` }, `${fmtTime(s.created_at, locale())} · ${s.id.slice(-8)}`))),
    h("td", {}, vehicle || h("span.muted", {}, "—")),
    h("td", {}, h(`span.badge.status-${s.status}`, { "data-testid": "session-status" }, t(`status_${s.status}`))),
    h(
      "td",
      { "data-testid": "session-presence" },
      p && open
        ? h("span.presence", {}, presenceDot(!!p.agent, t("presence_agent")), presenceDot(!!p.customer, t("presence_customer")))
        : h("span.muted", {}, "—"),
    ),
    h("td.num", {}, s.capture_count ?? "—"),
    h(
      "td.actions-col",
      {},
      h(
        "div.row-actions",
        {},
        open && h("button.btn.primary.small", { type: "button", "data-testid": "session-open", onclick: (e) => openConsole(s, e.currentTarget) }, t("action_open")),
        open && h("button.btn.ghost.small", { type: "button", "data-testid": "session-link", onclick: () => showLinkDialog(s) }, t("action_link")),
        open && h("button.btn.ghost.small.danger-text", { type: "button", "data-testid": "session-close", onclick: () => closeSession(s) }, t("action_close")),
      ),
    ),
  );
}

/** `{agent_url, customer_url}` of a session: the links endpoint, else the session itself. */
async function fetchLinks(id) {
  const eid = encodeURIComponent(id);
  try {
    return await api(`/sessions/${eid}/links`, { auth: state.key });
  } catch (ex) {
    if (!(ex instanceof ApiError) || ex.status !== 404) throw ex;
    const s = await api(`/sessions/${eid}`, { auth: state.key });
    if (!s.agent_url) throw ex;
    return { agent_url: s.agent_url, customer_url: s.customer_url };
  }
}

async function openConsole(s, btn) {
  btn.disabled = true;
  try {
    const links = await fetchLinks(s.id);
    location.assign(links.agent_url);
  } catch (ex) {
    if (!handleAuthError(ex)) toast(`${t("links_failed")} ${errorText(ex)}`, "error");
    btn.disabled = false;
  }
}

async function closeSession(s) {
  const ok = await confirmDialog({
    title: t("close_confirm_title"),
    body: t("close_confirm_body", { claim: s.claim_ref }),
    yes: t("close_confirm_yes"),
    testid: "close",
  });
  if (!ok) return;
  try {
    await api(`/sessions/${encodeURIComponent(s.id)}/close`, { method: "POST", auth: state.key });
    toast(t("closed_ok"), "success");
    loadSessions(true);
  } catch (ex) {
    if (!handleAuthError(ex)) toast(errorText(ex), "error");
  }
}

// ---- customer link + QR -------------------------------------------------------------------------

const qrUrls = new Set();

/** The customer link with a Copy button and its QR code (fetched with the key, shown as blob:). */
function linkBlock(id, customerUrl) {
  const input = h("input.link-input", { readonly: true, "data-testid": "customer-link", "aria-label": t("customer_link"), spellcheck: "false" });
  input.value = customerUrl;
  input.addEventListener("focus", () => input.select());
  const copyBtn = h("button.btn.secondary.small", { type: "button", "data-testid": "copy-link" }, t("copy"));
  copyBtn.addEventListener("click", async () => {
    if (await copyText(customerUrl)) {
      copyBtn.textContent = t("copied");
      copyBtn.classList.add("done");
      setTimeout(() => {
        copyBtn.textContent = t("copy");
        copyBtn.classList.remove("done");
      }, 1800);
    } else {
      toast(t("copy_failed"), "error");
      input.focus();
    }
  });
  const img = h("img.qr", { alt: t("qr_alt"), "data-testid": "customer-qr", width: 200, height: 200 });
  const qrBox = h("div.qr-box.loading", {}, img);
  loadQr(id).then(
    (url) => {
      img.src = url;
      qrBox.classList.remove("loading");
    },
    () => {
      qrBox.classList.remove("loading");
      qrBox.replaceChildren(h("p.muted.small", {}, t("qr_failed")));
    },
  );
  return h(
    "div.link-panel",
    {},
    h("div.link-left", {},
      h("span.field-label", {}, t("customer_link")),
      h("div.copy-row", {}, input, copyBtn),
      h("p.muted.small", {}, t("qr_hint"))),
    qrBox,
  );
}

async function loadQr(id) {
  const res = await api(`/sessions/${encodeURIComponent(id)}/customer-qr.svg`, { auth: state.key, raw: true });
  const blob = await res.blob();
  const url = URL.createObjectURL(blob);
  qrUrls.add(url);
  return url;
}

function releaseQrs() {
  for (const u of qrUrls) URL.revokeObjectURL(u);
  qrUrls.clear();
}

async function showLinkDialog(s) {
  let links;
  try {
    links = await fetchLinks(s.id);
  } catch (ex) {
    if (!handleAuthError(ex)) toast(`${t("links_failed")} ${errorText(ex)}`, "error");
    return;
  }
  const dlg = h(
    "dialog.modal.link-modal",
    { "aria-labelledby": "link-dlg-title", "data-testid": "link-dialog" },
    h("h2#link-dlg-title.modal-title", {}, t("link_title")),
    h("p.muted", {}, t("created_for", { claim: s.claim_ref })),
    linkBlock(s.id, links.customer_url),
    h(
      "div.modal-actions",
      {},
      h("button.btn.ghost", { type: "button", value: "close" }, t("close")),
      h("a.btn.primary", { href: links.agent_url, "data-testid": "open-console" }, t("open_console")),
    ),
  );
  const done = () => {
    dlg.close();
    dlg.remove();
    releaseQrs();
  };
  dlg.addEventListener("click", (e) => {
    if (e.target === dlg || e.target.closest("button[value=close]")) done();
  });
  dlg.addEventListener("cancel", (e) => {
    e.preventDefault();
    done();
  });
  document.body.append(dlg);
  dlg.showModal();
}

// ---- create -----------------------------------------------------------------------------------------

function fillSelect(sel, kind, ids) {
  const keep = sel.value;
  sel.replaceChildren(...ids.map((id) => h("option", { value: id }, label(kind, id, locale()))));
  if (keep) sel.value = keep;
}

function fillVocabSelects() {
  fillSelect($("#custom-area"), "area", AREAS);
  fillSelect($("#custom-angle"), "angle", ANGLES);
}

function setupCreateForm() {
  fillVocabSelects();
  $("#custom-area").value = "front_bumper";
  $("#custom-angle").value = "close_up";
  const form = $("#create-form");
  form.locale.value = locale() === "zh-CN" ? "zh-CN" : "en";
  for (const r of form.querySelectorAll("input[name=checklist]")) {
    r.addEventListener("change", () => {
      $("#custom-pane").hidden = form.checklist.value !== "custom";
    });
  }
  $("#custom-add").addEventListener("click", () => {
    state.custom.push({ area: $("#custom-area").value, angle: $("#custom-angle").value });
    renderCustom();
  });
  form.addEventListener("submit", onCreate);
  $("#created-again").addEventListener("click", () => {
    state.created = null;
    releaseQrs();
    $("#created-pane").hidden = true;
    $("#create-pane").hidden = false;
    form.reset();
    form.locale.value = locale() === "zh-CN" ? "zh-CN" : "en";
    state.custom = [];
    renderCustom();
    $("#custom-pane").hidden = true;
    form.claim_ref.focus();
  });
  renderCustom();
}

function renderCustom() {
  const list = $("#custom-list");
  list.replaceChildren(
    ...state.custom.map((c, i) =>
      h(
        "li.custom-item",
        { "data-testid": "create-custom-item" },
        h("span", {}, `${label("area", c.area, locale())} · ${label("angle", c.angle, locale())}`),
        h("button.icon-btn", {
          type: "button",
          title: t("custom_remove"),
          "aria-label": `${t("custom_remove")}: ${label("area", c.area, locale())}`,
          onclick: () => {
            state.custom.splice(i, 1);
            renderCustom();
          },
        }, "×"),
      )),
  );
  $("#custom-empty").hidden = state.custom.length > 0;
}

async function onCreate(e) {
  e.preventDefault();
  const form = e.target;
  const err = $("#create-error");
  err.hidden = true;
  const claim = form.claim_ref.value.trim();
  if (!claim) {
    form.claim_ref.setAttribute("aria-invalid", "true");
    form.claim_ref.focus();
    return;
  }
  form.claim_ref.removeAttribute("aria-invalid");
  const body = { claim_ref: claim, locale: form.locale.value };
  const plate = form.plate.value.trim();
  if (plate) body.vehicle = { plate };
  const name = form.customer_name.value.trim();
  const phone = form.customer_phone.value.trim();
  if (name || phone) body.customer = { ...(name && { name }), ...(phone && { phone }) };
  if (form.checklist.value === "custom") {
    if (!state.custom.length) {
      err.textContent = t("custom_need_one");
      err.hidden = false;
      return;
    }
    body.checklist = state.custom.map(({ area, angle }) => ({ area, angle }));
  } else {
    body.checklist = "claim_default";
  }
  // The same body retried keeps its Idempotency-Key (a lost answer never makes two sessions).
  const json = JSON.stringify(body);
  if (json !== state.lastCreateBody) {
    state.lastCreateBody = json;
    state.lastCreateKey = uuid();
  }
  const btn = $("#create-submit");
  btn.disabled = true;
  btn.textContent = t("creating");
  try {
    const s = await api("/sessions", {
      method: "POST",
      auth: state.key,
      body: json,
      headers: { "Content-Type": "application/json", "Idempotency-Key": state.lastCreateKey },
    });
    state.lastCreateBody = null;
    state.created = s;
    renderCreated();
    loadSessions(true);
  } catch (ex) {
    if (!handleAuthError(ex)) {
      err.textContent = errorText(ex);
      err.hidden = false;
    }
  } finally {
    btn.disabled = false;
    btn.textContent = t("create_submit");
  }
}

function renderCreated() {
  const s = state.created;
  releaseQrs();
  $("#create-pane").hidden = true;
  $("#created-pane").hidden = false;
  $("#created-for").textContent = t("created_for", { claim: s.claim_ref });
  $("#created-link-block").replaceChildren(linkBlock(s.id, s.customer_url));
  $("#created-open").href = s.agent_url;
}
