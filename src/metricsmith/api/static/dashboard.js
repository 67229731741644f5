// metricsmith dashboard: plain JavaScript over the /v1 API (no build step, plotly.js from the plotly wheel).
"use strict";

const KEY_STORAGE = "metricsmith_api_key";
const MEASURES = [["total_events", "Events"], ["active_users", "Active users"], ["new_users", "New users"],
                  ["revenue_cents", "Revenue (cents)"]];
const COLORS = { complete: "#4aa3ff", partial: "#f0a330", line: "#8b98a5" };
const LAYOUT = { paper_bgcolor: "#17212b", plot_bgcolor: "#17212b", font: { color: "#e6edf3" },
                 margin: { l: 60, r: 20, t: 40, b: 40 }, showlegend: true, legend: { orientation: "h" } };
const state = { grains: [], stream: null, spark: { x: [], y: [] }, page: null };

function apiKey() { return sessionStorage.getItem(KEY_STORAGE) || ""; }

function headers() {
  const key = apiKey();
  return key ? { Authorization: "Bearer " + key } : {};
}

function banner(text) {
  const el = document.getElementById("banner");
  el.textContent = text || "";
  el.hidden = !text;
}

async function api(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    if (response.status === 401) banner("An API key is needed: " + message);
    throw new Error(message);
  }
  return response.json();
}

function fmt(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") return value.toLocaleString(undefined, { maximumFractionDigits: 2 });
  return String(value);
}

function isoDaysAgo(days) {
  const d = new Date(); d.setUTCDate(d.getUTCDate() - days);
  return d.toISOString().slice(0, 10);
}

// ---------------------------------------------------------------- overview
async function loadGrains() {
  const data = await api("/v1/metrics");
  state.grains = data.grains;
  const select = document.getElementById("grain");
  select.innerHTML = "";
  for (const g of data.grains) {
    const option = document.createElement("option");
    option.value = g.name; option.textContent = g.adjective;
    select.appendChild(option);
  }
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  select.value = params.get("grain") || (data.grains[1] || data.grains[0]).name;
  document.getElementById("start").value = params.get("start") || isoDaysAgo(180);
  document.getElementById("end").value = params.get("end") || isoDaysAgo(0);
}

// a growth figure on a basis other than "full" carries a marker (the legend says what each means)
const BASIS_MARKS = { full: "", to_date: "ᵗᵈ", partial_baseline: "ᵖᵇ", none: "ⁿ" };
const BASIS_TEXT = { to_date: "period to date vs the same days of the previous period",
                     partial_baseline: "only the days the partial previous period has", none: "nothing to compare" };

function basisMark(basis) {
  return basis ? (BASIS_MARKS[basis] === undefined ? "?" : BASIS_MARKS[basis]) : "";
}

function basisColumn(grain) {
  const g = state.grains.find((x) => x.name === grain);
  return g && g.comparisons.length ? g.comparisons[0] + "_basis" : null;
}

function growthColumn(grain, measure) {
  const g = state.grains.find((x) => x.name === grain);
  return g && g.comparisons.length ? measure + "_" + g.comparisons[0] + "_pct" : null;
}

function drawSeries(grain, rows) {
  const g = state.grains.find((x) => x.name === grain);
  const key = g.start_column;
  for (const [measure, label] of MEASURES) {
    const growth = growthColumn(grain, measure);
    const partial = rows.filter((r) => !r.is_complete);
    // one trace (so every bar gets the same width); a partial period is orange and hatched
    const traces = [
      { type: "bar", name: label, x: rows.map((r) => r[key]), y: rows.map((r) => r[measure]),
        marker: { color: rows.map((r) => (r.is_complete ? COLORS.complete : COLORS.partial)),
                  pattern: { shape: rows.map((r) => (r.is_complete ? "" : "/")) } },
        customdata: rows.map((r) => [growth ? r[growth] : null, r.is_complete ? "" : " (partial period)",
                                     basisMark(r[basisColumn(grain)])]),
        hovertemplate: "%{x}: %{y}%{customdata[1]}" + (growth ? "<br>growth %{customdata[0]:.1f} %%{customdata[2]}" : "")
          + "<extra></extra>" },
    ];
    const layout = Object.assign({}, LAYOUT, { title: { text: label + " — " + g.adjective }, showlegend: false });
    Plotly.react("chart-" + measure, traces, layout, { displaylogo: false, responsive: true });
    const el = document.getElementById("chart-" + measure);
    el.dataset.points = String(rows.length);
    el.dataset.partial = String(partial.length);
    el.dataset.grain = grain;
  }
}

