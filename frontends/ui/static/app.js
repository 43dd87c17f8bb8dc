// labd dashboard: hash-routed pages over the server's JSON API; live events by Server-Sent Events.
"use strict";
// The token arrives once in the URL's fragment (#token=..., never sent to a server) and is kept in this origin's
// localStorage: unlike a cookie for 127.0.0.1, which browsers send to every port of it, no other local server can
// read it. Every request carries it as Authorization: Bearer.
const TOKEN_KEY = "labd_ui_token";
// A token in the fragment replaces a different kept one only if the server does not refuse it: any page (or another
// local user's link) can send the browser to /#token=junk, which logged this browser out of its dashboard. (With
// none kept, or the same, it is kept at once: the page loads as soon as before.)
const login = (async () => {
  if (!location.hash.startsWith("#token=")) return;
  const given = decodeURIComponent(location.hash.slice(7));
  history.replaceState(null, "", location.pathname + "#/");
  const kept = localStorage.getItem(TOKEN_KEY);
  if (kept && kept !== given) {
    const r = await fetch("/api/status", {headers: {Authorization: `Bearer ${given}`}}).catch(() => null);
    if (r && r.status === 403) return;  // a 503 (no daemon) or no answer says nothing against it
  }
  localStorage.setItem(TOKEN_KEY, given);
})();
const auth = (extra = {}) => ({...extra, Authorization: `Bearer ${localStorage.getItem(TOKEN_KEY) || ""}`});
const NO_TOKEN = "this browser has no valid token for this dashboard: open the URL `labd ui` printed";
const $ = (sel, root = document) => root.querySelector(sel);
// Text the page shows from the record (names, paths, prompts, messages): a control character or a bidi embedding,
// override or isolate (U+202A-U+202E, U+2066-U+2069) as a visible escape, as the terminal front-ends show them
// (frontends/cli/safetext.py): a file "invoice\u202efdp.exe" read "invoiceexe.pdf". Tab and line breaks stay.
const INVISIBLE = /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]/g;
const visible = t => String(t).replace(INVISIBLE, c => {
  const n = c.charCodeAt(0);
  return n < 0x100 ? "\\x" + n.toString(16).padStart(2, "0") : "\\u" + n.toString(16);
});
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  for (const c of children.flat()) e.append(c instanceof Node ? c : document.createTextNode(visible(c ?? "")));
  return e;
};
let timers = [];
let streams = [];
const TERMINAL = ["completed", "failed", "cancelled", "lost"];
// the DAG tab draws the newest this many nodes of a session (a days-long session has many thousands: its whole
// graph is ~12 MB and an SVG of it more than a page can lay out)
const DAG_NODES = 500;
// the cost tab's charts show the costliest this many rows each
const BAR_ROWS = 50;
// the session list shows the newest this many (the daemon's list reads are bounded; labd ps -a --limit N: more)
const SESSIONS_SHOWN = 200;
function cleanup() { timers.forEach(clearInterval); timers = []; streams.forEach(s => s.close()); streams = []; }

async function api(path, opts = {}) {
  const r = await fetch(path, {headers: auth({"Content-Type": "application/json"}), ...opts});
  const data = await r.json().catch(() => ({}));
  if (r.status === 403) throw new Error(NO_TOKEN);
  if (!r.ok) throw new Error((data.error && `${data.error.message} [${data.error.code}]`) || r.statusText);
  return data;
}

// A Server-Sent Events stream read with fetch (EventSource cannot send the Authorization header). Reconnects
// after a second with Last-Event-ID, as EventSource would; handlers: {message(data), <event name>(data)}.
function eventStream(url, handlers) {
  const ctl = new AbortController();
  let lastId = null;
  const dispatch = block => {
    let name = "message"; const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      else if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("id:")) lastId = line.slice(3).trim();
    }
    if (data.length && handlers[name]) handlers[name](data.join("\n"));
  };
  (async () => {
    while (!ctl.signal.aborted) {
      try {
        const r = await fetch(url, {headers: auth(lastId ? {"Last-Event-ID": lastId} : {}), signal: ctl.signal});
        if (r.status === 403 || r.status === 404 || r.status === 400) {
          const e = await r.json().catch(() => ({}));
          if (handlers.failed) handlers.failed(r.status === 403 ? NO_TOKEN : (e.error && e.error.message) || r.statusText);
          return;
        }
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const {value, done} = await reader.read();
          if (done) break;
          buf += value;
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) { dispatch(buf.slice(0, i)); buf = buf.slice(i + 2); }
        }
      } catch (e) { if (ctl.signal.aborted) return; }
      await new Promise(res => setTimeout(res, 1000));
    }
  })();
  return {close: () => ctl.abort()};
}

