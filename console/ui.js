// Small DOM helpers shared by the pages. Everything is built with createElement and
// textContent: no HTML string ever carries data, so nothing an event contains can run as code.

/** `h("a", {href: "#/x", class: "c", onclick: f}, "text", child, ...)`. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replace the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const numbers = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const decimals = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });

/** A count: `12,345`, or an em dash when unknown. */
export function count(n) {
  return n === null || n === undefined ? "—" : numbers.format(n);
}

/** A rate or small figure with up to two decimals. */
export function decimal(n) {
  return n === null || n === undefined ? "—" : decimals.format(n);
}

/** Seconds as `0.012 s`, `4.2 s`, `3 min 10 s`, `2 h 5 min`. */
export function duration(s) {
  if (s === null || s === undefined) return "—";
  if (s < 0.001 && s > 0) return "< 1 ms";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${decimals.format(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours} h ${m % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

/** A `<time>` showing the local time, with the exact RFC 3339 value as its title. */
export function time(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  const shown = Number.isNaN(d.getTime()) ? iso : d.toLocaleString(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
  return h("time", { datetime: iso, title: iso }, shown);
}

/** A delivery state as a labelled badge (the word is always there; colour only helps). */
export function badge(status) {
  return h("span", { class: `badge badge-${status}`, dataset: { status } }, status);
}

/** Pretty JSON in a scrollable, focusable block. */
export function jsonBlock(value, label) {
  return h("pre", { class: "json", tabindex: "0", "aria-label": label },
    JSON.stringify(value, null, 2));
}

/**
 * An RFC 9457 problem as the API sent it: title, detail, and every `errors` entry with its
 * pointer.
 */
export function problemView(problem, extra) {
  const errors = Array.isArray(problem.errors) ? problem.errors : [];
  return h("div", { class: "problem", role: "alert" },
    h("p", { class: "problem-title" },
      h("strong", {}, problem.title || "Error"),
      problem.status ? ` (${problem.status}${problem.type ? ` ${problem.type}` : ""})` : ""),
    problem.detail ? h("p", {}, problem.detail) : null,
    errors.length ? h("table", { class: "errors" },
      h("caption", { class: "visually-hidden" }, "Errors"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Pointer"), h("th", { scope: "col" }, "Message"))),
      h("tbody", {}, errors.map((e) => h("tr", {},
        h("td", {}, h("code", { class: "pointer" }, e.pointer === "" ? "(the whole body)" : e.pointer)),
        h("td", {}, e.message))))) : null,
    Array.isArray(problem.available_versions) && problem.available_versions.length
      ? h("p", {}, `Versions that exist: ${problem.available_versions.join(", ")}`) : null,
    extra || null);
}

/** Say `text` to screen readers (and show nothing). */
export function announce(text) {
  const live = document.getElementById("live");
  if (live) {
    live.textContent = "";
    setTimeout(() => { live.textContent = text; }, 50);
  }
}

/**
 * Ask for confirmation in a modal `<dialog>` (focus stays inside, Escape cancels). Resolves
 * true when `confirmLabel` is chosen.
 */
export function confirmDialog({ title, body, confirmLabel, danger = false }) {
  return new Promise((resolve) => {
    const ok = h("button", { type: "submit", value: "ok", class: danger ? "danger" : "primary" }, confirmLabel);
    const cancel = h("button", { type: "submit", value: "cancel" }, "Cancel");
    const dlg = h("dialog", { class: "confirm", "aria-labelledby": "confirm-title" },
      h("form", { method: "dialog" },
        h("h2", { id: "confirm-title" }, title),
        Array.isArray(body) ? body.map((p) => h("p", {}, p)) : h("p", {}, body),
        h("div", { class: "actions" }, cancel, ok)));
    dlg.addEventListener("close", () => {
      const yes = dlg.returnValue === "ok";
      dlg.remove();
      resolve(yes);
    });
    document.body.append(dlg);
    dlg.showModal();
    cancel.focus();
  });
}

/** A labelled form field. */
export function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  const hintEl = hint ? h("small", { id: `${id}-hint`, class: "hint" }, hint) : null;
  if (hintEl) input.setAttribute("aria-describedby", hintEl.id);
  return h("div", { class: "field" }, h("label", { for: id }, label), input, hintEl);
}

/** `<select>` of `[value, label]` pairs. */
export function select(name, options, value) {
  const el = h("select", { name }, options.map(([v, label]) => h("option", { value: v }, label)));
  el.value = value;
  return el;
}

/** A `datetime-local` value (local time) from an RFC 3339 time, and back. */
export function toLocalInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function fromLocalInput(v) {
  if (!v) return "";
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? "" : d.toISOString();
}

/** The page heading; focused after navigation so keyboard and screen-reader users land on it. */
export function heading(text) {
  return h("h1", { tabindex: "-1", class: "page-title" }, text);
}
