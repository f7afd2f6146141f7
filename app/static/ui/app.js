// Trainyard's dashboard: plain JavaScript over the same JSON, SSE and plot routes a script
// would use. The API key lives in this tab's sessionStorage and travels only in the
// Authorization header (never in a URL, never logged). Text from the API is always set as
// text (textContent), never parsed as HTML.
"use strict";

const KEY_SLOT = "trainyard.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const view = document.getElementById("view");
let leaving = []; // what the current page must stop (timers, streams) when another opens

// ------------------------------------------------------------------ plumbing

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

class SignedOut extends Error {}

function apiKey() { return sessionStorage.getItem(KEY_SLOT); }

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${apiKey()}`, ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) { signOut(); throw new SignedOut(); }
  return response;
}

async function json(path) {
  const response = await api(path);
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

async function errorText(response) {
  try { return (await response.json()).error.message; } catch { return response.statusText; }
}

function every(ms, fn) {
  const timer = setInterval(fn, ms);
  leaving.push(() => clearInterval(timer));
}

function statusCell(status) {
  return el("span", { class: `status status-${status}`, "data-status": status }, status);
}

function fmt(value) {
  return typeof value === "number" ? Number(value.toPrecision(4)).toString() : "–";
}

function headline(summary) {
  if (!summary || !summary.test) return "–";
  const test = summary.test;
  return "accuracy" in test ? `test accuracy ${fmt(test.accuracy)}` : `test RMSE ${fmt(test.rmse)}`;
}

// A file behind the Bearer header: fetched, then handed to the browser as a download.
function downloadLink(label, path, filename) {
  return el("a", { href: "#", "data-download": path, onclick: async (event) => {
    event.preventDefault();
    const response = await api(path);
    if (!response.ok) { alert(await errorText(response)); return; }
    const url = URL.createObjectURL(await response.blob());
    const a = el("a", { href: url, download: filename });
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } }, label);
}

// --------------------------------------------------------------- sign in/out

function signOut() {
  sessionStorage.removeItem(KEY_SLOT);
  document.getElementById("nav").hidden = true;
  if (location.hash !== "#/sign-in") location.hash = "#/sign-in";
}

function signInPage() {
  document.getElementById("nav").hidden = true;
  view.replaceChildren(document.getElementById("sign-in").content.cloneNode(true));
  const form = document.getElementById("sign-in-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("api-key");
    const key = input.value.trim();
    input.value = "";
    const response = await fetch("/v1/jobs?limit=1", { headers: { Authorization: `Bearer ${key}` } });
    if (!response.ok) {
      document.getElementById("sign-in-error").textContent =
        response.status === 401 ? "That key was not accepted." : await errorText(response);
      return;
    }
    sessionStorage.setItem(KEY_SLOT, key);
    location.hash = "#/jobs";
  });
}

// ------------------------------------------------------------------- lists

async function jobsPage() {
  const body = el("tbody");
  view.replaceChildren(el("h1", {}, "Jobs"), el("table", { id: "jobs" },
    el("thead", {}, el("tr", {}, ["Name", "Status", "Progress", "Result", "Created"]
      .map((h) => el("th", {}, h)))), body));
  const refresh = async () => {
    const page = await json("/v1/jobs?limit=50");
    body.replaceChildren(...page.items.map((job) => el("tr", { "data-job": job.id },
      el("td", {}, el("a", { href: `#/jobs/${job.id}` }, job.name)),
      el("td", {}, statusCell(job.status)),
      el("td", {}, el("progress", { max: job.progress.total, value: job.progress.epoch }),
        ` ${job.progress.epoch}/${job.progress.total}`),
      el("td", {}, headline(job.summary)),
      el("td", { class: "muted" }, new Date(job.created_at).toLocaleString()))));
  };
  await refresh();
  every(3000, refresh);
}