function drawSummary(summary, rows) {
  const tiles = document.getElementById("summary");
  tiles.innerHTML = "";
  for (const [measure, label] of MEASURES) {
    const growth = summary.growth_pct[measure];
    const additive = summary.totals[measure] !== undefined;
    const mean = rows.length ? rows.reduce((sum, r) => sum + r[measure], 0) / rows.length : null;
    const tile = document.createElement("div");
    tile.className = "tile";
    const cls = growth === null || growth === undefined ? "" : growth >= 0 ? "up" : "down";
    tile.innerHTML = '<div class="label"></div><div class="value"></div><div class="growth ' + cls + '"></div>';
    tile.querySelector(".label").textContent = label + (additive ? " (total, " : " (mean per period, ")
      + summary.complete_periods + " complete of " + summary.periods.length + ")";
    tile.querySelector(".value").textContent = fmt(additive ? summary.totals[measure] : mean);
    const basis = summary.growth_basis || "full";
    const growthEl = tile.querySelector(".growth");
    growthEl.dataset.basis = basis;
    growthEl.textContent = !additive ? "distinct counts do not add up across periods"
      : growth === null || growth === undefined ? "no comparison"
      : (growth >= 0 ? "+" : "") + fmt(growth) + " %" + basisMark(basis) + " vs the " + summary.compared_periods
        + " periods before (" + summary.alignment + ")" + (BASIS_TEXT[basis] ? "; " + basisMark(basis) + " "
        + BASIS_TEXT[basis] : "");
    tiles.appendChild(tile);
  }
}

async function showOverview() {
  if (!state.grains.length) await loadGrains();
  const grain = document.getElementById("grain").value;
  const start = document.getElementById("start").value;
  const end = document.getElementById("end").value;
  const query = "?start=" + encodeURIComponent(start) + "&end=" + encodeURIComponent(end);
  const [data, summary] = await Promise.all([api("/v1/metrics/" + grain + query),
                                             api("/v1/metrics/" + grain + "/summary" + query)]);
  drawSeries(grain, data.rows);
  drawSummary(summary, data.rows);
  document.getElementById("page-overview").dataset.ready = grain + ":" + data.rows.length;
}

// ---------------------------------------------------------------- custom metrics
async function showCustom() {
  const data = await api("/v1/custom-metrics");
  const select = document.getElementById("cm-metric");
  const previous = select.value;
  select.innerHTML = "";
  for (const m of data.metrics) {
    const option = document.createElement("option");
    option.value = m.slug; option.textContent = m.name + " (" + m.visibility.toLowerCase() + ")";
    select.appendChild(option);
  }
  if (previous) select.value = previous;
  document.getElementById("page-custom").dataset.count = String(data.metrics.length);
  if (data.metrics.length) await showCustomMetric(true);
  else document.getElementById("cm-description").textContent = "No custom metric is visible to this key.";
}

