// A line chart in inline SVG, drawn by hand: time on x (the last 15 minutes), one polyline per
// series, gaps where a value is null. The chart's box has a fixed height in CSS, so refreshing
// it never moves the page; it redraws at the width it is given (ResizeObserver).

const NS = "http://www.w3.org/2000/svg";
const HEIGHT = 220;
const PAD = { left: 52, right: 12, top: 12, bottom: 26 };

function el(tag, attrs = {}, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

/** The smallest "nice" number (1, 2, 2.5, 5 × 10^n) at or above `v`. */
function niceCeil(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/**
 * A chart in `box` (an element with a fixed height). `series`: `[{key, label, cls}]`, where
 * `key` names the field of each point and `cls` the CSS class of its line. `format(v)` writes
 * the y-axis labels. Returns `update(points, windowSeconds, now)`.
 */
export function lineChart(box, { title, series, format }) {
  const svg = el("svg", {
    class: "chart", role: "img", "aria-label": title, height: HEIGHT,
    "data-points": 0,
  });
  box.append(svg);
  let last = { points: [], windowSeconds: 900, now: Date.now() };

  function draw() {
    const { points, windowSeconds, now } = last;
    const width = Math.max(260, Math.floor(box.clientWidth || 600));
    svg.setAttribute("width", width);
    svg.setAttribute("viewBox", `0 0 ${width} ${HEIGHT}`);
    svg.replaceChildren();
    const x0 = PAD.left;
    const x1 = width - PAD.right;
    const y0 = HEIGHT - PAD.bottom;
    const y1 = PAD.top;
    const t1 = now;
    const t0 = t1 - windowSeconds * 1000;
    let max = 0;
    for (const p of points) {
      for (const s of series) {
        const v = p[s.key];
        if (typeof v === "number" && v > max) max = v;
      }
    }
    const top = niceCeil(max);
    const xs = (t) => x0 + ((t - t0) / (t1 - t0)) * (x1 - x0);
    const ys = (v) => y0 - (v / top) * (y0 - y1);
    // Grid and y labels: 0, 1/4, 1/2, 3/4, top.
    const grid = el("g", { class: "grid" });
    for (let i = 0; i <= 4; i++) {
      const v = (top * i) / 4;
      const y = ys(v);
      grid.append(el("line", { x1: x0, x2: x1, y1: y, y2: y }));
      grid.append(el("text", { x: x0 - 6, y: y + 4, "text-anchor": "end", class: "tick" }, format(v)));
    }
    // x labels every 5 minutes, "now" at the right.
    for (let m = windowSeconds / 60; m >= 0; m -= 5) {
      const x = xs(t1 - m * 60000);
      grid.append(el("line", { x1: x, x2: x, y1: y1, y2: y0, class: "vgrid" }));
      grid.append(el("text", { x, y: HEIGHT - 8, "text-anchor": m === 0 ? "end" : "middle", class: "tick" },
        m === 0 ? "now" : `−${m} min`));
    }
    svg.append(grid);
    for (const s of series) {
      let run = [];
      const runs = [];
      for (const p of points) {
        const t = Date.parse(p.at);
        const v = p[s.key];
        if (typeof v !== "number" || Number.isNaN(t) || t < t0) {
          if (run.length) runs.push(run);
          run = [];
          continue;
        }
        run.push(`${xs(t).toFixed(1)},${ys(v).toFixed(1)}`);
      }
      if (run.length) runs.push(run);
      const g = el("g", { class: `line ${s.cls}`, "data-series": s.key });
      for (const r of runs) {
        // A lone point is drawn as a dot (a one-point polyline is invisible).
        if (r.length === 1) {
          const [cx, cy] = r[0].split(",");
          g.append(el("circle", { cx, cy, r: 2.5 }));
        } else {
          g.append(el("polyline", { points: r.join(" ") }));
        }
      }
      svg.append(g);
    }
    svg.setAttribute("data-points", points.length);
  }

  new ResizeObserver(() => draw()).observe(box);

  return function update(points, windowSeconds, now) {
    last = { points, windowSeconds: windowSeconds || 900, now: now || Date.now() };
    draw();
  };
}