async function experimentsPage() {
  const body = el("tbody");
  view.replaceChildren(el("h1", {}, "Experiments"), el("table", { id: "experiments" },
    el("thead", {}, el("tr", {}, ["Name", "Kind", "Status", "Children done", "Created"]
      .map((h) => el("th", {}, h)))), body));
  const refresh = async () => {
    const page = await json("/v1/experiments?limit=50");
    body.replaceChildren(...page.items.map((exp) => el("tr", { "data-experiment": exp.id },
      el("td", {}, el("a", { href: `#/experiments/${exp.id}` }, exp.name || exp.id)),
      el("td", {}, exp.kind.replaceAll("_", " ")),
      el("td", {}, statusCell(exp.status)),
      el("td", {}, el("progress", { max: exp.progress.total, value: exp.progress.done }),
        ` ${exp.progress.done}/${exp.progress.total}`),
      el("td", { class: "muted" }, new Date(exp.created_at).toLocaleString()))));
  };
  await refresh();
  every(3000, refresh);
}

// --------------------------------------------------------------- live charts

const CHARTS = [
  { metric: "loss", title: "Loss (lower is better)" },
  { metric: "main", title: "" },  // accuracy or RMSE, by the job's task
  { metric: "lr", title: "Learning rate", trainOnly: true },  // logged for training only
  { metric: "grad_norm", title: "Gradient norm", trainOnly: true },
];

// One chart: epochs on x, a training and a validation series, redrawn as points arrive.
class LiveChart {
  constructor(metric, title, container, trainOnly) {
    this.metric = metric;
    this.points = trainOnly ? { train: new Map() } : { train: new Map(), val: new Map() };
    this.box = el("div", { class: "chart", "data-chart": metric, "data-points": 0 },
      el("h3", {}, title));
    container.append(this.box);
    const lines = [{ label: "training data", stroke: "#2e6fd8", width: 2, points: { show: true } },
      { label: "validation data", stroke: "#e07b00", width: 2, dash: [6, 4],
        points: { show: true } }].slice(0, Object.keys(this.points).length);
    this.plot = new uPlot({
      width: 520, height: 240,
      scales: { x: { time: false } },
      axes: [{ label: "Epoch", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] },
        { label: title }],
      series: [{ label: "epoch" }, ...lines],
    }, [[], ...lines.map(() => [])], this.box);
  }

  add(split, epoch, value) {
    if (!(split in this.points)) return;
    this.points[split].set(epoch, value);
    const splits = Object.keys(this.points);
    const epochs = [...new Set(splits.flatMap((s) => [...this.points[s].keys()]))]
      .sort((a, b) => a - b);
    const column = (s) => epochs.map((e) => this.points[s].get(e) ?? null);
    this.plot.setData([epochs, ...splits.map(column)]);
    this.box.dataset.points = String(epochs.length);
  }
}

// Server-sent events read with fetch(), so the Authorization header travels (EventSource
// cannot send one). Resumes after a dropped connection with Last-Event-ID.
async function follow(path, onEvent, signal) {
  let lastId = null;
  while (!signal.aborted) {
    const headers = { Accept: "text/event-stream" };
    if (lastId !== null) headers["Last-Event-ID"] = lastId;
    try {
      const response = await api(path, { headers, signal });
      if (!response.ok) throw new Error(await errorText(response));
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return; // the server ends the stream after the terminal status
        buffer += decoder.decode(value, { stream: true }).replaceAll("\r\n", "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = parseEvent(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (event.id !== null) lastId = event.id;
          if (event.data !== null) onEvent(event.event, JSON.parse(event.data));
        }
      }
    } catch (error) {
      if (signal.aborted || error instanceof SignedOut) return;
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
}

function parseEvent(block) {
  const event = { id: null, event: "message", data: null };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const at = line.indexOf(":");
    const field = at < 0 ? line : line.slice(0, at);
    const value = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
    if (field === "data") event.data = event.data === null ? value : `${event.data}\n${value}`;
    else if (field === "id") event.id = value;
    else if (field === "event") event.event = value;
  }
  return event;
}

// ------------------------------------------------------------------ a job

