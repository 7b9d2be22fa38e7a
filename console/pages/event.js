// One event: its envelope, body, delivery state and timeline (GET /v1/events/{id}), and
// redelivery (POST /v1/events/{id}/redeliver). While it is pending the page follows it.

import { call, eventPath, query } from "../api.js";
import { accessView } from "../auth.js";
import {
  announce, badge, confirmDialog, duration, fill, h, heading, jsonBlock, problemView, time,
} from "../ui.js";
import { eventTable } from "./events.js";

function dl(rows) {
  return h("dl", { class: "facts" }, rows.filter(Boolean).map(([k, v, field]) => [
    h("dt", {}, k),
    h("dd", field ? { dataset: { field } } : {}, v === null || v === undefined || v === "" ? "—" : v),
  ]));
}

function timeline(e) {
  const items = [
    ["Event time (set by the sender, or when postbox accepted it)", time(e.time)],
    ["Committed to the outbox: postbox answered 202", time(e.created_at)],
  ];
  if (e.attempts > 0 || e.last_error) {
    items.push([
      `${e.attempts} publish attempt${e.attempts === 1 ? "" : "s"}${e.status === "published" ? ", the last one confirmed" : ""}`,
      e.last_error ? h("span", {}, "Last error: ", h("code", {}, e.last_error)) : "",
    ]);
  }
  if (e.status === "pending") {
    items.push([e.attempts ? "Next attempt" : "Due for publishing", time(e.next_attempt_at)]);
  } else if (e.status === "published") {
    const lag = (Date.parse(e.published_at) - Date.parse(e.created_at)) / 1000;
    items.push([`Published: confirmed by the broker, ${duration(lag)} after the commit`, time(e.published_at)]);
  } else if (e.status === "dead") {
    items.push(["Dead: no attempts left (redeliver to try again)", time(e.updated_at)]);
  }
  return h("ol", { class: "timeline" }, items.map(([what, when]) => h("li", {},
    h("span", { class: "when" }, when), h("span", { class: "what" }, what))));
}

function view(e, onRedeliver) {
  const envelope = { ...e.event };
  delete envelope.data;
  const hasData = e.event && Object.prototype.hasOwnProperty.call(e.event, "data");
  return [
    h("p", { class: "subtitle" },
      h("span", { dataset: { field: "status" } }, badge(e.status)), " ",
      h("strong", {}, `${e.type} ${e.version}`), " from ", h("code", {}, e.source)),
    e.status === "pending" ? null : h("div", { class: "actions left" },
      h("button", { type: "button", class: e.status === "dead" ? "primary" : "", onclick: onRedeliver },
        e.status === "dead" ? "Redeliver" : "Publish again")),
    h("div", { class: "columns" },
      h("section", { class: "panel", "aria-labelledby": "h-delivery" },
        h("h2", { id: "h-delivery" }, "Delivery"),
        dl([
          ["Status", e.status, "status-text"],
          ["Attempts", String(e.attempts), "attempts"],
          ["Last error", e.last_error, "last-error"],
          ["Routing key", h("code", {}, e.routing_key)],
          ["Ordering key", e.key],
          ["Subject", e.subject],
          ["API key that sent it", e.api_key || "none (authentication off)", "api-key"],
          ["Trace id", e.trace_id ? h("code", {}, e.trace_id) : null, "trace-id"],
          ["traceparent", e.traceparent ? h("code", {}, e.traceparent) : null],
        ])),
      h("section", { class: "panel", "aria-labelledby": "h-timeline" },
        h("h2", { id: "h-timeline" }, "Timeline"),
        timeline(e),
        h("p", { class: "muted small" },
          "postbox records when an event was committed and published (or became dead), how many ",
          "attempts it took and the last error; not the time or error of each earlier attempt. ",
          "A redelivery starts the count again."))),
    h("section", { class: "panel", "aria-labelledby": "h-envelope" },
      h("h2", { id: "h-envelope" }, "Envelope (CloudEvent attributes as published)"),
      jsonBlock(envelope, "Envelope")),
    h("section", { class: "panel", "aria-labelledby": "h-body" },
      h("h2", { id: "h-body" }, "Body (data)"),
      hasData ? jsonBlock(e.event.data, "Event data") : h("p", {}, "No data.")),
  ];
}

async function ambiguous(box, id, problem) {
  const res = await call(`/v1/events${query({ status: "any", id, order: "desc" })}`);
  fill(box, problemView(problem),
    res.ok && res.body.events.length
      ? [h("p", {}, "Pick one:"), eventTable(res.body.events, { caption: `Events with id ${id}` })]
      : null);
}

export function render(main, route) {
  const id = route.parts.slice(1).join("/");
  const source = route.params.get("source") || "";
  const body = h("div", { "aria-live": "polite" }, h("p", { class: "muted" }, "Loading…"));
  fill(main,
    h("p", { class: "crumbs" }, h("a", { href: "#/events" }, "Events"), " › ", h("span", { class: "mono" }, id)),
    heading(`Event ${id}`),
    body);
  let timer = null;
  let stopped = false;
  let lastStatus = null;

  async function load() {
    const res = await call(eventPath(id, source));
    if (stopped) return;
    if (!res.ok) {
      if (res.status === 409) return ambiguous(body, id, res.problem);
      fill(body, accessView(res) || problemView(res.problem, h("p", {}, h("a", { href: "#/events" }, "Search events"))));
      return;
    }
    const e = res.body;
    if (lastStatus && lastStatus !== e.status) announce(`Event ${id} is ${e.status}`);
    lastStatus = e.status;
    fill(body, view(e, () => redeliver(e)));
    // Follow a pending event until it is published or dead.
    if (e.status === "pending") timer = setTimeout(load, 1000);
  }

  async function redeliver(e) {
    const yes = await confirmDialog({
      title: e.status === "dead" ? "Redeliver this event?" : "Publish this event again?",
      body: [
        `Event ${e.id} (${e.type} ${e.version}, source ${e.source}) becomes pending with no attempts, and the relay publishes it as soon as it gets to it.`,
        e.status === "published" ? "Consumers will receive it a second time." : "",
      ].filter(Boolean),
      confirmLabel: e.status === "dead" ? "Redeliver 1 event" : "Publish 1 event again",
    });
    if (!yes) return;
    const res = await call(`/v1/events/${encodeURIComponent(e.id)}/redeliver${query({ source: e.source })}`, { method: "POST" });
    if (!res.ok) {
      fill(body, accessView(res) || problemView(res.problem), ...body.childNodes);
      return;
    }
    announce(`Event ${e.id} redelivered; following it`);
    clearTimeout(timer);
    load();
  }

  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
