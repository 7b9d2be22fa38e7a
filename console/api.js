// The console's only way to postbox: its public, documented HTTP API (see /docs).
//
// URLs are relative to the console's own address (/console/ -> /), so the console also works
// behind a proxy that serves postbox under a path prefix. The API key, when one is needed, is
// kept in sessionStorage (gone when the tab closes) and sent as `Authorization: Bearer`.

const KEY = "postbox.apiKey";
const root = new URL("../", document.baseURI);
const listeners = new Set();

/** The stored API key, if any. */
export function apiKey() {
  try {
    return sessionStorage.getItem(KEY) || "";
  } catch {
    return "";
  }
}

/** Store (or, with "", forget) the API key, and tell whoever listens. */
export function setApiKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY, key);
    else sessionStorage.removeItem(KEY);
  } catch {
    // Storage refused (private mode): the key lives as long as this page.
  }
  for (const f of listeners) f(key);
}

/** Call `f(key)` whenever the key changes. */
export function onKeyChange(f) {
  listeners.add(f);
}

/**
 * Call the API. Resolves to `{status, ok, body, problem}`: `body` is the parsed JSON (or null),
 * `problem` the RFC 9457 problem document of an error answer (or a made-up one when the
 * network failed, with status 0). Never throws.
 */
export async function call(path, { method = "GET", json, signal } = {}) {
  const headers = { Accept: "application/json, application/problem+json" };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = typeof json === "string" ? json : JSON.stringify(json);
  }
  let res;
  try {
    res = await fetch(new URL(path.replace(/^\//, ""), root), {
      method, headers, body, signal, cache: "no-store", credentials: "omit",
    });
  } catch (e) {
    if (e && e.name === "AbortError") throw e;
    return {
      status: 0, ok: false, body: null,
      problem: { title: "postbox did not answer", detail: String(e && e.message || e), status: 0 },
    };
  }
  let parsed = null;
  const text = await res.text();
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = null;
    }
  }
  const problem = res.ok ? null : (parsed && parsed.title ? parsed : {
    title: `HTTP ${res.status}`, detail: text.slice(0, 300), status: res.status,
  });
  return { status: res.status, ok: res.ok, body: parsed, problem };
}

/** `?a=1&b=2` from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** `/v1/events/{id}` (plus `?source=`) of an event record. */
export function eventPath(id, source) {
  return `/v1/events/${encodeURIComponent(id)}${source ? query({ source }) : ""}`;
}
