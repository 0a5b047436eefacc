// Steward's admin view, the Usage page: polls /admin/api/usage and draws calls and errors per
// step, stacked by tier, as plain SVG; the top tools, top users and the users closest to their
// quota as tables; and one user's usage in the user panel. Every value is inserted as text.
"use strict";

(function () {
  const POLL_MS = 3000;
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let busy = false;
  let selectedUser = null; // the user whose panel is open (an id)

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) {
      if (child !== null && child !== undefined) {
        node.append(child instanceof Node ? child : String(child));
      }
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  async function get(route) {
    const response = await fetch("/admin/api/" + route, { credentials: "same-origin" });
    if (response.status === 401) {
      window.location.reload();
      throw new Error("signed out");
    }
    const payload = await response.json();
    if (!response.ok) throw new Error(payload.error_description || payload.error);
    return payload;
  }

  const ms = (v) => (v === null || v === undefined ? "–" : `${Number(v).toFixed(1)} ms`);
  const pct = (v) => `${(100 * (v || 0)).toFixed(1)} %`;

  // -- the chart: one stacked bar per step, a band per tier --------------------------------------

  function tierClass(tiers, tier) {
    const i = tiers.indexOf(tier);
    return `tier tier-${i < 0 ? "other" : i}`;
  }

  function chart(target, series, tiers, field, title) {
    const W = 560, H = 160, L = 44, B = 22, T = 18;
    const step = series.step * 1000;
    const start = Date.parse(series.start);
    const end = Date.parse(series.end);
    const slots = Math.max(1, Math.ceil((end - start) / step));
    const stacks = new Map(); // slot -> [{tier, value}]
    for (const p of series.points) {
      const value = p[field];
      if (!value) continue;
      const slot = Math.round((Date.parse(p.t) - start) / step);
      if (!stacks.has(slot)) stacks.set(slot, []);
      stacks.get(slot).push({ tier: p.tier, value, t: p.t });
    }
    let top = 0;
    for (const parts of stacks.values()) top = Math.max(top, parts.reduce((a, b) => a + b.value, 0));
    const scale = top ? (H - B - T) / top : 0;
    const width = (W - L) / slots;
    const root = svg("svg", {
      viewBox: `0 0 ${W} ${H}`, role: "img", class: "usage-chart",
      "data-field": field, "data-max": top, "aria-label": `${title} per ${series.step} s by tier`,
    });
    root.append(svg("title", {}, `${title} per ${series.step / 60} min, by tier`));
    root.append(svg("text", { x: 2, y: 12, class: "axis" }, title));
    root.append(svg("line", { x1: L, y1: H - B, x2: W, y2: H - B, class: "axis-line" }));
    root.append(svg("text", { x: L - 4, y: T + 4, class: "axis", "text-anchor": "end" }, top));
    root.append(svg("text", { x: L - 4, y: H - B, class: "axis", "text-anchor": "end" }, 0));
    const fmt = (t) => new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    root.append(svg("text", { x: L, y: H - 6, class: "axis" }, fmt(start)));
    root.append(svg("text", { x: W, y: H - 6, class: "axis", "text-anchor": "end" }, fmt(end)));
    for (const [slot, parts] of stacks) {
      let y = H - B;
      parts.sort((a, b) => tiers.indexOf(a.tier) - tiers.indexOf(b.tier));
      for (const part of parts) {
        const h = Math.max(1, part.value * scale);
        y -= h;
        const bar = svg("rect", {
          x: (L + slot * width + 0.5).toFixed(2), y: y.toFixed(2),
          width: Math.max(1, width - 1).toFixed(2), height: h.toFixed(2),
          class: tierClass(tiers, part.tier), "data-tier": part.tier,
          "data-t": part.t, "data-value": part.value,
        });
        bar.append(svg("title", {}, `${part.tier}: ${part.value} ${field} at ${new Date(part.t).toLocaleString()}`));
        root.append(bar);
      }
    }
    target.replaceChildren(root);
  }

  function legend(tiers) {
    $("usage-legend").replaceChildren(
      ...tiers.map((tier) =>
        el("span", { class: "legend-item", "data-tier": tier },
          el("span", { class: "swatch " + tierClass(tiers, tier) }), tier)
      )
    );
  }

  // -- tables ------------------------------------------------------------------------------------

  function userLink(row) {
    const link = el("a", { href: `#user=${encodeURIComponent(row.user_id)}`, title: row.user_id },
      row.user_name || row.user_id);
    return el("td", { class: "user" }, link);
  }

  function rows(tbody, items, render, columns, empty) {
    const out = items.map(render);
    if (!out.length) out.push(el("tr", {}, el("td", { colSpan: columns, class: "empty" }, empty)));
    tbody.replaceChildren(...out);
  }

  function toolRow(t) {
    return el("tr", { "data-tool": t.tool },
      el("td", { class: "tool" }, t.tool), el("td", { class: "num" }, t.calls),
      el("td", { class: "num" }, t.errors), el("td", { class: "num" }, pct(t.error_rate)),
      el("td", { class: "num" }, ms(t.p50_ms)), el("td", { class: "num" }, ms(t.p99_ms)));
  }

  function quotaRow(q) {
    const meter = el("meter", { min: 0, max: 1, value: Math.min(1, q.fraction) });
    return el("tr", { "data-user": q.user_id },
      userLink(q), el("td", {}, q.tier),
      el("td", { class: "num" }, `${q.used} / ${q.quota}`),
      el("td", {}, meter, ` ${pct(q.fraction)}`),
      el("td", { class: "when", title: q.resets_at }, new Date(q.resets_at).toLocaleString()));
  }

  function render(doc) {
    legend(doc.tiers);
    chart($("usage-calls"), doc.series, doc.tiers, "calls", "calls");
    chart($("usage-errors"), doc.series, doc.tiers, "errors", "errors");
    const t = doc.totals;
    $("usage-totals").textContent =
      `${t.calls} calls, ${t.errors} errors (${pct(t.error_rate)}), p50 ${ms(t.p50_ms)}, ` +
      `p99 ${ms(t.p99_ms)}, by the ${doc.series.resolution}`;
    $("usage-totals").dataset.calls = String(t.calls);
    $("usage-totals").dataset.errors = String(t.errors);
    rows($("usage-tools").tBodies[0], doc.tools, toolRow, 6, "no tool calls");
    rows($("usage-users").tBodies[0], doc.users, (u) =>
      el("tr", { "data-user": u.user_id }, userLink(u), el("td", { class: "num" }, u.calls),
        el("td", { class: "num" }, u.errors), el("td", { class: "num" }, pct(u.error_rate))),
      4, "no requests");
    rows($("usage-quota").tBodies[0], doc.near_quota, quotaRow, 5, "no quota in use");
  }

  function renderUser(doc) {
    const panel = $("user-usage");
    panel.hidden = false;
    panel.dataset.user = doc.user_id;
    $("user-usage-name").textContent = `${doc.user_name} (${doc.tier || "no tier"})`;
    $("user-usage-name").title = doc.user_id;
    const t = doc.totals;
    $("user-usage-totals").textContent =
      `last 24 h: ${t.calls} requests, ${t.errors} errors, p50 ${ms(t.p50_ms)}, p99 ${ms(t.p99_ms)}`;
    $("user-usage-totals").dataset.calls = String(t.calls);
    rows($("user-usage-tools").tBodies[0], doc.tools, (r) =>
      el("tr", { "data-method": r.method, "data-name": r.name },
        el("td", {}, r.method), el("td", { class: "tool" }, r.name),
        el("td", { class: "num" }, r.calls), el("td", { class: "num" }, r.errors),
        el("td", { class: "num" }, ms(r.p50_ms)), el("td", { class: "num" }, ms(r.p99_ms))),
      6, "no requests");
    rows($("user-usage-quota").tBodies[0], doc.quota, quotaRow, 5, "no quota for this tier");
  }

  function userFromHash() {
    const match = /^#user=(.+)$/.exec(window.location.hash);
    return match ? decodeURIComponent(match[1]) : null;
  }

  async function refresh() {
    if (busy) return;
    busy = true;
    clearTimeout(timer);
    try {
      const since = encodeURIComponent($("usage-window").value);
      render(await get(`usage?since=${since}`));
      selectedUser = userFromHash();
      if (selectedUser) {
        renderUser(await get(`usage/user?user=${encodeURIComponent(selectedUser)}`));
      } else {
        $("user-usage").hidden = true;
      }
      $("usage-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      $("usage-updated").textContent = `update failed: ${err.message}`;
    } finally {
      busy = false;
      timer = setTimeout(refresh, POLL_MS);
    }
  }

  // a user in the sessions or events table opens that user's usage (the cell's title is the id)
  for (const table of ["sessions", "events"]) {
    $(table).addEventListener("click", (event) => {
      const cell = event.target.closest("td.user");
      if (cell && cell.title) window.location.hash = `user=${encodeURIComponent(cell.title)}`;
    });
  }
  $("usage-window").addEventListener("change", refresh);
  window.addEventListener("hashchange", refresh);
  $("user-usage-close").addEventListener("click", () => {
    history.replaceState(null, "", window.location.pathname);
    refresh();
  });
  refresh();
})();
