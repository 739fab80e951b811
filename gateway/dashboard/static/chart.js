// Small SVG line chart: values, shaded anomaly windows, and anomaly scores (0..1) with the
// detector threshold on a band below the values. No library, no network.
const NS = "http://www.w3.org/2000/svg";
const W = 460, H = 200, L = 40, R = 6, T = 8, VH = 118, GAP = 18, SH = 40;

function el(name, attrs, parent) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

function fmt(v) {
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
  if (a >= 10 || a === 0) return v.toFixed(0);
  if (a >= 1) return v.toFixed(2);
  return v.toPrecision(2);
}

// Enough decimals that neighbouring ticks differ (e.g. 99.95 / 100.00, not 100 / 100).
function tick(v, step) {
  if (Math.abs(v) >= 1e3) return fmt(v);
  const decimals = Math.min(3, Math.max(0, 1 - Math.floor(Math.log10(Math.max(step, 1e-9)))));
  return v.toFixed(decimals);
}

// Seconds too when the chart spans a few minutes, so neighbouring labels differ.
function clock(ms, span) {
  const d = new Date(ms);
  return d.toTimeString().slice(0, span < 5 * 60 * 1000 ? 8 : 5);
}

/**
 * @param {{points: [number, number][], windows: {start:number,end:number}[],
 *          scores: {t:number, score:number, threshold:number}[], start:number, end:number,
 *          title:string}} data times in ms
 */
export function drawChart(data) {
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": data.title });
  const { start, end } = data;
  const span = Math.max(1, end - start);
  const x = (t) => L + ((t - start) / span) * (W - L - R);
  const values = data.points.map((p) => p[1]);
  let lo = values.length ? Math.min(...values) : 0;
  let hi = values.length ? Math.max(...values) : 1;
  if (hi - lo < 1e-9) { hi += 1; lo -= lo === 0 ? 0 : 1; }
  const pad = (hi - lo) * 0.08;
  lo -= pad; hi += pad;
  const y = (v) => T + VH - ((v - lo) / (hi - lo)) * VH;
  const sTop = T + VH + GAP;
  const ys = (s) => sTop + SH - Math.max(0, Math.min(1, s)) * SH;

  for (const w of data.windows) {
    const a = Math.max(L, x(w.start)), b = Math.min(W - R, x(w.end));
    if (b > a - 2) el("rect", { class: "band", x: a, y: T, width: Math.max(2, b - a), height: sTop + SH - T }, svg);
  }
  for (let i = 0; i <= 3; i++) {
    const v = lo + ((hi - lo) * i) / 3;
    el("line", { class: "grid-line", x1: L, x2: W - R, y1: y(v), y2: y(v) }, svg);
    el("text", { class: "axis", x: L - 4, y: y(v) + 3, "text-anchor": "end" }, svg).textContent = tick(v, (hi - lo) / 3);
  }
  for (let i = 0; i <= 4; i++) {
    const t = start + (span * i) / 4;
    el("text", { class: "axis", x: x(t), y: H - 2, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" }, svg)
      .textContent = clock(t, span);
  }
  el("line", { class: "grid-line", x1: L, x2: W - R, y1: sTop + SH, y2: sTop + SH }, svg);
  el("text", { class: "axis", x: L - 4, y: sTop + 8, "text-anchor": "end" }, svg).textContent = "score";
  el("text", { class: "axis", x: L - 4, y: sTop + SH, "text-anchor": "end" }, svg).textContent = "0";
  for (const s of data.scores) {
    if (s.t < start || s.t > end) continue;
    el("line", { class: "stem", x1: x(s.t), x2: x(s.t), y1: sTop + SH, y2: ys(s.score) }, svg);
    if (s.threshold > 0) {
      el("line", { class: "threshold", x1: x(s.t) - 8, x2: x(s.t) + 8, y1: ys(s.threshold), y2: ys(s.threshold) }, svg);
    }
  }
  const pts = data.points.filter((p) => p[0] >= start && p[0] <= end);
  if (pts.length === 1) {
    el("circle", { class: "dot", cx: x(pts[0][0]), cy: y(pts[0][1]), r: 3 }, svg);
  } else if (pts.length > 1) {
    const d = pts.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
    el("path", { class: "value", d }, svg);
  }
  svg.dataset.points = String(pts.length);
  return svg;
}