async function jobPage(jobId) {
  const job = await json(`/v1/jobs/${encodeURIComponent(jobId)}`);
  const main = job.spec.loss && ["mse", "mae", "huber"].includes(job.spec.loss.kind)
    ? "rmse" : "accuracy";
  const status = el("span", { id: "job-status" }, statusCell(job.status));
  const progress = el("progress", { id: "job-progress", max: job.progress.total,
                                    value: job.progress.epoch });
  const progressText = el("span", {}, ` ${job.progress.epoch}/${job.progress.total} epochs`);
  const charts = el("div", { class: "charts", id: "charts" });
  const after = el("div", { id: "job-after" });
  view.replaceChildren(el("h1", {}, job.name, " ", el("span", { class: "muted" }, job.id)),
    el("p", {}, status, "  ", progress, progressText), charts, after);
  const byMetric = {};
  for (const chart of CHARTS) {
    const metric = chart.metric === "main" ? main : chart.metric;
    const title = chart.metric === "main"
      ? (main === "accuracy" ? "Accuracy (fraction right)" : "RMSE (typical error)") : chart.title;
    byMetric[metric] = new LiveChart(metric, title, charts, chart.trainOnly);
  }
  const control = new AbortController();
  leaving.push(() => control.abort());
  const ended = () => jobResults(jobId, after);
  if (TERMINAL.has(job.status)) ended();
  follow(`/v1/jobs/${encodeURIComponent(jobId)}/events`, (kind, event) => {
    const data = event.data;
    if (kind === "metric" && data.value !== null && byMetric[data.name]) {
      byMetric[data.name].add(data.split, data.epoch, data.value);
    } else if (kind === "progress") {
      progress.max = data.total_epochs; progress.value = data.epoch;
      progressText.textContent = ` ${data.epoch}/${data.total_epochs} epochs`;
    } else if (kind === "status") {
      status.replaceChildren(statusCell(data.status));
      if (TERMINAL.has(data.status) && !TERMINAL.has(job.status)) { job.status = data.status; ended(); }
    }
  }, control.signal);
}

async function jobResults(jobId, box) {
  const job = await json(`/v1/jobs/${encodeURIComponent(jobId)}`);
  const parts = [];
  if (job.error) parts.push(el("p", { class: "error" }, `${job.error.reason}: ${job.error.message}`));
  if (job.summary) {
    const s = job.summary;
    parts.push(el("h2", {}, "Result"), el("dl", { class: "facts" },
      el("dt", {}, "Test"), el("dd", {}, headline(s)),
      el("dt", {}, "Best epoch"), el("dd", {}, `${s.best_epoch ?? "–"} (by ${s.monitor})`),
      el("dt", {}, "Epochs run"), el("dd", {}, s.epochs_completed),
      el("dt", {}, "Parameters"), el("dd", {}, s.parameters)));
  }
  const checkpoints = await json(`/v1/jobs/${encodeURIComponent(jobId)}/checkpoints`);
  if (checkpoints.length) {
    parts.push(el("h2", {}, "Checkpoints (safetensors weights)"), el("p", { class: "downloads" },
      checkpoints.map((c) => downloadLink(`epoch ${c.epoch}${c.is_best ? " (best)" : ""}`,
        c.download, `${jobId}-epoch${c.epoch}.safetensors`))));
  }
  if (job.model && job.model.status === "ready") {
    parts.push(el("h2", {}, "Model"), el("p", { class: "downloads" },
      downloadLink("model bundle (ONNX graph, weights, model.json; zip)",
        `/v1/jobs/${encodeURIComponent(jobId)}/model`, `${jobId}-model.zip`)));
  } else if (job.model) {
    parts.push(el("h2", {}, "Model"), el("p", { class: "muted", id: "model-state" },
      `model ${job.model.status}${job.model.reason ? `: ${job.model.reason}` : ""}`));
  }
  const plots = (await json(`/v1/jobs/${encodeURIComponent(jobId)}/plots`)).plots;
  parts.push(el("h2", {}, "Plots (drawn by the server)"), el("p", { class: "downloads" },
    plots.filter((p) => job.summary || p.name !== "confusion_matrix")
      .map((p) => downloadLink(`${p.name.replaceAll("_", " ")} (PNG)`, p.png,
        `${jobId}-${p.name}.png`))));
  if (job.summary) {
    if (plots.some((p) => p.name === "confusion_matrix")) {
      const holder = el("div", { class: "plot", "data-plot": "confusion_matrix" });
      parts.push(holder);
      showSvg(`/v1/jobs/${encodeURIComponent(jobId)}/plots/confusion_matrix.svg`, holder);
    }
  }
  box.replaceChildren(...parts);
}