async function showCustomMetric(reset) {
  const slug = document.getElementById("cm-metric").value;
  const metric = await api("/v1/custom-metrics/" + slug);
  const versionSelect = document.getElementById("cm-version");
  const dimSelect = document.getElementById("cm-dimension");
  if (reset) {
    versionSelect.innerHTML = "";
    for (const v of metric.versions) {
      const option = document.createElement("option");
      option.value = v.version; option.textContent = "v" + v.version;
      versionSelect.appendChild(option);
    }
    versionSelect.value = metric.current_version;
    dimSelect.innerHTML = '<option value="">(all)</option>';
    for (const d of metric.spec.dimensions || []) {
      const option = document.createElement("option");
      option.value = d; option.textContent = d;
      dimSelect.appendChild(option);
    }
  }
  document.getElementById("cm-description").textContent = metric.description || metric.spec.type;
  const values = [];
  let cursor = null;
  do {
    const page = await api("/v1/custom-metrics/" + slug + "/values?limit=1000&version=" + versionSelect.value
                           + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
    values.push(...page.values);
    cursor = page.next_cursor;
  } while (cursor);
  const dim = dimSelect.value;
  const valueSelect = document.getElementById("cm-dimension-value");
  const choices = [...new Set(values.map((v) => String((v.dimensions || {})[dim])))].sort();
  if (reset || valueSelect.dataset.dim !== dim) {
    valueSelect.innerHTML = '<option value="">(every value)</option>';
    if (dim) for (const c of choices) {
      const option = document.createElement("option");
      option.value = c; option.textContent = c;
      valueSelect.appendChild(option);
    }
    valueSelect.dataset.dim = dim;
  }
  const groups = new Map();
  for (const v of values) {
    const label = dim ? String((v.dimensions || {})[dim]) : Object.values(v.dimensions || {}).join(" / ") || slug;
    if (dim && valueSelect.value && label !== valueSelect.value) continue;
    if (!groups.has(label)) groups.set(label, { x: [], y: [] });
    groups.get(label).x.push(v.period_start); groups.get(label).y.push(v.value);
  }
  const traces = [...groups.entries()].map(([name, s]) => ({ type: "scatter", mode: "lines+markers", name, x: s.x, y: s.y }));
  Plotly.react("chart-custom", traces, Object.assign({}, LAYOUT, { title: { text: metric.name + " v" + versionSelect.value } }),
               { displaylogo: false, responsive: true });
}

// ---------------------------------------------------------------- realtime (SSE over fetch, so the key travels in a header)
function drawRealtime(snapshot) {
  const tiles = document.getElementById("rt-tiles");
  tiles.innerHTML = "";
  let total = null;
  for (const metric of snapshot.metrics) {
    for (const series of metric.series) {
      const labels = Object.entries(series.labels).map(([k, v]) => k + "=" + v).join(", ");
      let value = series.value;
      if (metric.type === "histogram") value = "p50 " + fmt(value.quantiles.p50) + " · p99 " + fmt(value.quantiles.p99);
      else if (metric.type === "rate") value = Object.entries(value).map(([w, r]) => fmt(r) + "/s (" + w + ")").join(" · ");
      else value = fmt(value);
      const tile = document.createElement("div");
      tile.className = "tile";
      tile.dataset.metric = metric.name + (labels ? "{" + labels + "}" : "");
      tile.innerHTML = '<div class="label"></div><div class="value"></div>';
      tile.querySelector(".label").textContent = metric.name + (labels ? " {" + labels + "}" : "");
      tile.querySelector(".value").textContent = value;
      tiles.appendChild(tile);
      if (metric.type === "counter" && !labels && total === null && metric.name.indexOf("events") >= 0) total = series.value;
    }
  }
  if (total !== null) {
    state.spark.x.push(new Date().toISOString()); state.spark.y.push(total);
    if (state.spark.x.length > 300) { state.spark.x.shift(); state.spark.y.shift(); }
    Plotly.react("chart-sparkline", [{ type: "scatter", mode: "lines", x: state.spark.x, y: state.spark.y,
                                       line: { color: COLORS.complete } }],
                 Object.assign({}, LAYOUT, { title: { text: "events (live)" }, showlegend: false }),
                 { displaylogo: false, responsive: true, staticPlot: true });
  }
  document.getElementById("page-realtime").dataset.updates = String(Number(document.getElementById("page-realtime").dataset.updates || 0) + 1);
}

async function streamRealtime() {
  if (state.stream) return;
  const controller = new AbortController();
  state.stream = controller;
  const status = document.getElementById("rt-status");
  try {
    const response = await fetch("/v1/realtime/stream", { headers: headers(), signal: controller.signal });
    if (!response.ok) { status.textContent = "unavailable (" + response.status + ")"; state.stream = null; return; }
    status.textContent = "connected";
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end); buffer = buffer.slice(end + 2);
        const event = (block.match(/^event: (.*)$/m) || [])[1];
        const data = (block.match(/^data: (.*)$/m) || [])[1];
        if (event === "snapshot" && data) drawRealtime(JSON.parse(data));
        if (event === "error" && data) status.textContent = JSON.parse(data).error;
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") status.textContent = "disconnected: " + e.message;
  }
  state.stream = null;
  if (state.page === "realtime") setTimeout(streamRealtime, 2000);
}

