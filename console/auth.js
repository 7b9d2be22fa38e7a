// What a page shows when the API says no: a form for the API key after a 401, an explanation
// after a 403 (a key without admin scope sees what its own API allows, nothing more).

import { apiKey, setApiKey } from "./api.js";
import { h } from "./ui.js";

/** The key form: the key goes to sessionStorage only, and the page is rendered again with it. */
export function keyForm(message) {
  const input = h("input", {
    type: "password", name: "key", autocomplete: "off", spellcheck: "false", required: true,
    id: "api-key-input",
  });
  const form = h("form", {
    class: "panel key-form",
    onsubmit: (e) => {
      e.preventDefault();
      setApiKey(input.value.trim());
    },
  },
  h("h2", {}, "API key needed"),
  h("p", {}, message || "This postbox has API keys configured. Enter yours to see this page."),
  h("p", { class: "muted" }, "It is kept in this browser tab only (sessionStorage) and sent as a Bearer token."),
  h("div", { class: "field" }, h("label", { for: "api-key-input" }, "API key"), input),
  h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Use this key")));
  requestAnimationFrame(() => input.focus());
  return form;
}

/** The view for a 401 or 403 answer, or null for any other. */
export function accessView(res) {
  if (res.status === 401) {
    return keyForm(apiKey()
      ? "postbox did not accept the stored API key. Enter another one."
      : undefined);
  }
  if (res.status === 403) {
    return h("div", { class: "panel notice", role: "alert" },
      h("h2", {}, "Not allowed with this key"),
      h("p", {}, res.problem && res.problem.detail),
      h("p", {}, "Listing, searching and redelivering events need a key with admin scope. ",
        "With this key you can still open an event of the types it may send by its id (Events page)."));
  }
  return null;
}
