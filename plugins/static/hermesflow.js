/* The Hermesflow page: polls the plugin's JSON API and draws the live state.
 *
 * Vanilla JavaScript, no build step, no third-party code (Airflow deployments are often offline).
 * Every value from the API reaches the page as a text node or an attribute, never as markup.
 * URLs are relative to the page (`<mount>/ui` -> `<mount>/api/...`), so the page works wherever
 * the plugin app is mounted. Element ids and data-* attributes are the page's test contract:
 * rows carry data-app-id / data-phase, backends data-backend / data-warmth, graphs data-class.
 */
"use strict";

(() => {
  const POLL_MS = Number(document.body.dataset.pollMs) || 2000;
  const GRAPH_MAX_AGE_MS = 60000; // a refitted graph shows within a minute even at one version
  const QUEUE_CHIPS = 6; // queued applications named per backend; the rest are counted
  const END = "__end__";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#017cee", "#e8590c", "#2b8a3e", "#9c36b5", "#c2255c", "#1098ad", "#5c940d", "#862e9c"];

  const $ = (id) => document.getElementById(id);
  const state = {
    apps: [],
    liveTotal: 0, // live applications the scheduler counts (the list may be cut at its limit)
    classFilter: "",
    graphs: new Map(), // class name -> {key, fetchedAt, graph | error}
    policyColors: new Map(),
    drawings: 0, // graphs drawn so far: each SVG's arrow marker gets an id of its own
  };

  // -- DOM helpers ------------------------------------------------------------------------------

  function build(make, tag, attrs, children) {
    const node = make(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const h = (tag, attrs, ...children) => build((t) => document.createElement(t), tag, attrs, children);
  const s = (tag, attrs, ...children) => build((t) => document.createElementNS(SVG_NS, t), tag, attrs, children);

  // -- formatting -------------------------------------------------------------------------------

  const DASH = "—";
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);

  function seconds(v) {
    if (!isNum(v)) return DASH;
    if (v === 0) return "0 s";
    if (v < 1) return `${Math.round(v * 1000)} ms`;
    if (v < 60) return `${v.toFixed(v < 10 ? 1 : 0)} s`;
    const total = Math.round(v);
    if (total < 3600) return `${Math.floor(total / 60)} m ${String(total % 60).padStart(2, "0")} s`;
    const hours = Math.floor(total / 3600);
    return `${hours} h ${String(Math.floor((total % 3600) / 60)).padStart(2, "0")} m`;
  }

  function number(v) {
    if (!isNum(v)) return DASH;
    if (v !== 0 && Math.abs(v) < 0.01) return v.toExponential(1);
    return Number(v.toPrecision(3)).toLocaleString();
  }

  function probability(p) {
    return Number(p.toFixed(2)).toString();
  }

  const clock = (unix) => new Date(unix * 1000).toLocaleTimeString([], { hour12: false });
  const meanOf = (dist) => (dist && dist.samples && dist.samples.length
    ? dist.samples.reduce((a, b) => a + b, 0) / dist.samples.length : null);

  // -- API --------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status; // 0: no HTTP answer at all
    }
  }

  async function errorMessage(response) {
    const text = await response.text();
    try {
      const body = JSON.parse(text);
      const detail = body.detail ?? body.message ?? body.error ?? body;
      if (typeof detail === "string") return detail;
      if (Array.isArray(detail)) return detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
      return detail.message || detail.error || JSON.stringify(detail);
    } catch {
      return text.slice(0, 300) || response.statusText;
    }
  }

  async function getJson(path, params) {
    const url = new URL(`api/${path}`, document.baseURI);
    for (const [k, v] of Object.entries(params || {})) if (v !== "" && v !== null) url.searchParams.set(k, v);
    let response;
    try {
      response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    } catch (error) {
      throw new ApiError(0, `the Airflow api-server did not answer (${error.message})`);
    }
    if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
    return response.json();
  }

  // -- banner -----------------------------------------------------------------------------------

  function showBanner(error) {
    const banner = $("banner");
    const link = $("banner-link");
    let title;
    let text = error.message;
    banner.className = "banner";
    link.hidden = true;
    if (error.status === 401 || error.status === 403) {
      // 401: no login at all; 403: a token Airflow no longer accepts (expired, or another
      // server's). Either way the user logs in again; Airflow's root leads to its login form.
      banner.classList.add("auth");
      title = error.status === 401 ? "You are not logged in to Airflow." : "Your Airflow login is not valid any more.";
      text = "Log in, then come back to this page.";
      link.href = new URL("../", document.baseURI).href;
      link.hidden = false;
    } else if (error.status === 503) {
      title = "Hermesflow is unreachable.";
    } else if (error.status === 502) {
      title = "Hermesflow did not serve the request.";
    } else if (error.status === 0) {
      title = "No answer.";
    } else if (error.status < 0) {
      title = "The page could not draw the latest state.";
    } else {
      title = `The Hermesflow API answered HTTP ${error.status}.`;
    }
    banner.dataset.status = String(error.status);
    $("banner-title").textContent = title;
    $("banner-text").textContent = text;
    banner.hidden = false;
  }

  function hideBanner() {
    $("banner").hidden = true;
    delete $("banner").dataset.status;
  }

  // -- scheduler figures ------------------------------------------------------------------------

  function renderStats(stats) {
    const figures = [
      ["Policy", stats.policy],
      ["Prewarm planner", stats.planner],
      ["Live applications", stats.live_apps],
      ["Completed calls", stats.completed_calls],
      ["Busy backend time", seconds(stats.busy_s)],
      ["Scheduler time per step", `${number(stats.overhead_ms_per_step)} ms`],
    ];
    $("stats").replaceChildren(...figures.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v ?? DASH))));
    const ray = $("ray-dashboard");
    ray.hidden = !stats.ray_dashboard_url;
    if (stats.ray_dashboard_url) ray.href = stats.ray_dashboard_url;
    renderCache(stats.cache);
  }

  function renderCache(cache) {
    // Shown only when the API reports cache figures; the page invents none.
    const figures = cache && typeof cache === "object" ? Object.entries(cache) : [];
    $("cache").hidden = figures.length === 0;
    $("cache-figures").replaceChildren(...figures.map(([k, v]) => h("div", {}, h("dt", {}, k.replaceAll("_", " ")),
      h("dd", {}, isNum(v) ? number(v) : String(v)))));
  }

  // -- live applications ------------------------------------------------------------------------

  function appRow(app) {
    const r = app.remaining_s;
    const remaining = r ? [seconds(r.mean), " ", h("span", { class: "interval" },
      `${seconds(r.low)}–${seconds(r.high)}, ${Math.round((r.level ?? 0.8) * 100)}%`)] : DASH;
    return h("tr", { "data-app-id": app.app_id, "data-phase": app.phase, "data-class": app.app_class,
      "data-stage": app.stage, "data-backend": app.backend, "data-position": app.position },
    h("td", { class: "num" }, app.position),
    h("td", { class: "id", title: `submitted ${clock(app.submitted_at)}` }, app.app_id),
    h("td", {}, app.app_class),
    h("td", {}, h("span", { class: `badge ${app.phase}` }, app.phase)),
    h("td", {}, app.stage ?? DASH),
    h("td", {}, app.backend ?? DASH),
    h("td", { class: "num", title: `policy ${app.policy}` }, number(app.rank)),
    h("td", { class: "num" }, seconds(app.attained_s)),
    h("td", { class: "num" }, seconds(app.elapsed_s)),
    h("td", { class: "num" }, remaining),
    h("td", { class: "num", title: "queued / running" }, `${app.queued_calls} / ${app.running_calls}`));
  }

  function renderApps() {
    const shown = state.apps.filter((a) => !state.classFilter || a.app_class === state.classFilter);
    $("apps").tBodies[0].replaceChildren(...shown.map(appRow));
    $("apps-empty").hidden = shown.length > 0;
    // The API answers the most urgent applications only (its default limit); say so when cut.
    const cut = !state.classFilter && state.liveTotal > state.apps.length;
    $("apps-count").textContent = cut ? `(the ${shown.length} most urgent of ${state.liveTotal})` : `(${shown.length})`;
  }

  function renderClassFilter(classes) {
    const select = $("class-filter");
    const names = classes.map((c) => c.name).sort();
    const current = [...select.options].slice(1).map((o) => o.value);
    if (names.join("\n") === current.join("\n")) return;
    select.replaceChildren(h("option", { value: "" }, "all classes"), ...names.map((n) => h("option", { value: n }, n)));
    select.value = names.includes(state.classFilter) ? state.classFilter : "";
    state.classFilter = select.value;
  }

  // -- backends and queues ----------------------------------------------------------------------

  function queueCell(backend) {
    const queued = state.apps.filter((a) => a.backend === backend && a.queued_calls > 0);
    if (queued.length === 0) return DASH;
    const chips = queued.slice(0, QUEUE_CHIPS).map((a) => h("span", { class: "chip", title: `rank ${number(a.rank)}` },
      `#${a.position} ${a.app_id}`));
    const more = queued.length > QUEUE_CHIPS ? h("span", { class: "muted" }, `+${queued.length - QUEUE_CHIPS} more`) : null;
    return [...chips, more];
  }

  function backendRow(b) {
    const warmup = [`${seconds(b.warmup_s)} expected`];
    if (isNum(b.last_warmup_s)) warmup.push(h("br"), h("span", { class: "interval" }, `last ${seconds(b.last_warmup_s)} (${b.warmups ?? 0} measured)`));
    const warmSince = b.phase === "warm" && isNum(b.warm_since)
      ? h("span", { title: new Date(b.warm_since * 1000).toLocaleString() }, `${clock(b.warm_since)}`) : DASH;
    return h("tr", { "data-backend": b.name, "data-warmth": b.phase },
      h("td", { class: "id" }, b.name),
      h("td", {}, b.type),
      h("td", {}, h("span", { class: `badge ${b.phase}` }, b.phase),
        b.last_error ? [h("br"), h("span", { class: "error-text", title: b.last_error }, b.last_error.slice(0, 80))] : null),
      h("td", { class: "num" }, `${b.in_flight} / ${b.capacity}`),
      h("td", { class: "num" }, b.queued),
      h("td", {}, queueCell(b.name)),
      h("td", { class: "num" }, warmup),
      h("td", {}, warmSince));
  }

  function renderBackends(backends) {
    $("backends").tBodies[0].replaceChildren(...backends.map(backendRow));
  }

  // -- ACT history chart ------------------------------------------------------------------------

  function colorOf(policy) {
    if (!state.policyColors.has(policy)) state.policyColors.set(policy, PALETTE[state.policyColors.size % PALETTE.length]);
    return state.policyColors.get(policy);
  }

  function niceStep(max, ticks) {
    const raw = max / ticks;
    const power = 10 ** Math.floor(Math.log10(raw));
    return [1, 2, 2.5, 5, 10].map((m) => m * power).find((step) => step >= raw);
  }

  function timeLabel(unix, span) {
    const d = new Date(unix * 1000);
    if (span <= 2 * 86400) return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
    return d.toLocaleDateString([], { weekday: "short", day: "numeric" });
  }

  function linePaths(points, x, y, field) {
    // One path per run of consecutive buckets with a value: an empty bucket is a gap, not a zero.
    const runs = [];
    let current = [];
    for (const p of points) {
      if (isNum(p[field])) current.push(`${x(p)},${y(p[field])}`);
      else if (current.length) { runs.push(current); current = []; }
    }
    if (current.length) runs.push(current);
    return runs.filter((r) => r.length > 1).map((r) => `M${r.join("L")}`);
  }

  function renderAct(act) {
    const figure = $("act-chart");
    const series = act.series.filter((sr) => sr.points.some((p) => p.runs > 0));
    $("act-totals").dataset.runs = String(act.totals.reduce((total, t) => total + t.runs, 0));
    $("act-totals").tBodies[0].replaceChildren(...act.totals.map((t) => h("tr", { "data-policy": t.policy },
      h("td", {}, t.policy), h("td", { class: "num" }, t.runs),
      h("td", { class: "num" }, seconds(t.mean_s)), h("td", { class: "num" }, seconds(t.p95_s)))));
    if (series.length === 0) {
      figure.replaceChildren(h("p", { class: "empty" }, "No finished runs in this window."));
      figure.dataset.points = "0";
      return;
    }
    const W = 760, H = 240, L = 64, R = 16, T = 12, B = 28;
    const starts = act.series.flatMap((sr) => sr.points.map((p) => p.start));
    const x0 = Math.min(...starts), x1 = Math.max(...starts) + act.bucket_s;
    const ymax = Math.max(...series.flatMap((sr) => sr.points.flatMap((p) => [p.mean_s, p.p95_s]).filter(isNum)), 0.001);
    const step = niceStep(ymax, 4);
    const top = Math.ceil(ymax / step) * step;
    const x = (p) => (L + ((p.start + act.bucket_s / 2 - x0) / (x1 - x0)) * (W - L - R)).toFixed(1);
    const y = (v) => (T + (1 - v / top) * (H - T - B)).toFixed(1);
    const grid = [];
    for (let v = 0; v <= top + step / 2; v += step) {
      grid.push(s("line", { class: "gridline", x1: L, x2: W - R, y1: y(v), y2: y(v) }),
        s("text", { x: L - 6, y: Number(y(v)) + 4, "text-anchor": "end" }, seconds(v)));
    }
    const xTicks = [];
    for (let i = 0; i <= 5; i++) {
      const t = x0 + ((x1 - x0) * i) / 5;
      xTicks.push(s("text", { x: (L + (i / 5) * (W - L - R)).toFixed(1), y: H - 8, "text-anchor": i === 0 ? "start" : i === 5 ? "end" : "middle" },
        timeLabel(t, x1 - x0)));
    }
    let count = 0;
    const drawn = series.map((sr) => {
      const color = colorOf(sr.policy);
      const dots = sr.points.filter((p) => isNum(p.mean_s)).map((p) => {
        count += 1;
        return s("circle", { class: "mean-point", cx: x(p), cy: y(p.mean_s), r: 3.5, fill: color,
          "data-policy": sr.policy, "data-start": p.start, "data-runs": p.runs },
        s("title", {}, `${sr.policy}, ${clock(p.start)}–${clock(p.start + act.bucket_s)}: ${p.runs} runs, mean ${seconds(p.mean_s)}, P95 ${seconds(p.p95_s)}`));
      });
      const p95 = sr.points.filter((p) => isNum(p.p95_s)).map((p) => s("circle", { class: "p95-point",
        cx: x(p), cy: y(p.p95_s), r: 2.5, stroke: color }));
      return s("g", { class: "series", "data-policy": sr.policy },
        linePaths(sr.points, x, y, "mean_s").map((d) => s("path", { class: "mean", d, stroke: color })),
        linePaths(sr.points, x, y, "p95_s").map((d) => s("path", { class: "p95", d, stroke: color })),
        p95, dots);
    });
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
      "aria-label": `Mean and P95 application completion time per ${seconds(act.bucket_s)} bucket, by policy` },
    s("g", { class: "axis" }, s("line", { x1: L, x2: L, y1: T, y2: H - B }), s("line", { x1: L, x2: W - R, y1: H - B, y2: H - B })),
    grid, xTicks, drawn);
    const legend = h("div", { class: "legend" },
      series.map((sr) => h("span", {}, h("span", { class: "swatch", "data-color": colorOf(sr.policy) }), sr.policy)));
    for (const swatch of legend.querySelectorAll(".swatch")) swatch.style.background = swatch.dataset.color;
    figure.replaceChildren(svg, legend);
    figure.dataset.points = String(count);
  }

  // -- PDGraph drawing --------------------------------------------------------------------------

  const START = "\u0001start";
  const edgeKey = (from, to) => `${from}\u0000${to}`;

  /* A layered (Sugiyama-style) layout, left to right. A depth-first search from START marks the
   * edges that close a loop as back edges; every stage then sits one layer after its furthest
   * predecessor along the remaining (forward) edges, END after all of them. A forward edge that
   * spans several layers gets one invisible waypoint per layer it crosses, so it runs between
   * the stages instead of through them. Within a layer, stages and waypoints are ordered by the
   * mean position of their predecessors (two sweeps), which removes most crossings. */
  function layoutGraph(graph) {
    const names = Object.keys(graph.stages);
    const out = (n) => (n === START ? graph.entry : n === END ? {} : graph.stages[n].next);
    const succ = (n) => Object.entries(out(n)).filter(([, p]) => p > 0).map(([t]) => t);
    const back = new Set();
    const order = [];
    const status = new Map(); // 1: on the stack, 2: done
    const visit = (n) => {
      status.set(n, 1);
      for (const t of succ(n)) {
        if (status.get(t) === 1) back.add(edgeKey(n, t));
        else if (!status.has(t)) visit(t);
      }
      status.set(n, 2);
      order.push(n);
    };
    for (const n of [START, ...names, END]) if (!status.has(n)) visit(n);
    order.reverse(); // a topological order of the forward edges
    const layer = new Map(order.map((n) => [n, 0]));
    for (const n of order) {
      for (const t of succ(n)) if (!back.has(edgeKey(n, t))) layer.set(t, Math.max(layer.get(t), layer.get(n) + 1));
    }
    for (const n of names) layer.set(n, Math.max(1, layer.get(n)));
    const last = Math.max(...names.map((n) => layer.get(n))) + 1;
    layer.set(START, 0);
    layer.set(END, last);

    const edges = [];
    for (const from of [START, ...names]) {
      for (const [to, p] of Object.entries(out(from))) {
        if (p <= 0) continue;
        const forward = from !== to && !back.has(edgeKey(from, to)) && layer.get(to) > layer.get(from);
        const kind = from === START ? "entry" : from === to ? "self" : !forward ? "back" : to === END ? "exit" : "next";
        const via = [];
        for (let l = layer.get(from) + 1; forward && l < layer.get(to); l++) {
          const waypoint = `\u0002${edges.length}:${l}`;
          layer.set(waypoint, l);
          via.push(waypoint);
        }
        edges.push({ from, to, p, kind, via });
      }
    }
    const layers = Array.from({ length: last + 1 }, () => []);
    for (const n of order) layers[layer.get(n)].push(n);
    const up = new Map(); // node -> its neighbours one layer to the left
    for (const e of edges) {
      if (e.kind === "back" || e.kind === "self") continue;
      const chain = [e.from, ...e.via, e.to];
      for (let i = 1; i < chain.length; i++) {
        if (!up.has(chain[i])) up.set(chain[i], []);
        up.get(chain[i]).push(chain[i - 1]);
        if (i < chain.length - 1) layers[layer.get(chain[i])].push(chain[i]);
      }
    }
    const position = new Map();
    for (let sweep = 0; sweep < 2; sweep++) {
      layers.forEach((items, li) => {
        const key = new Map(items.map((n, k) => {
          const ups = (up.get(n) || []).filter((m) => position.has(m));
          return [n, ups.length && li > 0 ? ups.reduce((a, m) => a + position.get(m), 0) / ups.length : k];
        }));
        items.sort((a, b) => key.get(a) - key.get(b));
        items.forEach((n, k) => position.set(n, k));
      });
    }
    return { layers, layer, edges };
  }

  const isWaypoint = (n) => n.startsWith("\u0002");

  function stageFacts(graph, name, backend) {
    const st = graph.stages[name];
    const facts = [`${name}: ${st.kind} stage on ${backend}`];
    const fields = [["exec_s", "seconds"], ["input_tokens", "input tokens"], ["output_tokens", "output tokens"],
      ["fanout", "parallel calls"], ["visits", "visits per run"]];
    for (const [field, what] of fields) {
      const m = meanOf(st[field]);
      if (m !== null) facts.push(`mean ${what}: ${number(m)}`);
    }
    return facts.join("\n");
  }

  function drawGraph(graph, serial) {
    const { layers, layer, edges } = layoutGraph(graph);
    const NW = 156, NH = 44, TR = 16, WH = 12, GX = 84, GY = 22, PAD = 14;
    const size = (n) => (n === START || n === END ? [2 * TR, 2 * TR] : isWaypoint(n) ? [null, WH] : [NW, NH]);
    const widths = layers.map((items, li) => (li === 0 || li === layers.length - 1 ? 2 * TR : NW));
    const totals = layers.map((items) => items.reduce((a, n) => a + size(n)[1], 0) + GY * Math.max(0, items.length - 1));
    const top = PAD;
    const inner = Math.max(...totals);
    const width = PAD * 2 + widths.reduce((a, w) => a + w, 0) + GX * (layers.length - 1);
    const box = new Map();
    let x = PAD;
    layers.forEach((items, li) => {
      let y = top + (inner - totals[li]) / 2;
      for (const n of items) {
        const [w, hgt] = size(n);
        box.set(n, { x: x + (widths[li] - (w ?? widths[li])) / 2, y, w: w ?? widths[li], h: hgt });
        y += hgt + GY;
      }
      x += widths[li] + GX;
    });
    const marker = `hf-arrow-${serial}`;
    const label = ([lx, ly], p) => {
      const text = probability(p);
      const w = text.length * 6.5 + 8;
      return [s("rect", { class: "edge-label-bg", x: lx - w / 2, y: ly - 8, width: w, height: 15, rx: 3 }),
        s("text", { class: "edge-label", x: lx, y: ly + 4, "text-anchor": "middle" }, text)];
    };
    const mid = (p0, p1, p2, p3) => [0, 1].map((i) => (p0[i] + 3 * p1[i] + 3 * p2[i] + p3[i]) / 8);
    // Loops are arcs over or under the stages, on the side of the source's layer with fewer
    // items, so they stay clear of the forward edges (which meet the stages mid-height).
    const arcs = new Map([[-1, 0], [1, 0]]);
    const sideOf = (n) => {
      const items = layers[layer.get(n)];
      const k = items.indexOf(n);
      return k < items.length - 1 - k ? -1 : 1;
    };
    const nodesTop = top, nodesBottom = top + inner;
    let minY = nodesTop, maxY = nodesBottom;
    const drawn = edges.map((e) => {
      const a = box.get(e.from), b = box.get(e.to);
      let d, at;
      if (e.kind === "self" || e.kind === "back") {
        const side = e.kind === "self" ? -1 : sideOf(e.from);
        const y0 = side < 0 ? a.y : a.y + a.h, y3 = side < 0 ? b.y : b.y + b.h;
        const near = Math.abs(layer.get(e.from) - layer.get(e.to)) <= 1;
        const base = near ? (side < 0 ? Math.min(y0, y3) : Math.max(y0, y3)) : (side < 0 ? nodesTop : nodesBottom);
        const depth = base + side * (30 + 12 * arcs.get(side));
        arcs.set(side, arcs.get(side) + 1);
        const p0 = [a.x + a.w * (e.kind === "self" ? 0.3 : 0.35), y0], p3 = [b.x + b.w * (e.kind === "self" ? 0.7 : 0.65), y3];
        const p1 = [p0[0], depth], p2 = [p3[0], depth];
        d = `M${p0} C${p1} ${p2} ${p3}`;
        at = mid(p0, p1, p2, p3);
        minY = Math.min(minY, at[1] - 10);
        maxY = Math.max(maxY, at[1] + 10);
      } else {
        const points = [[a.x + a.w, a.y + a.h / 2]];
        for (const w of e.via) {
          const c = box.get(w);
          points.push([c.x, c.y + c.h / 2], [c.x + c.w, c.y + c.h / 2]);
        }
        points.push([b.x, b.y + b.h / 2]);
        const parts = [`M${points[0]}`];
        for (let i = 1; i < points.length; i++) {
          const [x1, y1] = points[i - 1], [x2, y2] = points[i];
          parts.push(i % 2 ? `C${(x1 + x2) / 2},${y1} ${(x1 + x2) / 2},${y2} ${x2},${y2}` : `L${x2},${y2}`);
        }
        d = parts.join(" ");
        at = [(points[0][0] + points[1][0]) / 2, (points[0][1] + points[1][1]) / 2];
      }
      return s("g", { class: `edge ${e.kind}`, "data-from": e.from === START ? "START" : e.from,
        "data-to": e.to === END ? "END" : e.to, "data-p": e.p },
      s("path", { d, "marker-end": `url(#${marker})` }), label(at, e.p));
    });
    const nodes = [];
    for (const [n, b] of box) {
      if (isWaypoint(n)) continue;
      if (n === START || n === END) {
        const end = n === END;
        nodes.push(s("g", { class: `terminal ${end ? "end" : "start"}`, "data-stage": end ? "END" : "START" },
          s("circle", { cx: b.x + TR, cy: b.y + TR, r: TR }),
          s("text", { x: b.x + TR, y: b.y + TR + 4, "text-anchor": "middle" }, end ? "end" : "start")));
        continue;
      }
      const st = graph.stages[n];
      const backend = st.backend || (st.kind === "llm" ? "llm" : `${st.kind}:${graph.name}`);
      const name = n.length > 21 ? `${n.slice(0, 20)}…` : n;
      const detail = `${st.kind} · ${backend}`;
      nodes.push(s("g", { class: "node", "data-stage": n, "data-backend": backend, "data-live": 0 },
        s("title", {}, stageFacts(graph, n, backend)),
        s("rect", { x: b.x, y: b.y, width: b.w, height: b.h, rx: 6 }),
        s("text", { class: "name", x: b.x + 10, y: b.y + 18 }, name),
        s("text", { class: "kind", x: b.x + 10, y: b.y + 35 }, detail.length > 18 ? `${detail.slice(0, 17)}…` : detail),
        s("text", { class: "live-count", x: b.x + b.w - 8, y: b.y + 35, "text-anchor": "end" })));
    }
    const height = maxY - minY + 2 * PAD;
    return s("svg", { width, height, viewBox: `0 ${minY - PAD} ${width} ${height}`, role: "img", "aria-label": `PDGraph of ${graph.name}` },
      s("defs", {}, s("marker", { id: marker, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
        s("path", { class: "arrow", d: "M0,0 L10,5 L0,10 z" }))),
      drawn, nodes);
  }

  // -- classes ----------------------------------------------------------------------------------

  function classCard(name) {
    const existing = document.querySelector(`.class-card[data-class="${CSS.escape(name)}"]`);
    if (existing) return existing;
    return h("article", { class: "class-card", "data-class": name },
      h("h3", {}, name), h("span", { class: "meta" }), h("div", { class: "graph" }));
  }

  async function refreshGraph(summary) {
    const key = `${summary.version}|${summary.source}`;
    const known = state.graphs.get(summary.name);
    if (known && known.key === key && Date.now() - known.fetchedAt < GRAPH_MAX_AGE_MS) return known;
    let entry;
    try {
      entry = { key, fetchedAt: Date.now(), graph: await getJson(`classes/${encodeURIComponent(summary.name)}/graph`) };
    } catch (error) {
      if (error.status === 401 || error.status === 0 || error.status >= 500) throw error;
      entry = { key, fetchedAt: Date.now(), error: error.message };
    }
    entry.drawn = false;
    state.graphs.set(summary.name, entry);
    return entry;
  }

  async function renderClasses(classes) {
    const entries = await Promise.all(classes.map(refreshGraph));
    const names = new Set(classes.map((c) => c.name));
    for (const name of state.graphs.keys()) if (!names.has(name)) state.graphs.delete(name);
    const cards = classes.map((c, i) => {
      const card = classCard(c.name);
      const facts = [c.kind, c.version !== null && c.version !== undefined ? `version ${c.version}` : null, c.source,
        `${c.live_apps} live`, `${c.finished_runs} finished run${c.finished_runs === 1 ? "" : "s"}`].filter(Boolean);
      card.querySelector(".meta").textContent = facts.join(" · ");
      const entry = entries[i];
      if (!entry.drawn) {
        state.drawings += 1;
        card.querySelector(".graph").replaceChildren(entry.graph
          ? drawGraph(entry.graph, state.drawings) : h("p", { class: "error-text" }, entry.error));
        entry.drawn = true;
      }
      markLiveStages(card, c.name);
      return card;
    });
    $("classes").replaceChildren(...cards);
    $("classes-empty").hidden = classes.length > 0;
  }

  function markLiveStages(card, name) {
    const counts = new Map();
    for (const a of state.apps) if (a.app_class === name && a.stage) counts.set(a.stage, (counts.get(a.stage) || 0) + 1);
    for (const node of card.querySelectorAll("g.node")) {
      const n = counts.get(node.dataset.stage) || 0;
      node.dataset.live = String(n);
      node.querySelector(".live-count").textContent = n ? `● ${n}` : "";
      node.classList.toggle("live", n > 0);
    }
  }

  // -- polling ----------------------------------------------------------------------------------

  async function refresh() {
    const [win, buckets] = $("act-window").value.split(":");
    const results = await Promise.allSettled([
      getJson("apps"), getJson("backends"), getJson("stats"), getJson("classes"),
      getJson("act", { window_s: win, buckets }),
    ]);
    const failures = results.filter((r) => r.status === "rejected").map((r) => r.reason);
    const [apps, backends, stats, classes, act] = results.map((r) => (r.status === "fulfilled" ? r.value : null));
    if (stats) { state.liveTotal = stats.live_apps; renderStats(stats); }
    if (apps) { state.apps = apps; renderApps(); }
    if (backends) renderBackends(backends);
    if (act) renderAct(act);
    if (classes) {
      renderClassFilter(classes);
      renderApps();
      try { await renderClasses(classes); } catch (error) { failures.push(error); }
    }
    const now = new Date().toLocaleTimeString([], { hour12: false });
    if (failures.length === 0) {
      hideBanner();
      $("updated").textContent = `Updated ${now}`;
      document.body.dataset.loaded = "true";
      return;
    }
    // The most telling failure first: a login problem explains every other one.
    const priority = (e) => ({ 401: 0, 403: 1, 502: 2, 503: 2, 0: 3 })[e.status] ?? 4;
    failures.sort((a, b) => priority(a) - priority(b));
    showBanner(failures[0]);
    $("updated").textContent = `Update failed at ${now}`;
  }

  async function loop() {
    if (!document.hidden) {
      try {
        await refresh();
      } catch (error) {
        showBanner(error instanceof ApiError ? error : new ApiError(-1, String(error)));
      }
    }
    setTimeout(loop, POLL_MS);
  }

  $("poll-s").textContent = String(POLL_MS / 1000);
  $("class-filter").addEventListener("change", (e) => { state.classFilter = e.target.value; renderApps(); });
  $("act-window").addEventListener("change", () => refresh());
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  loop();
})();