// ---------------------------------------------------------------- jobs
function when(value) { return value ? value.replace("T", " ").slice(0, 16) + " UTC" : "never"; }

async function showJobs() {
  const report = await api("/v1/jobs");
  document.getElementById("jobs-status").textContent = "overall: " + report.status + " (checked " + when(report.checked_at) + ")";
  const body = document.querySelector("#jobs-table tbody");
  body.innerHTML = "";
  for (const job of report.jobs) {
    const runs = await api("/v1/jobs/" + encodeURIComponent(job.job_name) + "/runs?limit=5");
    const row = document.createElement("tr");
    row.dataset.job = job.job_name;
    const cells = [job.job_name, job.state, when(job.last_success_at), when(job.last_failure_at),
                   String(job.consecutive_failures), job.latest_period || "none", when(job.next_scheduled_at)];
    for (const text of cells) { const td = document.createElement("td"); td.textContent = text; row.appendChild(td); }
    row.children[1].className = "state-" + job.state;
    if (job.last_error) {
      const err = document.createElement("div"); err.className = "error"; err.textContent = job.last_error;
      row.children[3].appendChild(err);
    }
    const list = document.createElement("td");
    for (const run of runs.runs) {
      const div = document.createElement("div");
      div.className = "run run-" + run.status.toLowerCase();
      div.textContent = when(run.started_at) + " " + run.status + (run.error_message ? ": " + run.error_message : "");
      list.appendChild(div);
    }
    row.appendChild(list);
    body.appendChild(row);
  }
  document.getElementById("page-jobs").dataset.ready = String(report.jobs.length);
}

// ---------------------------------------------------------------- firing alerts (every page)
async function showAlerts() {
  const el = document.getElementById("alerts");
  let body;
  try {
    const response = await fetch("/v1/alerts?state=FIRING&limit=20", { headers: headers() });
    if (!response.ok) { el.hidden = true; return; }  // no key, or no alerting: nothing to show
    body = await response.json();
  } catch (e) { el.hidden = true; return; }
  el.replaceChildren();
  for (const incident of body.incidents) {
    const line = document.createElement("div");
    line.className = incident.severity;
    line.textContent = "FIRING " + incident.rule + " (" + incident.severity + "): " + (incident.summary || "");
    el.appendChild(line);
  }
  el.dataset.firing = String(body.incidents.length);
  el.hidden = body.incidents.length === 0;
}

// ---------------------------------------------------------------- navigation
const PAGES = { overview: showOverview, custom: showCustom, realtime: streamRealtime, jobs: showJobs };

async function show(page) {
  if (!PAGES[page]) page = "overview";
  state.page = page;
  if (page !== "realtime" && state.stream) { state.stream.abort(); state.stream = null; }
  for (const el of document.querySelectorAll(".page")) el.hidden = el.id !== "page-" + page;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  banner("");
  showAlerts();
  try { await PAGES[page](); } catch (e) { if (!document.getElementById("banner").textContent) banner(e.message); }
}

function currentPage() { return location.hash.slice(1).split("?")[0] || "overview"; }

window.addEventListener("hashchange", () => show(currentPage()));
document.getElementById("apply-range").addEventListener("click", () => show("overview"));
document.getElementById("grain").addEventListener("change", () => show("overview"));
document.getElementById("cm-metric").addEventListener("change", () => showCustomMetric(true).catch((e) => banner(e.message)));
document.getElementById("cm-version").addEventListener("change", () => showCustomMetric(false).catch((e) => banner(e.message)));
document.getElementById("cm-dimension").addEventListener("change", () => showCustomMetric(false).catch((e) => banner(e.message)));
document.getElementById("cm-dimension-value").addEventListener("change", () => showCustomMetric(false).catch((e) => banner(e.message)));
document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = document.getElementById("api-key").value.trim();
  if (value) sessionStorage.setItem(KEY_STORAGE, value);
  document.getElementById("api-key").value = "";
  state.grains = [];
  show(currentPage());
});
document.getElementById("forget-key").addEventListener("click", () => { sessionStorage.removeItem(KEY_STORAGE); show(currentPage()); });
show(currentPage());
