// A small layered DAG renderer (SVG, no dependencies): columns by longest path over the graph's edges
// (sequence, dependency, redo) and containment (a phase before its steps, a step before its agent turns);
// rows by order of appearance. Agent-turn nodes can be collapsed into their step.
"use strict";
const SVGNS = "http://www.w3.org/2000/svg";
const COLORS = {completed:"#2e8b57", running:"#2f5fd0", failed:"#c0392b", cancelled:"#888", planned:"#aaa",
  reused:"#7a7a7a", paused:"#c98a00", waiting_approval:"#c98a00", skipped:"#aaa", redone:"#b05a00"};

function renderDag(target, dag, opts) {
  const showAgents = !!(opts && opts.showAgents);
  const onSelect = (opts && opts.onSelect) || (() => {});
  const all = dag.nodes || [];
  const hidden = new Set(showAgents ? [] : all.filter(n => n.kind === "agent").map(n => n.node_id));
  const nodes = all.filter(n => !hidden.has(n.node_id));
  const ids = new Set(nodes.map(n => n.node_id));
  const edges = [];
  for (const n of nodes) if (n.parent_node && ids.has(n.parent_node)) edges.push({src:n.parent_node, dst:n.node_id, type:"contains"});
  for (const e of dag.edges || []) if (ids.has(e.src) && ids.has(e.dst)) edges.push(e);
  const incoming = new Map(nodes.map(n => [n.node_id, []]));
  for (const e of edges) incoming.get(e.dst).push(e.src);
  const layer = new Map();
  const depth = (id, seen) => {
    if (layer.has(id)) return layer.get(id);
    if (seen.has(id)) return 0;
    seen.add(id);
    const d = Math.max(-1, ...incoming.get(id).map(p => depth(p, seen))) + 1;
    layer.set(id, d);
    return d;
  };
  nodes.forEach(n => depth(n.node_id, new Set()));
  const rows = new Map();
  const pos = new Map();
  for (const n of nodes) {
    const l = layer.get(n.node_id);
    const r = rows.get(l) || 0;
    rows.set(l, r + 1);
    pos.set(n.node_id, {x: 20 + l * 190, y: 20 + r * 46});
  }
  const width = 40 + (Math.max(0, ...layer.values()) + 1) * 190;
  const height = 40 + Math.max(1, ...rows.values()) * 46;
  const svg = document.createElementNS(SVGNS, "svg");
  svg.setAttribute("class", "dag");
  // drawn at its own size in a scrolling box: scaled to the page's width, 40 steps in a row made nodes 28x5 px,
  // unreadable and too small to click (UI review)
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.dataset.nodes = String(nodes.length);
  for (const e of edges) {
    const a = pos.get(e.src), b = pos.get(e.dst);
    const p = document.createElementNS(SVGNS, "path");
    p.setAttribute("d", `M${a.x + 160},${a.y + 15} C${a.x + 175},${a.y + 15} ${b.x - 15},${b.y + 15} ${b.x},${b.y + 15}`);
    p.setAttribute("class", "edge " + e.type);
    svg.appendChild(p);
  }
  for (const n of nodes) {
    const {x, y} = pos.get(n.node_id);
    const g = document.createElementNS(SVGNS, "g");
    g.setAttribute("class", "node");
    g.dataset.node = n.node_id;
    g.dataset.status = n.status;
    const rect = document.createElementNS(SVGNS, "rect");
    rect.setAttribute("x", x); rect.setAttribute("y", y); rect.setAttribute("width", 160); rect.setAttribute("height", 30);
    rect.setAttribute("fill", COLORS[n.status] || "#555");
    const label = (n.kind === "agent" ? (n.agent || "agent") + " turn" : n.name || n.node_id);
    const t = document.createElementNS(SVGNS, "text");
    t.setAttribute("x", x + 8); t.setAttribute("y", y + 19);
    t.textContent = visible(label.length > 24 ? label.slice(0, 23) + "…" : label);  // visible: app.js (loaded by now)
    const title = document.createElementNS(SVGNS, "title");
    title.textContent = visible(`${label} (${n.node_id}) — ${n.status}`);
    g.append(rect, t, title);
    g.addEventListener("click", () => onSelect(n));
    svg.appendChild(g);
  }
  target.replaceChildren(svg);
  target.scrollLeft = target.scrollWidth;  // the newest nodes are at the right
  return svg;
}
