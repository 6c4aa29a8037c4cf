// Live figures for the queues page: polls /api/overview every 2 s and
// redraws the table cells and one small SVG chart per queue. No libraries.
"use strict";
(function () {
  const W = 600, H = 160, PAD = 4;
  function line(points, cls, max) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    el.setAttribute("class", cls);
    const n = points.length;
    el.setAttribute("points", points.map((v, i) => {
      const x = n > 1 ? PAD + (i * (W - 2 * PAD)) / (n - 1) : W / 2;
      const y = H - PAD - (max > 0 ? (v / max) * (H - 2 * PAD) : 0);
      return x.toFixed(1) + "," + y.toFixed(1);
    }).join(" "));
    return el;
  }
  function draw(svg, hist) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    if (!hist.length) return;
    const series = { rate: hist.map(s => s.per_second), p99: hist.map(s => s.p99_ms), p50: hist.map(s => s.p50_ms), depth: hist.map(s => s.depth) };
    // Rate and depth share one scale, latency another.
    const countMax = Math.max(1, ...series.rate, ...series.depth);
    const msMax = Math.max(1, ...series.p99);
    svg.appendChild(line(series.depth, "depth", countMax));
    svg.appendChild(line(series.rate, "rate", countMax));
    svg.appendChild(line(series.p50, "p50", msMax));
    svg.appendChild(line(series.p99, "p99", msMax));
  }
  function set(row, cls, text) {
    const cell = row.querySelector("." + cls);
    if (cell) {
      const a = cell.querySelector("a");
      (a || cell).textContent = text;
    }
  }
  async function tick() {
    try {
      const r = await fetch("/api/overview", { cache: "no-store" });
      if (!r.ok) return;
      const data = await r.json();
      for (const q of data.queues || []) {
        const info = q.info, name = info.name;
        const row = document.querySelector('#queues tr[data-queue="' + CSS.escape(name) + '"]');
        if (row) {
          set(row, "depth", String(info.depth));
          set(row, "in_flight", String(info.in_flight));
          set(row, "rate", Number(info.completed_per_second).toFixed(1));
          set(row, "dead", String(info.dead_letters));
          set(row, "state", info.paused ? "paused" : "running");
        }
        const fig = document.querySelector('#charts figure[data-queue="' + CSS.escape(name) + '"]');
        if (fig) {
          draw(fig.querySelector("svg"), q.history || []);
          const last = (q.history || [])[q.history.length - 1];
          if (last) fig.querySelector(".now").textContent =
            last.per_second.toFixed(1) + " done/s, p50 " + last.p50_ms + " ms, p99 " + last.p99_ms + " ms, depth " + last.depth;
        }
      }
      document.getElementById("updated").textContent = new Date().toISOString().substring(11, 19);
    } catch (e) { /* the next tick tries again */ }
  }
  tick();
  setInterval(tick, 2000);
})();
