// Steward's admin view: polls the JSON API under /admin/api/ and renders it. Every value is
// inserted as text (never as HTML); actions carry the page's CSRF token.
"use strict";

(function () {
  const POLL_MS = 2000;
  const API = "/admin/api/";
  const csrf = document.querySelector('meta[name="steward-csrf"]').content;
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let busy = false;

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

  async function api(method, route, body) {
    const init = { method, credentials: "same-origin", headers: {} };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.headers["x-csrf-token"] = csrf;
      init.body = JSON.stringify(body);
    }
    const response = await fetch(API + route, init);
    if (response.status === 401) {
      window.location.reload(); // the sign-in expired: show the form
      throw new Error("signed out");
    }
    const payload = await response.json();
    if (!response.ok) {
      throw new Error(payload.error_description || payload.error || response.statusText);
    }
    return payload;
  }

  function flash(text, isError) {
    const box = $("flash");
    box.textContent = text;
    box.className = isError ? "error" : "";
  }

  // a time cell: the time of day for today, the date otherwise; the full date and time as title
  function when(value) {
    if (!value) return el("td", { class: "when" });
    const date = new Date(value);
    if (isNaN(date)) return el("td", { class: "when" }, String(value));
    const today = date.toDateString() === new Date().toDateString();
    const text = today ? date.toLocaleTimeString() : date.toLocaleDateString();
    return el("td", { class: "when", title: date.toLocaleString() }, text);
  }

  // a user as a person reads them (the name, e.g. "bob"), the full id as title
  function userCell(name, id) {
    return el("td", { class: "user", title: id || "" }, name || id || "");
  }

  function clientCell(id) {
    return el("td", { class: "client", title: id || "" }, id || "");
  }

  // -- the supervision tree ------------------------------------------------------------------

  function treeNode(node) {
    const restarts = el(
      "span",
      { class: "restarts" + (node.restarts ? " nonzero" : ""), "data-restarts": String(node.restarts) },
      `restarts ${node.restarts}`
    );
    const item = el(
      "li",
      { class: "tnode", "data-id": node.id, "data-state": node.state },
      el("span", { class: "id" }, node.id),
      " ",
      el("span", { class: "kind" }, node.kind),
      " ",
      el("span", { class: `badge state-${node.state}` }, node.state),
      " ",
      restarts
    );
    if (node.children && node.children.length) {
      const list = el("ul", {}, ...node.children.map(treeNode));
      if (node.more) list.append(el("li", { class: "more" }, `… and ${node.more} more`));
      item.append(list);
    }
    return item;
  }

  function renderTree(doc) {
    $("tree").replaceChildren(el("ul", { class: "tree" }, ...doc.trees.map(treeNode)));
    const s = doc.store;
    $("store-stats").textContent =
      `store: ${s.connected ? "connected" : "database unreachable"}, ` +
      `${s.queue_depth} writes queued, ${s.batches_committed} batches committed, ` +
      `commit p50 ${s.commit_latency_p50_ms.toFixed(1)} ms`;
  }

  // -- sessions and events ---------------------------------------------------------------------

  function action(label, title, run) {
    const button = el("button", { type: "button", class: "danger", title }, label);
    button.addEventListener("click", async () => {
      if (!window.confirm(title + "?")) return;
      button.disabled = true;
      try {
        flash(await run(), false);
      } catch (err) {
        flash(`${title} failed: ${err.message}`, true);
      }
      refresh();
    });
    return button;
  }

  function sessionRow(s) {
    const live = s.status === "active" || s.status === "refreshing";
    const who = s.user_name || s.user_id;
    const actions = el("td", { class: "actions" });
    if (live) {
      actions.append(
        action("End session", `End session ${s.grant_id}`, async () => {
          await api("POST", "sessions/end", { grant_id: s.grant_id });
          return `Ended session ${s.grant_id}.`;
        }),
        " "
      );
    }
    if (s.user_revoked) {
      actions.append(
        action("Reinstate user", `Reinstate ${who} (${s.user_id})`, async () => {
          await api("POST", "users/reinstate", { user_id: s.user_id });
          return `Reinstated ${who}: they may sign in again (ended sessions stay ended).`;
        })
      );
    } else {
      actions.append(
        action("Revoke user", `Revoke ${who} (${s.user_id})`, async () => {
          await api("POST", "users/revoke", { user_id: s.user_id });
          return `Revoked ${who}: every session of this user ended.`;
        })
      );
    }
    return el(
      "tr",
      { "data-grant": s.grant_id, "data-status": s.status, "data-user-revoked": String(!!s.user_revoked) },
      userCell(s.user_name, s.user_id),
      el("td", {}, s.tier),
      el("td", {}, (s.scopes || []).join(" ")),
      el("td", {}, el("span", { class: `badge status-${s.status}` }, s.status)),
      el("td", { class: "streams" }, String(s.open_streams), s.live_here ? " (live here)" : ""),
      clientCell(s.client_id),
      when(s.last_seen_at),
      actions
    );
  }

  function renderSessions(doc) {
    const rows = doc.sessions.map(sessionRow);
    if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 8 }, "no sessions")));
    $("sessions").tBodies[0].replaceChildren(...rows);
  }

  function renderEvents(doc) {
    const rows = doc.events.map((e) =>
      el(
        "tr",
        { "data-kind": e.kind },
        when(e.occurred_at),
        el("td", {}, e.kind),
        userCell(e.user_name, e.user_id),
        clientCell(e.client_id),
        el("td", { class: "node" }, e.node_id || "")
      )
    );
    $("events").tBodies[0].replaceChildren(...rows);
  }

  // -- polling -----------------------------------------------------------------------------------

  async function refresh() {
    if (busy) return;
    busy = true;
    clearTimeout(timer);
    try {
      const user = encodeURIComponent($("user-search").value.trim());
      const [treeDoc, sessions, events] = await Promise.all([
        api("GET", "tree"),
        api("GET", `sessions?user=${user}`),
        api("GET", "events?limit=20"),
      ]);
      renderTree(treeDoc);
      renderSessions(sessions);
      renderEvents(events);
      $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      $("updated").textContent = `update failed: ${err.message}`;
    } finally {
      busy = false;
      timer = setTimeout(refresh, POLL_MS);
    }
  }

  let searchDelay = null;
  $("user-search").addEventListener("input", () => {
    clearTimeout(searchDelay);
    searchDelay = setTimeout(refresh, 200);
  });

  $("logout").addEventListener("click", async () => {
    await fetch("/admin/logout", {
      method: "POST",
      credentials: "same-origin",
      headers: { "x-csrf-token": csrf },
    });
    window.location.reload();
  });

  refresh();
})();
