// Overview: broker and outbox state, backlog, throughput and relay lag over the last 15
// minutes, from GET /v1/stats (sampled in-process every few seconds) and GET /readyz.
//
// The page is built once; each refresh only changes text and redraws the charts inside boxes
// of fixed size, so nothing moves while it updates.

import { call } from "../api.js";
import { lineChart } from "../chart.js";
import { count, decimal, duration, h, heading, time, fill } from "../ui.js";

const RATES = [
  { key: "accepted_per_second", label: "Accepted", cls: "s-accepted" },
  { key: "published_per_second", label: "Published", cls: "s-published" },
  { key: "failed_per_second", label: "Failed attempts", cls: "s-failed" },
];
const LAG = [
  { key: "relay_lag_seconds", label: "Commit → confirm (mean)", cls: "s-lag" },
  { key: "oldest_pending_age_seconds", label: "Oldest pending event", cls: "s-oldest" },
];

function tile(label, field, extra) {
  return h("div", { class: "tile" },
    h("span", { class: "tile-label", dataset: { field: `${field}-label` } }, label),
    h("span", { class: "tile-value", dataset: { field } }, "—"),
    extra || null);
}

function legend(series) {
  return h("ul", { class: "legend" },
    series.map((s) => h("li", { class: s.cls }, h("span", { class: "swatch", "aria-hidden": "true" }), s.label)));
}

function chartFigure(id, title, series) {
  const box = h("div", { class: "chart-box", id });
  const fig = h("figure", { class: "panel chart-panel" },
    h("figcaption", {}, h("h2", {}, title), legend(series)),
    box,
    h("p", { class: "chart-summary muted", dataset: { summary: id } }, "Collecting the first samples…"));
  return [fig, box];
}

export function render(main) {
  const set = (field, value) => {
    for (const el of main.querySelectorAll(`[data-field="${field}"]`)) {
      if (value instanceof Node) fill(el, value);
      else el.textContent = value;
    }
  };
  const [ratesFig, ratesBox] = chartFigure("chart-rates", "Events per second — last 15 minutes", RATES);
  const [lagFig, lagBox] = chartFigure("chart-lag", "Relay lag — last 15 minutes", LAG);
  fill(main,
    heading("Overview"),
    h("section", { class: "tiles status", "aria-label": "State" },
      tile("Broker", "broker", h("span", { class: "tile-note", dataset: { field: "broker-error" } })),
      tile("Outbox", "outbox", h("span", { class: "tile-note", dataset: { field: "outbox-error" } })),
      tile("Instances", "instances"),
      tile("Partitions owned", "partitions")),
    h("section", { class: "tiles figures", "aria-label": "Backlog and throughput" },
      tile("Pending", "pending"),
      tile("Oldest pending", "oldest"),
      tile("Dead", "dead", h("a", { href: "#/dead", class: "tile-note" }, "See dead events")),
      tile("Accepted / s", "accepted-rate"),
      tile("Published / s", "published-rate"),
      tile("Failed / s", "failed-rate")),
    h("p", { class: "totals" }, "Since this instance started: ",
      h("span", { dataset: { field: "accepted-total" } }, "—"), " accepted · ",
      h("span", { dataset: { field: "published-total" } }, "—"), " published · ",
      h("span", { dataset: { field: "failed-total" } }, "—"), " failed publish attempts"),
    h("div", { class: "charts" }, ratesFig, lagFig),
    h("p", { class: "muted" }, h("span", { dataset: { field: "sampling" } }, ""), " ",
      h("span", { dataset: { field: "updated" } }, "")));
  const drawRates = lineChart(ratesBox, { title: "Events per second over the last 15 minutes", series: RATES, format: decimal });
  const drawLag = lineChart(lagBox, { title: "Relay lag over the last 15 minutes", series: LAG, format: (v) => duration(v) });

  let timer = null;
  let stopped = false;
  let every = 5000;

  async function refresh() {
    const [stats, ready] = await Promise.all([call("/v1/stats"), call("/readyz")]);
    if (stopped) return;
    if (stats.ok && stats.body) show(stats.body);
    else set("updated", `Figures unavailable: ${stats.problem ? stats.problem.title : "no answer"}.`);
    if (ready.body && ready.body.outbox) {
      const o = ready.body.outbox;
      set("outbox-label", `Outbox: ${o.backend}`);
      set("outbox", ready.body.status === "ready" ? "ready" : "not ready");
      main.querySelector('[data-field="outbox"]').dataset.state = ready.body.status;
      set("outbox-error", o.error || (o.writable ? "commits succeed" : ""));
    }
    timer = setTimeout(refresh, every);
  }

  function show(s) {
    const b = s.broker;
    set("broker-label", `Broker: ${b.name}`);
    set("broker", b.state);
    set("broker-error", b.error || "");
    main.querySelector('[data-field="broker"]').dataset.state = b.state;
    set("instances", count(s.relay.instances));
    set("partitions", s.relay.partitions_owned === null ? "—" : `${s.relay.partitions_owned} of ${s.relay.partitions}`);
    set("pending", count(s.outbox.pending));
    set("oldest", s.outbox.pending ? duration(s.outbox.oldest_pending_age_seconds) : "none pending");
    set("dead", count(s.outbox.dead));
    const p = s.latest;
    set("accepted-rate", p ? decimal(p.accepted_per_second) : "—");
    set("published-rate", p ? decimal(p.published_per_second) : "—");
    set("failed-rate", p ? decimal(p.failed_per_second) : "—");
    set("accepted-total", count(s.totals.accepted));
    set("published-total", count(s.totals.published));
    set("failed-total", count(s.totals.publish_failures));
    set("sampling", `Sampled every ${decimal(s.interval_seconds)} s, ${s.series.length} samples.`);
    set("updated", s.sampled_at ? h("span", {}, "Last sample: ", time(s.sampled_at)) : "No sample yet.");
    every = Math.max(2000, Math.round(s.interval_seconds * 1000));
    const now = Date.parse(s.sampled_at) || Date.now();
    drawRates(s.series, s.window_seconds, now);
    drawLag(s.series, s.window_seconds, now);
    const rates = main.querySelector('[data-summary="chart-rates"]');
    const lag = main.querySelector('[data-summary="chart-lag"]');
    if (p) {
      rates.textContent = `Latest: ${decimal(p.accepted_per_second)} accepted, ${decimal(p.published_per_second)} published, ${decimal(p.failed_per_second)} failed per second.`;
      lag.textContent = `Latest: commit → confirm ${duration(p.relay_lag_seconds)}; oldest pending ${p.pending ? duration(p.oldest_pending_age_seconds) : "none"}.`;
    }
  }

  refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