// A file of the session, downloaded by the browser itself (saved as it streams in) through a one-time link the page
// asks for with the token: fetched with the token in a header, it was held whole in the page's memory first.
async function download(sid, x) {
  try {
    const t = await api("/api/tickets", {method: "POST", body: JSON.stringify({session: sid, path: x.path, b64: x.path_b64 || null})});
    const a = el("a", {href: t.url, download: x.path.split("/").pop()});
    document.body.append(a); a.click(); a.remove();
    toast(`downloading ${x.path}`);
  } catch (e) { toast(`could not download ${x.path}: ${e.message}`, true); }
}
function toast(msg, error = false) {
  const t = $("#toast");
  t.textContent = msg; t.className = "show" + (error ? " error" : "");
  setTimeout(() => { t.className = ""; }, 4000);
}
const fmtBytes = b => b == null ? "" : b > 2 ** 30 ? (b / 2 ** 30).toFixed(1) + " GiB" : (b / 2 ** 20).toFixed(1) + " MiB";
const fmtAge = t => { if (!t) return ""; const s = Date.now() / 1000 - t;
  return s < 60 ? `${s.toFixed(0)}s` : s < 3600 ? `${(s / 60).toFixed(0)}m` : s < 86400 ? `${(s / 3600).toFixed(1)}h` : `${(s / 86400).toFixed(1)}d`; };
// a running session asked to pause that has not reached its next step boundary yet reads "running, pausing"
const status = (s, pausing = null) => el("span", {class: `status s-${s}`, "data-status": s},
  pausing && s === "running" ? "running, pausing" : s);
// The URL of a session's file: each segment of its path encoded (encodeURI leaves "#", "?" alone: "q?.txt" asked
// for "q", "report#draft" for "report"), the "/" between them kept; a name that is not UTF-8 also by its bytes
// (path_b64: its path is a display form, which a file really named so shares).
const fileUrl = (sid, x) => `/api/sessions/${sid}/files/` + x.path.split("/").map(encodeURIComponent).join("/")
  + (x.path_b64 ? `?b64=${encodeURIComponent(x.path_b64)}` : "");

// ---- sessions ---------------------------------------------------------------------------------------
// A page's list is fetched now and then every second. A failed fetch (the daemon busy or restarting) is shown
// and the next second tries again: one error must never leave a page that has stopped updating.
async function polled(refresh, main) {
  const note = el("p", {class: "act-error", id: "load-error", hidden: true});
  main.append(note);
  const run = () => refresh().then(() => { note.hidden = true; },
                                    e => { note.textContent = `could not load: ${e.message}`; note.hidden = false; });
  await run();
  if (!main.isConnected) return;  // the user moved on while it loaded: no timer for a page no longer shown
  timers.push(setInterval(run, 1000));
}

