// postbox console: a hash router over four pages, and the API key prompt.
//
// No build step and no dependency: plain ES modules served from the postbox binary. Each page
// is a module exporting `render(main, route)`, which may return a function that stops its
// timers when the page is left.

import { apiKey, onKeyChange, setApiKey } from "./api.js";
import { fill, h } from "./ui.js";
import * as overview from "./pages/overview.js";
import * as events from "./pages/events.js";
import * as eventPage from "./pages/event.js";
import * as dead from "./pages/dead.js";
import * as schemas from "./pages/schemas.js";

const main = document.getElementById("main");
const nav = document.querySelectorAll("header nav a");
let leave = null;

/** `#/events/abc?x=1` -> `{parts: ["events", "abc"], params: URLSearchParams}`. */
function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, q] = raw.split("?", 2);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(q || "") };
}

function pageFor(parts) {
  switch (parts[0]) {
    case undefined:
    case "overview": return [overview, "overview"];
    case "events": return parts.length > 1 ? [eventPage, "events"] : [events, "events"];
    case "dead": return [dead, "dead"];
    case "schemas": return [schemas, "schemas"];
    default: return [null, ""];
  }
}

function route() {
  if (leave) {
    try {
      leave();
    } catch {
      // a page that failed to clean up must not block the next one
    }
    leave = null;
  }
  const r = parseHash();
  const [page, section] = pageFor(r.parts);
  for (const a of nav) {
    if (a.dataset.section === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (!page) {
    fill(main, h("h1", { tabindex: "-1" }, "Not found"), h("p", {}, h("a", { href: "#/overview" }, "Back to the overview")));
    return;
  }
  main.replaceChildren();
  leave = page.render(main, r) || null;
  // Keyboard and screen-reader users land on the new page's heading.
  requestAnimationFrame(() => {
    const title = main.querySelector("h1");
    if (title && document.activeElement !== title && !main.contains(document.activeElement)) {
      title.focus({ preventScroll: true });
    }
  });
}

/** The header's key status: "API key set · Forget", or nothing when none is stored. */
function renderKeyStatus() {
  const box = document.getElementById("auth");
  if (!apiKey()) {
    fill(box, h("span", { class: "muted" }, "No API key"));
    return;
  }
  fill(box,
    h("span", {}, "API key set"),
    h("button", { type: "button", class: "link", onclick: () => setApiKey("") }, "Forget key"));
}

onKeyChange(() => {
  renderKeyStatus();
  route();
});
window.addEventListener("hashchange", route);
renderKeyStatus();
if (!location.hash) history.replaceState(null, "", "#/overview");
route();
