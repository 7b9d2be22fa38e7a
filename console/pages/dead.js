// Dead events: list and filter them (GET /v1/events?status=dead), redeliver one
// (POST /v1/events/{id}/redeliver) or every one a filter selects (POST /v1/events/redeliver,
// after a dry run that says how many), then follow them until they are published.

import { call, eventPath, query } from "../api.js";
import { accessView } from "../auth.js";
import { announce, badge, confirmDialog, count, fill, h, heading, problemView } from "../ui.js";
import { eventTable, listQuery, pager, searchForm } from "./events.js";

const FOLLOW_FOR_MS = 120_000;

/** The redrive filter of the route (the same filters the list uses, minus status and id). */
function redriveFilter(params) {
  const f = {};
  for (const k of ["type", "source", "key", "since", "until"]) {
    if (params.get(k)) f[k] = params.get(k);
  }
  return f;
}

function describe(f) {
  const parts = [];
  if (f.type) parts.push(`of type ${f.type}`);
  if (f.source) parts.push(`from source ${f.source}`);
  if (f.key) parts.push(`with key ${f.key}`);
  if (f.since) parts.push(`committed from ${new Date(f.since).toLocaleString()}`);
  if (f.until) parts.push(`committed before ${new Date(f.until).toLocaleString()}`);
  return parts.length ? ` ${parts.join(", ")}` : "";
}

export function render(main, route) {
  const params = route.params;
  const results = h("section", { class: "results", "aria-busy": "true" }, h("p", { class: "muted" }, "Loading…"));
  const progress = h("div", { class: "progress", role: "status", "aria-live": "polite" });
  fill(main,
    heading("Dead events"),
    h("p", {}, "Events the relay gave up on after their last attempt. Fix the cause (bind the missing ",
      "queue, lift the broker's limit), then send them again: they become pending and go out at once."),
    searchForm(params, { base: "#/dead", withId: false }),
    progress,
    results);
  let stopped = false;
  let timer = null;
  const controller = new AbortController();

  /** Poll the rows in `rows` until none is pending, updating their status cells. */
  function follow(rows) {
    const started = Date.now();
    const tick = async () => {
      if (stopped) return;
      const states = await Promise.all(rows.map(async (tr) => {
        const res = await call(eventPath(tr.dataset.id, tr.dataset.source));
        if (!res.ok) return "unknown";
        const e = res.body;
        fill(tr.querySelector(".status-cell"), badge(e.status));
        tr.querySelector(".attempts-cell").textContent = String(e.attempts);
        tr.querySelector(".error-cell").textContent = e.last_error || "—";
        // Only a dead row can be redelivered from here.
        const button = tr.querySelector("button");
        if (button) button.disabled = e.status !== "dead";
        return e.status;
      }));
      if (stopped) return;
      const n = (s) => states.filter((x) => x === s).length;
      const pending = n("pending");
      fill(progress, h("p", {},
        `Following ${rows.length} redelivered event${rows.length === 1 ? "" : "s"}: `,
        h("strong", { dataset: { field: "published" } }, `${n("published")} published`), ", ",
        `${pending} pending, ${n("dead")} dead again.`));
      if (pending && Date.now() - started < FOLLOW_FOR_MS) timer = setTimeout(tick, 1000);
      else announce(`${n("published")} of ${rows.length} redelivered events published`);
    };
    tick();
  }

  async function redeliverOne(e, tr) {
    const yes = await confirmDialog({
      title: "Redeliver this event?",
      body: `Event ${e.id} (${e.type} ${e.version}) becomes pending with no attempts and goes out as soon as the relay gets to it.`,
      confirmLabel: "Redeliver 1 event",
    });
    if (!yes) return;
    const res = await call(`/v1/events/${encodeURIComponent(e.id)}/redeliver${query({ source: e.source })}`, { method: "POST" });
    if (!res.ok) {
      fill(progress, accessView(res) || problemView(res.problem));
      return;
    }
    announce(`Event ${e.id} redelivered`);
    follow([tr]);
  }

  async function redeliverAll() {
    const filter = redriveFilter(params);
    const dry = await call("/v1/events/redeliver", { method: "POST", json: { ...filter, dry_run: true } });
    if (!dry.ok) {
      fill(progress, accessView(dry) || problemView(dry.problem));
      return;
    }
    const n = dry.body.matched;
    if (!n) {
      fill(progress, h("p", {}, "No dead event matches this filter any more."));
      return;
    }
    const yes = await confirmDialog({
      title: `Redeliver ${count(n)} dead event${n === 1 ? "" : "s"}?`,
      body: [
        `${count(n)} dead event${n === 1 ? "" : "s"}${describe(filter)} will become pending with no attempts and go out as soon as the relay gets to them.`,
        "If the cause is not fixed they will fail again and become dead again after their attempts.",
      ],
      confirmLabel: `Redeliver ${count(n)} event${n === 1 ? "" : "s"}`,
    });
    if (!yes) return;
    const res = await call("/v1/events/redeliver", { method: "POST", json: filter });
    if (!res.ok) {
      fill(progress, accessView(res) || problemView(res.problem));
      return;
    }
    announce(`${res.body.redelivered} events redelivered`);
    fill(progress, h("p", {}, `${count(res.body.redelivered)} event${res.body.redelivered === 1 ? "" : "s"} redelivered.`));
    const rows = [...results.querySelectorAll("tbody tr")];
    if (rows.length) follow(rows);
  }

  (async () => {
    const q = listQuery(params, { order: "desc", limit: 100 });
    q.status = "dead";
    const res = await call(`/v1/events${query(q)}`, { signal: controller.signal });
    results.setAttribute("aria-busy", "false");
    if (!res.ok) {
      fill(results, accessView(res) || problemView(res.problem));
      return;
    }
    const events = res.body.events;
    if (!events.length) {
      fill(results, h("p", { class: "count" }, "No dead event matches."), pager("#/dead", params, null));
      return;
    }
    const table = eventTable(events, {
      caption: "Dead events",
      showError: true,
      extraHeader: "Action",
      extra: (e) => h("button", {
        type: "button", class: "small",
        "aria-label": `Redeliver event ${e.id}`,
        onclick: (ev) => redeliverOne(e, ev.target.closest("tr")),
      }, "Redeliver"),
    });
    fill(results,
      h("div", { class: "bulk" },
        h("p", { class: "count" },
          `${events.length}${res.body.next_cursor ? "+" : ""} dead event${events.length === 1 ? "" : "s"}${describe(redriveFilter(params))} on this page`),
        h("button", { type: "button", class: "primary", id: "redeliver-all", onclick: redeliverAll },
          "Redeliver all matching…")),
      table,
      pager("#/dead", params, res.body.next_cursor));
  })().catch(() => {});

  return () => {
    stopped = true;
    clearTimeout(timer);
    controller.abort();
  };
}