async function sessionsPage(main) {
  const filter = el("input", {placeholder: "filter by name, workflow or id", id: "filter"});
  const which = el("select", {id: "which"}, el("option", {value: ""}, "all"), el("option", {value: "live"}, "live"),
    ...["completed", "failed", "cancelled", "lost"].map(s => el("option", {value: s}, s)));
  const tbody = el("tbody", {id: "sessions-body"});
  const listNote = el("p", {class: "muted", id: "sessions-note"});
  const table = el("table", {id: "sessions"}, el("thead", {}, el("tr", {}, ...["id", "name", "workflow", "status", "CPU", "memory", "cost", "age", "reason"].map(h => el("th", {}, h)))), tbody);
  main.replaceChildren(el("div", {class: "row"}, el("div", {class: "grow"}, el("div", {class: "card"}, el("div", {class: "row"}, filter, which)), table, listNote), await startForm()));
  const refresh = async () => {
    const live = ["created", "starting", "running", "paused", "waiting_approval", "queued"];
    const wanted = which.value === "live" ? live.join(",") : which.value;
    // the newest SESSIONS_SHOWN, filtered here; a filter naming an older session (its id, a prefix of it, or its
    // name, as labd show takes them) finds it too
    const q = filter.value.toLowerCase().trim();
    const listed = await api(`/api/sessions?limit=${SESSIONS_SHOWN}` + (wanted ? `&status=${wanted}` : ""));
    let rows = listed.filter(s => !q || [s.id, s.name, s.workflow].some(v => (v || "").toLowerCase().includes(q)));
    if (q && listed.length === SESSIONS_SHOWN && !rows.some(s => s.id === q || (s.name || "").toLowerCase() === q)) {
      const named = await api(`/api/sessions/${encodeURIComponent(filter.value.trim())}`).catch(() => null);
      if (named && (!wanted || wanted.split(",").includes(named.status))) rows = [named, ...rows.filter(s => s.id !== named.id)];
    }
    listNote.textContent = listed.length === SESSIONS_SHOWN ? `the newest ${SESSIONS_SHOWN} sessions shown; older ` +
      "ones: type one's id or name in the filter, or labd ps -a --limit N" : "";
    tbody.replaceChildren(...rows.map(s =>
      el("tr", {class: "clickable", dataset: {session: s.id}, onclick: () => { location.hash = `#/s/${s.id}`; }},
        el("td", {}, s.id), el("td", {}, s.name), el("td", {}, s.workflow), el("td", {}, status(s.status, s.pausing)),
        el("td", {}, s.live ? `${s.live.cpu_percent.toFixed(0)}%` : ""), el("td", {}, s.live ? fmtBytes(s.live.rss) : fmtBytes(s.peak_rss)),
        el("td", {}, s.cost ? `$${s.cost.toFixed(4)}` : ""), el("td", {}, fmtAge(s.created_at)), el("td", {class: "muted"}, (s.reason || "").slice(0, 60)))));
  };
  filter.addEventListener("input", refresh); which.addEventListener("change", refresh);
  await polled(refresh, main);
}

async function startForm() {
  const flows = await api("/api/workflows");
  const wf = el("select", {id: "start-workflow"}, ...flows.map(w => el("option", {value: w.name}, w.name)));
  const params = el("textarea", {id: "start-params", rows: 5});
  const fill = () => { const w = flows.find(f => f.name === wf.value) || {params: []};
    params.value = JSON.stringify(Object.fromEntries(w.params.map(p => [p.name, p.default ?? ""])), null, 1); };
  wf.addEventListener("change", fill); fill();
  const name = el("input", {id: "start-name", placeholder: "optional"});
  const memory = el("input", {id: "start-memory", placeholder: "e.g. 512M"});
  const budget = el("input", {id: "start-budget", placeholder: "USD, e.g. 2.50"});
  const go = el("button", {id: "start-button", onclick: async () => {
    try {
      const body = {workflow: wf.value, params: JSON.parse(params.value || "{}"), name: name.value, memory: memory.value,
        // a number the daemon checks; anything else is sent as typed, to be refused ("2,50" was sent as null: no budget)
        budget: budget.value.trim() ? (Number.isFinite(Number(budget.value)) ? Number(budget.value) : budget.value) : null};
      const r = await api("/api/sessions", {method: "POST", body: JSON.stringify(body)});
      toast(`started ${r.session}`); location.hash = `#/s/${r.session}`;
    } catch (e) { toast(e.message, true); }
  }}, "Start");
  return el("div", {class: "card", style: "width:340px"}, el("b", {}, "Start a session"), el("label", {}, "workflow"), wf,
    el("label", {}, "parameters (JSON)"), params, el("label", {}, "name"), name, el("label", {}, "memory limit"), memory,
    el("label", {}, "budget"), budget, el("p", {}, go));
}