// Our own server's matplotlib SVG, inlined so that its series can be inspected; parsed as
// XML (scripts in it could not run, and the page's CSP allows only its own script files).
async function showSvg(path, holder) {
  const response = await api(path);
  if (!response.ok) {
    holder.replaceChildren(el("p", { class: "muted" }, await errorText(response)));
    holder.dataset.state = "waiting";
    return false;
  }
  const doc = new DOMParser().parseFromString(await response.text(), "image/svg+xml");
  holder.replaceChildren(document.importNode(doc.documentElement, true));
  holder.dataset.state = "drawn";
  return true;
}

// ------------------------------------------------------------ an experiment

async function experimentPage(expId) {
  const base = `/v1/experiments/${encodeURIComponent(expId)}`;
  const exp = await json(base);
  const status = el("span", { id: "experiment-status" }, statusCell(exp.status));
  const plotsBox = el("div", { id: "plots" });
  const children = el("tbody");
  view.replaceChildren(
    el("h1", {}, exp.name || exp.id, " ", el("span", { class: "muted" }, exp.kind.replaceAll("_", " "))),
    el("p", {}, status, ` ${exp.progress.done}/${exp.progress.total} children done`),
    el("p", { class: "error" }, exp.error || ""),
    el("h2", {}, "Plots"), plotsBox,
    el("h2", {}, "Children"), el("table", { id: "children" }, el("thead", {}, el("tr", {},
      ["Job", "Role", "Status", "Result"].map((h) => el("th", {}, h)))), children));
  const { plots } = await json(`${base}/plots`);
  const holders = plots.map((p) => el("div", { class: "plot", "data-plot": p.name },
    el("p", { class: "muted" }, "waiting for the result…")));
  plotsBox.replaceChildren(...holders, el("p", { class: "downloads" },
    plots.map((p) => downloadLink(`${p.name} (PNG)`, p.png, `${expId}-${p.name}.png`))));
  let drawn = false;
  const refresh = async () => {
    const now = await json(base);
    status.replaceChildren(statusCell(now.status));
    const kids = await json(`${base}/jobs`);
    children.replaceChildren(...kids.items.map((job) => el("tr", {},
      el("td", {}, el("a", { href: `#/jobs/${job.id}` }, job.id)),
      el("td", {}, JSON.stringify(job.role)), el("td", {}, statusCell(job.status)),
      el("td", {}, headline(job.summary)))));
    if (!drawn && now.result) {
      drawn = true;
      await Promise.all(plots.map((p, i) => showSvg(p.svg, holders[i])));
    } else if (!drawn && now.status !== "running") {
      drawn = true; // ended without a result (failed or cancelled): nothing will be drawn
      holders.forEach((h) => h.replaceChildren(el("p", { class: "muted" },
        `no plot: the experiment ${now.status} without a result`)));
    }
  };
  await refresh();
  every(2000, () => { if (!drawn) refresh(); });
}

// ------------------------------------------------------------------ routing

async function route() {
  for (const stop of leaving) stop();
  leaving = [];
  const [, page, id] = location.hash.split("/");
  if (!apiKey()) { signInPage(); return; }
  document.getElementById("nav").hidden = false;
  try {
    if (page === "jobs" && id) await jobPage(decodeURIComponent(id));
    else if (page === "experiments" && id) await experimentPage(decodeURIComponent(id));
    else if (page === "experiments") await experimentsPage();
    else if (page === "jobs") await jobsPage();
    else location.hash = "#/jobs";
  } catch (error) {
    if (!(error instanceof SignedOut)) view.replaceChildren(el("p", { class: "error" }, error.message));
  }
}

document.getElementById("sign-out").addEventListener("click", signOut);
window.addEventListener("hashchange", route);
route();
