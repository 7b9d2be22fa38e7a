// Events: open one by id, or search by delivery state, type, source, ordering key, id and
// commit time (GET /v1/events, newest first here), page by page.

import { call, query } from "../api.js";
import { accessView } from "../auth.js";
import {
  badge, field, fill, fromLocalInput, h, heading, problemView, select, time, toLocalInput,
} from "../ui.js";

const FILTERS = ["status", "type", "source", "key", "id", "since", "until", "order"];

/** Link to an event's page. */
export function eventLink(e) {
  return `#/events/${encodeURIComponent(e.id)}${query({ source: e.source })}`;
}

/** The search form, filled from `params`; submitting it changes the hash to `base` + query. */
export function searchForm(params, { base, statuses, withId = true, typeList = "type-list" }) {
  const inputs = {
    type: h("input", { name: "type", value: params.get("type") || "", list: typeList, autocomplete: "off" }),
    source: h("input", { name: "source", value: params.get("source") || "", autocomplete: "off" }),
    key: h("input", { name: "key", value: params.get("key") || "", autocomplete: "off" }),
    id: withId ? h("input", { name: "id", value: params.get("id") || "", autocomplete: "off" }) : null,
    since: h("input", { name: "since", type: "datetime-local", value: toLocalInput(params.get("since")) }),
    until: h("input", { name: "until", type: "datetime-local", value: toLocalInput(params.get("until")) }),
  };
  const status = statuses ? select("status", statuses, params.get("status") || statuses[0][0]) : null;
  const order = select("order", [["desc", "Newest first"], ["asc", "Oldest first"]], params.get("order") || "desc");
  const datalist = h("datalist", { id: typeList });
  call("/v1/schemas").then((r) => {
    if (r.ok && r.body) {
      fill(datalist, r.body.schemas.map((s) => h("option", { value: s.type })));
    }
  });
  const form = h("form", {
    class: "panel search", role: "search",
    onsubmit: (e) => {
      e.preventDefault();
      const q = {
        status: status ? status.value : undefined,
        type: inputs.type.value.trim(),
        source: inputs.source.value.trim(),
        key: inputs.key.value.trim(),
        id: inputs.id ? inputs.id.value.trim() : undefined,
        since: fromLocalInput(inputs.since.value),
        until: fromLocalInput(inputs.until.value),
        order: order.value,
      };
      location.hash = `${base}${query(q)}`;
    },
  },
  h("div", { class: "fields" },
    status ? field("Status", status) : null,
    field("Type", inputs.type, "Exact, without version"),
    field("Source", inputs.source),
    field("Ordering key", inputs.key),
    inputs.id ? field("Event id", inputs.id) : null,
    field("Committed from", inputs.since),
    field("Committed before", inputs.until),
    field("Order", order)),
  datalist,
  h("div", { class: "actions" },
    h("a", { href: `${base}`, class: "button" }, "Clear"),
    h("button", { type: "submit", class: "primary" }, "Search")));
  return form;
}

/** The API query for the route's filters (and cursor). */
export function listQuery(params, defaults) {
  const q = { ...defaults };
  for (const k of [...FILTERS, "cursor"]) {
    if (params.get(k)) q[k] = params.get(k);
  }
  return q;
}

/** A table of events; `extra(e)` adds cells of a last column. */
export function eventTable(events, { caption, extra, extraHeader, showError = false }) {
  return h("div", { class: "table-wrap", tabindex: "0", "aria-label": caption },
    h("table", { class: "events" },
      h("caption", { class: "visually-hidden" }, caption),
      h("thead", {}, h("tr", {},
        ["Committed", "Event id", "Type", "Source", "Key", "Status", "Attempts"]
          .concat(showError ? ["Last error"] : [])
          .concat(extra ? [extraHeader] : [])
          .map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, events.map((e) => h("tr", { dataset: { id: e.id, source: e.source } },
        h("td", {}, time(e.created_at)),
        h("td", {}, h("a", { href: eventLink(e), class: "mono" }, e.id)),
        h("td", {}, `${e.type} ${e.version}`),
        h("td", { class: "mono" }, e.source),
        h("td", { class: "mono" }, e.key || "—"),
        h("td", { class: "status-cell" }, badge(e.status)),
        h("td", { class: "num attempts-cell" }, String(e.attempts)),
        showError ? h("td", { class: "error-cell" }, e.last_error || "—") : null,
        extra ? h("td", {}, extra(e)) : null)))));
}

/** "Next page" and "First page" links for a result page. */
export function pager(base, params, nextCursor) {
  const here = Object.fromEntries([...params.entries()].filter(([k]) => k !== "cursor"));
  return h("nav", { class: "pager", "aria-label": "Pages" },
    params.get("cursor") ? h("a", { href: `${base}${query(here)}`, class: "button" }, "First page") : null,
    nextCursor ? h("a", { href: `${base}${query({ ...here, cursor: nextCursor })}`, class: "button" }, "Next page") : null);
}

function findById() {
  const input = h("input", { name: "event-id", id: "find-id", autocomplete: "off", required: true, class: "mono" });
  return h("form", {
    class: "panel find", role: "search", "aria-label": "Find an event by id",
    onsubmit: (e) => {
      e.preventDefault();
      const id = input.value.trim();
      if (id) location.hash = `#/events/${encodeURIComponent(id)}`;
    },
  },
  h("div", { class: "inline" },
    field("Open an event by id", input),
    h("button", { type: "submit", class: "primary" }, "Open")));
}

export function render(main, route) {
  const params = route.params;
  const results = h("section", { class: "results", "aria-live": "polite", "aria-busy": "true" },
    h("p", { class: "muted" }, "Loading…"));
  fill(main,
    heading("Events"),
    findById(),
    h("h2", {}, "Search"),
    searchForm(params, {
      base: "#/events",
      statuses: [["any", "Any"], ["pending", "Pending"], ["published", "Published"], ["dead", "Dead"]],
    }),
    results);
  const controller = new AbortController();
  (async () => {
    const q = listQuery(params, { status: "any", order: "desc", limit: 50 });
    const res = await call(`/v1/events${query(q)}`, { signal: controller.signal });
    results.setAttribute("aria-busy", "false");
    if (!res.ok) {
      fill(results, accessView(res) || problemView(res.problem));
      return;
    }
    const events = res.body.events;
    fill(results,
      h("p", { class: "count" }, events.length
        ? `${events.length}${res.body.next_cursor ? "+" : ""} event${events.length === 1 ? "" : "s"} on this page`
        : "No event matches."),
      events.length ? eventTable(events, { caption: "Events found" }) : null,
      pager("#/events", params, res.body.next_cursor));
  })().catch(() => {});
  return () => controller.abort();
}