// ---- one session ------------------------------------------------------------------------------------
function activityLine(ev) {
  const p = ev.payload || {};
  switch (ev.kind) {
    case "agent.turn.started": return [`▶ ${p.agent} turn`, ""];
    case "agent.turn.finished": return [`■ ${p.agent} turn ${p.status} (${(p.duration || 0).toFixed(2)}s)`, p.status === "ok" || p.status === "completed" ? "" : "act-error"];
    case "llm.response": return [`LLM ${p.model}: ${(p.usage || {}).prompt_tokens ?? "?"}+${(p.usage || {}).completion_tokens ?? "?"} tokens`, "act-llm"];
    case "cost.recorded": return [`cost $${(p.cost || 0).toFixed(6)} (${p.model})`, "act-llm"];
    case "tool.call": return [`tool ${p.name}(${JSON.stringify(p.arguments ?? {}).slice(0, 120)})`, "act-tool"];
    case "tool.result": return [`tool ${p.name} → ${p.status}`, p.status === "ok" ? "act-tool" : "act-error"];
    case "code.execution": return [`run_code exit ${p.exit_code} (${(p.duration || 0).toFixed(2)}s)`, p.exit_code ? "act-error" : "act-tool"];
    case "policy.decision": return (p.rule || p.outcome !== "allowed") ? [`policy ${p.rule || "(default)"}: ${p.outcome} ${p.action} ${p.tool || p.model || p.language || ""}`, p.outcome === "denied" ? "act-error" : "act-approval"] : null;
    case "approval.requested": return [`⏸ approval requested: ${p.prompt || ""}`.slice(0, 200), "act-approval"];
    case "approval.resolved": return [`approval ${p.decision} by ${p.by || p.resolved_by || "?"}`, "act-approval"];
    case "step.started": return [`step ${p.name} started`, ""];
    case "step.finished": return [`step ${p.name} ${p.status}`, p.status === "completed" ? "" : "act-error"];
    case "file.created": case "file.changed": return [`${ev.kind.split(".")[1]} ${p.path}`, "act-tool"];
    case "session.continued": return [`session resumed by ${p.by} (was ${p.from_status}) — ${p.reason || ""}`, ""];
    case "session.ended": return [`session ended: ${p.status} — ${p.reason || ""}`, p.status === "completed" ? "" : "act-error"];
    default: return null;
  }
}

