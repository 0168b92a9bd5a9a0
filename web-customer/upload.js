// Uploading a still for a capture.request: POST /api/v1/sessions/{id}/captures, multipart `meta` +
// `image`, with the request id as the Idempotency-Key. The caller keeps the blob until an attempt
// succeeds, and every attempt sends the very same bytes, so one request id can never store two
// different pictures (the server answers a retry of stored bytes with the same capture, and other
// bytes under the same key with 409).

// Four attempts: at once, then after 0.4, 1.2 and 2.8 s (about 6 s including short uploads). Past
// that the agent's console has fallen back to a frame from the video anyway.
export const RETRY_DELAYS_MS = [400, 1200, 2800];
const ATTEMPT_TIMEOUT_MS = 30000; // a 12 MP photo on a weak uplink takes a while

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * opts: sessionId, token, requestId, meta (object), blob, onRetry(attempt), isCancelled(), fetch.
 * Resolves {ok: true, capture} or {ok: false, code, message, status?}. Retries network errors,
 * 408, 429 and 5xx (honouring a short Retry-After); never a 4xx otherwise.
 */
export async function uploadStill(opts) {
  const { onRetry = () => {}, isCancelled = () => false, delays = RETRY_DELAYS_MS } = opts;
  let last = { code: "upload_failed", message: "not sent" };
  for (let attempt = 0; attempt <= delays.length; attempt++) {
    if (attempt > 0) {
      onRetry(attempt);
      await sleep(last.retryAfterMs != null ? Math.min(last.retryAfterMs, 3000) : delays[attempt - 1]);
    }
    if (isCancelled()) return { ok: false, code: "cancelled", message: "cancelled" };
    const r = await uploadOnce(opts);
    if (r.ok || !r.retry) return r;
    last = r;
  }
  return { ok: false, code: "upload_failed", message: last.message, status: last.status };
}

async function uploadOnce({ sessionId, token, requestId, meta, blob, fetch: doFetch = (...a) => fetch(...a) }) {
  const form = new FormData();
  form.append("meta", JSON.stringify(meta));
  const ext = blob.type === "image/png" ? "png" : blob.type === "image/webp" ? "webp" : "jpg";
  form.append("image", blob, `photo.${ext}`);
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), ATTEMPT_TIMEOUT_MS);
  let res;
  try {
    res = await doFetch(`/api/v1/sessions/${encodeURIComponent(sessionId)}/captures`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Idempotency-Key": requestId },
      body: form,
      signal: ctl.signal,
      cache: "no-store",
    });
  } catch (e) {
    return { ok: false, retry: true, message: `network: ${e.message || e}` };
  } finally {
    clearTimeout(timer);
  }
  let body = null;
  try {
    body = await res.json();
  } catch {
    /* no JSON body */
  }
  if (res.ok) return { ok: true, capture: body };
  const code = (body && body.code) || `http_${res.status}`;
  const message = (body && (body.detail || body.title)) || `HTTP ${res.status}`;
  const retry = res.status >= 500 || res.status === 429 || res.status === 408;
  const ra = Number(res.headers.get("Retry-After"));
  return { ok: false, retry, status: res.status, code, message, retryAfterMs: Number.isFinite(ra) && ra > 0 ? ra * 1000 : null };
}