// A session's output as the page shows it, as `labd top` does: colour sequences dropped, a carriage return (a
// progress bar's update) a new line, any other control character as a visible escape (ESC was invisible: its
// sequences read as corrupted text, `[31mRED[0m`).
const shownText = t => visible(t.replace(/\r\n/g, "\n").replace(/\x1b\[[0-9;?]*m/g, "").replace(/\r/g, "\n"));

async function sessionPage(main, sid) {
  const s = await api(`/api/sessions/${sid}?steps=0`);
  if (!main.isConnected) return;  // the user moved on while it loaded: no stream for a page no longer shown
  const head = el("div", {class: "card", id: "session-head"});
  // a pause takes effect at the next step boundary, which a long step may not reach for a while: said meanwhile,
  // from the daemon's `pausing` (a pause asked anywhere: another tab, the CLI, a budget), or at once in the asking tab
  const renderHead = (x, asked = false) => { const pausing = (asked || !!x.pausing) && x.status === "running";
    head.replaceChildren(el("h2", {}, `${x.name} `, status(x.status),
      pausing ? el("span", {class: "muted", id: "pausing"}, " pausing at the next step boundary…") : ""),
    el("div", {class: "muted"}, `${x.id} · ${x.workflow} · cost $${(x.cost || 0).toFixed(4)} · ${x.reason || ""}`),
    el("p", {}, ...(["completed", "failed", "cancelled", "lost"].includes(x.status) ? [] : ["stop", "pause", "resume"]).map(a => el("button", {class: a === "stop" ? "danger" : "secondary", id: `action-${a}`, onclick: async () => {
      try { const r = await api(`/api/sessions/${sid}/${a}`, {method: "POST"}); toast(`${a} sent`);
        if (a === "pause" && r.pausing) renderHead(x, true); else if (a === "resume") renderHead({...x, pausing: null});
      } catch (e) { toast(e.message, true); }
    }}, a)), " ", el("a", {href: "#/approvals"}, "approvals"))); };
  renderHead(s);
  const tabs = ["output", "dag", "cost", "files", "history"];
  const panes = Object.fromEntries(tabs.map(t => [t, el("div", {id: `pane-${t}`, style: t === "output" ? "" : "display:none"})]));
  const bar = el("div", {class: "tabs"}, ...tabs.map(t => el("button", {id: `tab-${t}`, class: t === "output" ? "active" : "", onclick: () => show(t)}, t)));
  const show = t => { for (const k of tabs) { panes[k].style.display = k === t ? "" : "none"; $(`#tab-${k}`).className = k === t ? "active" : ""; }
    if (t === "dag") loadDag(); if (t === "cost") loadCost(); if (t === "files") loadFiles(); if (t === "history") loadHistory(); };
  main.replaceChildren(head, bar, ...Object.values(panes));

  const log = el("pre", {class: "log", id: "output"});
  const logNote = el("p", {class: "muted", id: "output-note", hidden: true},
    `earlier output is not shown here (the page keeps the last million characters): labd logs ${sid} has all of it`);
  const activity = el("div", {class: "activity", id: "activity"});
  // the stream's `event: error` (the daemon gone or not answering): said here while it lasts, gone once events flow
  const streamError = el("p", {class: "act-error", id: "stream-error", hidden: true});
  const streamOk = () => { streamError.hidden = true; };
  panes.output.append(streamError, el("div", {class: "row"}, el("div", {class: "grow"}, el("b", {}, "output"), logNote, log), el("div", {class: "grow"}, el("b", {}, "agent activity"), activity)));
  let pending = [], lastSeq = 0;
  // A browser opens at most 6 connections to a host, and a stream holds one for as long as its session runs: six
  // tabs on running sessions left none for anything else (another tab's page, every tab's polls and approvals).
  // So a hidden tab lets its stream go and follows on from its last seq when it shows again.
  let live = null, ended = false;  // the open stream (none while hidden); the session has ended (watched instead)
  const follow = () => {  // the stream ends with the session; a resumed session (labd resume) is followed again
    if (document.hidden || live) return;
    const es = eventStream(`/api/sessions/${sid}/stream?since=${lastSeq}`, {
      message: data => { streamOk(); const ev = JSON.parse(data); lastSeq = Math.max(lastSeq, ev.seq); pending.push(ev); },
      error: data => { const e = JSON.parse(data);
        streamError.textContent = `live updates interrupted: ${e.message} [${e.code}]`; streamError.hidden = false; },
      resumed: streamOk,
      failed: msg => toast(msg, true),
      end: () => { streamOk(); onEnd(); }});
    live = es;
    streams.push(es);
    const onEnd = () => {
      es.close(); live = null; ended = true;
      const watch = setInterval(async () => {
        if (document.hidden) return;  // a hidden tab checks again when it is shown
        const s = await api(`/api/sessions/${sid}?steps=0`).catch(() => null);
        // anything recorded after the end (a resume; it may already have ended again): follow on from there
        if (s && (s.last_seq > lastSeq || !TERMINAL.includes(s.status))) { clearInterval(watch); ended = false; follow(); }
      }, 2000);
      timers.push(watch);
    };
  };
  const visibility = () => {
    if (document.hidden && live) { live.close(); live = null; }
    else if (!document.hidden && !ended) follow();
  };
  document.addEventListener("visibilitychange", visibility);
  streams.push({close: () => document.removeEventListener("visibilitychange", visibility)});
  follow();
  timers.push(setInterval(async () => {  // batch DOM updates (~10 Hz)
    if (!pending.length) return;
    const batch = pending; pending = [];
    let text = "", ended = false;
    for (const ev of batch) {
      if (ev.kind === "output") text += shownText(ev.payload.text);
      const line = activityLine(ev);
      if (line) activity.append(el("div", {class: line[1], "data-kind": ev.kind}, line[0]));
      ended = ended || ev.kind === "session.ended" || ev.kind.startsWith("approval.") || ev.kind.startsWith("session.");
    }
    if (text) {
      log.append(text);
      if (log.textContent.length > 2e6) {  // from a line's start: no half line at the top
        const kept = log.textContent.slice(-1e6);
        log.textContent = kept.slice(kept.indexOf("\n") + 1);
        logNote.hidden = false;
      }
      log.scrollTop = log.scrollHeight;
    }
    while (activity.childElementCount > 5000) activity.firstChild.remove();
    if (ended) renderHead(await api(`/api/sessions/${sid}?steps=0`));
  }, 100));

  const detail = el("div", {class: "card", id: "node-detail"}, el("span", {class: "muted"}, "click a node for its details"));
  const dagBox = el("div", {id: "dag"});
  const dagNote = el("div", {class: "muted", id: "dag-note"});
  const agentsToggle = el("input", {type: "checkbox", id: "show-agents"});
  panes.dag.append(el("label", {class: "inline"}, agentsToggle, " show agent turns"), dagNote, dagBox, detail);
  const loadDag = async () => {  // the newest DAG_NODES nodes: a days-long session has many thousands
    const d = await api(`/api/sessions/${sid}/dag?newest=${DAG_NODES}`);
    const svg = renderDag(dagBox, d.dag, {showAgents: agentsToggle.checked, onSelect: async n => {
      const evs = await api(`/api/sessions/${sid}/events?node=${encodeURIComponent(n.node_id)}`);
      detail.replaceChildren(el("b", {}, `${n.name} (${n.node_id}) `), status(n.status),
        el("div", {class: "muted"}, `${n.kind}${n.agent ? " · " + n.agent : ""} · ${n.duration ? n.duration.toFixed(2) + "s" : ""} ${n.error ? "· " + n.error : ""}`),
        el("div", {class: "activity"}, ...evs.events.map(ev => { const l = activityLine(ev); return l ? el("div", {class: l[1]}, l[0]) : null; }).filter(Boolean)));
    }});
    // say what is drawn: the newest nodes read may be mostly agent turns, which are hidden unless asked for
    const hidden = d.dag.nodes.length - Number(svg.dataset.nodes);
    dagNote.textContent = [
      d.nodes_omitted ? `the newest ${d.dag.nodes.length} of ${d.dag.nodes.length + d.nodes_omitted} nodes (labd dag ${sid} has them all)` : "",
      hidden ? `${hidden} agent turn${hidden === 1 ? "" : "s"} hidden` : ""].filter(Boolean).join("; ");
  };
  agentsToggle.addEventListener("change", loadDag);
  const bars = (title, all, key) => {  // the BAR_ROWS costliest: a long session has a row per node, 100,000 of them
    const rows = all.length > BAR_ROWS ? [...all].sort((a, b) => b.cost - a.cost).slice(0, BAR_ROWS) : all;
    const max = rows.reduce((m, r) => Math.max(m, r.cost), 1e-12);
    const more = all.length - rows.length;
    return el("div", {class: "card bars", "data-chart": title}, el("b", {}, title), ...rows.map(r => el("div", {class: "bar"},
      el("span", {style: "width:12rem"}, r[key] ?? "—"), el("div", {class: "fill", style: `width:${Math.max(2, 300 * r.cost / max)}px`}),
      el("span", {class: "muted"}, `$${r.cost.toFixed(6)} · ${r.calls} calls`))),
      ...(more ? [el("div", {class: "muted more"}, `${more} more, costing no more (labd cost ${sid} lists them all)`)] : []));
  };
  const loadCost = async () => { const c = await api(`/api/sessions/${sid}/cost`);
    panes.cost.replaceChildren(el("div", {class: "card"}, `total $${c.total.cost.toFixed(6)} · ${c.total.calls} calls · ${c.total.prompt_tokens}+${c.total.completion_tokens} tokens${c.total.offline ? " · offline model" : ""}`),
      el("div", {class: "row"}, bars("by agent", c.by_agent, "agent"), bars("by model", c.by_model, "model"), bars("by node", c.by_node, "node_id"))); };
  const preview = el("pre", {class: "log", id: "file-preview", style: "display:none"});
  const showPreview = async (x) => {  // text files up to 200 kB, shown in place; others: the download link
    const r = await fetch(fileUrl(sid, x), {headers: auth()});
    const text = await r.text();
    preview.style.display = ""; preview.textContent = visible(`${x.path}\n\n` + text.slice(0, 200000));
  };
  const loadFiles = async () => { const f = await api(`/api/sessions/${sid}/files`);
    const textual = x => x.size <= 200000 && !["image", "binary", "archive"].includes(x.kind);
    panes.files.replaceChildren(el("table", {id: "files"}, el("thead", {}, el("tr", {}, ...["path", "size", "kind", "step", "agent", "tool", "sha256", ""].map(h => el("th", {}, h)))),
      el("tbody", {}, ...f.files.map(x => el("tr", {dataset: {file: x.path}}, el("td", {}, el("a", {href: fileUrl(sid, x), onclick: e => { e.preventDefault(); download(sid, x); }}, x.path)), el("td", {}, x.size), el("td", {}, x.kind),
        el("td", {}, x.step || (x.restored ? "(restored)" : "")), el("td", {}, x.agent || ""), el("td", {}, x.tool || ""), el("td", {class: "muted"}, (x.sha256 || "").slice(0, 12)),
        el("td", {}, textual(x) ? el("button", {class: "secondary", onclick: () => showPreview(x)}, "preview") : ""))))), preview); };
  const loadHistory = async () => { const x = await api(`/api/sessions/${sid}`);
    // the newest 2,000 transitions: said so when there are more (it showed them as if they were all)
    const cut = x.history_omitted ? el("p", {class: "muted", id: "history-note"}, `the newest ${x.history.length} of ${x.history.length + x.history_omitted} state changes: labd history ${sid} has them all`) : "";
    panes.history.replaceChildren(cut, el("table", {}, el("tbody", {}, ...x.history.map(h => el("tr", {}, el("td", {}, new Date(h.ts * 1000).toLocaleTimeString()),
      el("td", {}, `${h.from_status || ""} → ${h.to_status}`), el("td", {}, h.node_id || ""), el("td", {}, h.actor), el("td", {class: "muted"}, h.reason || "")))))); };
}

// ---- approvals --------------------------------------------------------------------------------------
// An approval's context (the code a policy asks about, a plan's steps) as a human reads it before deciding: a text
// of several lines as written, a list a line per item, anything else as JSON.
function contextView(ctx) {
  if (ctx === null || ctx === undefined) return "";
  const one = v => typeof v === "string" ? v : JSON.stringify(v);
  const rows = typeof ctx !== "object" || Array.isArray(ctx) ? [["", ctx]] : Object.entries(ctx);
  return el("div", {class: "approval-context"}, ...rows.map(([k, v]) => {
    const body = typeof v === "string" ? v : Array.isArray(v) ? v.map(x => "- " + one(x)).join("\n")
      : JSON.stringify(v, null, 1);
    return typeof v === "string" && !v.includes("\n") ? el("div", {}, el("b", {}, k ? `${k}: ` : ""), v)
      : el("div", {}, el("b", {}, k), el("pre", {class: "log", dataset: {field: k}}, body));
  }));
}
// The approvals of `list` whose prompt or context the list cut, read whole (one request per session with any).
async function whole(list) {
  const cut = [...new Set(list.filter(a => a.truncated).map(a => a.session_id))];
  const full = {};
  for (const sid of cut) {
    const got = await api(`/api/approvals?session=${encodeURIComponent(sid)}&full=1`).catch(() => []);
    for (const a of got) full[a.id] = a;
  }
  return list.map(a => full[a.id] ? {...full[a.id], more_pending: a.more_pending} : a);
}

async function approvalsPage(main) {
  const box = el("div", {id: "approvals"});
  main.replaceChildren(el("h2", {}, "Waiting for a human"), box);
  const refresh = async () => {
    const list = await api("/api/approvals");
    if (!list.length) { box.replaceChildren(el("p", {class: "muted", id: "no-approvals"}, "nothing is waiting")); return; }
    if (box.dataset.ids === list.map(a => a.id).join(",")) return;  // unchanged: keep what the user typed
    box.dataset.ids = list.map(a => a.id).join(",");
    // the daemon lists the oldest 20 of each session; `more_pending` counts the rest (shown on its last card)
    const last = {}; list.forEach(a => { last[a.session_id] = a.id; });
    box.replaceChildren(...(await whole(list)).map(a => {
      const feedback = el("textarea", {rows: 2, placeholder: "feedback / hypothesis (for modify and redo)"});
      const more = a.more_pending && last[a.session_id] === a.id
        ? el("p", {class: "muted more-pending"}, `${a.more_pending} more pending in this session (shown once these are answered)`) : "";
      const cut = a.prompt_length ? el("p", {class: "muted"}, `prompt cut to its first 2,000 of ${a.prompt_length} characters (all of it: labd approvals ${a.session_id} --full --json)`) : "";
      return el("div", {class: "card", dataset: {approval: a.id}}, el("b", {}, `${a.kind} · `, el("a", {href: `#/s/${a.session_id}`}, a.session_id)),
        el("pre", {style: "white-space:pre-wrap"}, a.prompt), cut, contextView(a.context),
        // a context the list left out and the whole read did not bring: never a card without a word about it
        a.truncated && a.context == null ? el("p", {class: "act-error context-missing"}, `this approval's context (the code or plan it asks about) could not be read here: labd approvals ${a.session_id} --full`) : "",
        more, feedback,
        el("p", {}, ...JSON.parse(typeof a.options === "string" ? a.options : JSON.stringify(a.options)).map(opt => el("button", {class: opt === "reject" ? "danger" : "", dataset: {decision: opt}, onclick: async () => {
          const body = {session: a.session_id, approval_id: a.id, decision: opt};
          if (feedback.value) { body.feedback = feedback.value; if (opt === "redo") body.hypothesis = feedback.value; }
          try { await api("/api/approvals/resolve", {method: "POST", body: JSON.stringify(body)}); toast(`${opt}: done`); box.dataset.ids = ""; refresh(); }
          catch (e) { toast(e.message, true); box.dataset.ids = ""; refresh(); }
        }}, opt))));
    }));
  };
  await polled(refresh, main);
}

// ---- frame ------------------------------------------------------------------------------------------
async function header() {
  try {
    const [st, ap] = await Promise.all([api("/api/status"), api("/api/approvals")]);
    $("#daemon-status").textContent = `daemon pid ${st.pid} · ${st.running.length} running`;
    // the daemon lists the oldest 20 of each session: `more_pending` (on each of that session's cards) counts the rest
    const more = Object.fromEntries(ap.filter(a => a.more_pending).map(a => [a.session_id, a.more_pending]));
    $("#approval-count").textContent = (ap.length + Object.values(more).reduce((x, y) => x + y, 0)) || "";
  } catch (e) { $("#daemon-status").textContent = `daemon: ${e.message}`; }
}
async function route() {
  cleanup();
  // Each route renders into a container of its own: a page still loading when the user moves on (a slow
  // daemon, a restart) then fills, or reports its error into, a container no longer shown, never the next page.
  const main = el("div", {class: "page"});
  $("#main").replaceChildren(main);
  const h = location.hash || "#/";
  try {
    if (h.startsWith("#/s/")) await sessionPage(main, h.slice(4));
    else if (h === "#/approvals") await approvalsPage(main);
    else await sessionsPage(main);
  } catch (e) { main.replaceChildren(el("p", {class: "act-error", id: "page-error"}, e.message)); }
}
login.then(() => { window.addEventListener("hashchange", route); setInterval(header, 2000); header(); route(); });
