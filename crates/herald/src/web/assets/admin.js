// The admin view (admin users only; the server checks every call): live figures
// from /metrics, webhooks with their attempts and a replay button, users with their
// ACL entries. Loaded on demand, so other users never download it.

import { request } from "./api.js";
import { h } from "./render.js";

let timer = null;
let last = null; // previous scrape, for rates

// Sums of Prometheus samples by metric name (labels kept as `name{labels}` too).
function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const v = Number(m[3]);
    out[m[1]] = (out[m[1]] || 0) + v;
    if (m[2]) out[m[1] + m[2]] = v;
  }
  return out;
}

function figure(label, value) {
  return h("div", { class: "figure" }, h("span", { class: value.length > 8 ? "value small" : "value" }, value), h("span", { class: "label" }, label));
}

async function figures(box) {
  let text;
  try { text = await request("/metrics"); } catch (e) { box.replaceChildren(h("p", { class: "error" }, `/metrics: ${e.message}`)); return; }
  const m = parseMetrics(text);
  const now = Date.now();
  const published = m.herald_messages_published_total || 0;
  const rate = last ? ((published - last.published) * 1000) / (now - last.at) : 0;
  last = { published, at: now };
  const subs = Object.entries(m).filter(([k]) => k.startsWith("herald_subscribers{"))
    .map(([k, v]) => `${(/transport="([^"]+)"/.exec(k) || [, "all"])[1]} ${v}`).join(", ");
  box.replaceChildren(
    figure("subscribers", String(m.herald_subscribers ?? 0)),
    figure("by transport", subs || "—"),
    figure("publishes/s", rate.toFixed(1)),
    figure("messages stored", String(m.herald_store_messages ?? "—")),
    figure("topics", String(m.herald_topics ?? 0)),
    figure("store", m.herald_store_writes_failing ? "writes failing" : "ok"),
    figure("redis", m.herald_limits_shared_unavailable_total ? "unavailable seen" : "ok"),
  );
}

async function webhooks(box) {
  let hooks;
  try { hooks = await request("/v1/webhooks"); } catch (e) { box.replaceChildren(h("p", { class: "muted" }, `Webhooks: ${e.message}`)); return; }
  const rows = await Promise.all(hooks.map(async (w) => {
    const attempts = await request(`/v1/webhooks/${w.id}/attempts?limit=5`).catch(() => []);
    return h("li", { class: "card", "data-webhook": w.id },
      h("h4", {}, `${w.topic} → ${w.url}`),
      h("p", { class: "muted" }, `${w.id} · ${w.status}${w.failing_since ? ` · failing since ${w.failing_since}` : ""}`),
      h("table", {},
        h("caption", {}, "Recent attempts"),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "message"), h("th", { scope: "col" }, "attempt"), h("th", { scope: "col" }, "status"), h("th", { scope: "col" }, "error"))),
        h("tbody", {}, attempts.map((a) => h("tr", { class: a.status >= 200 && a.status < 300 ? "ok" : "failed" },
          h("td", {}, a.message_id), h("td", {}, String(a.attempt)), h("td", {}, a.status ? String(a.status) : "—"), h("td", {}, a.error || ""))))),
      h("button", { onclick: async (e) => {
        try { const r = await request(`/v1/webhooks/${w.id}/replay`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ since: "1h" }) }); e.target.textContent = `Replayed ${r.queued}`; } catch (err) { e.target.textContent = `Replay failed: ${err.message}`; }
      } }, "Replay last hour"));
  }));
  box.replaceChildren(rows.length ? h("ul", { class: "plain" }, rows) : h("p", { class: "muted" }, "No webhooks."));
}

async function users(box) {
  let list;
  try { list = await request("/v1/users"); } catch (e) { box.replaceChildren(h("p", { class: "error" }, `Users: ${e.message}`)); return; }
  const json = { "Content-Type": "application/json" };
  const act = async (method, path, body) => { await request(path, { method, headers: json, body: JSON.stringify(body) }); await users(box); };
  box.replaceChildren(
    h("table", {},
      h("caption", {}, "Users and access"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "user"), h("th", { scope: "col" }, "role"), h("th", { scope: "col" }, "access"), h("th", { scope: "col" }, ""))),
      h("tbody", {}, list.map((u) => h("tr", {},
        h("td", {}, u.username), h("td", {}, u.role),
        h("td", {}, (u.grants || []).map((g) => `${g.topic}: ${g.permission}`).join(", ")),
        h("td", {}, u.role === "user" ? [
          h("button", { onclick: () => act("DELETE", "/v1/users/access", { username: u.username }) }, `Reset access of ${u.username}`),
          " ",
          h("button", { onclick: () => act("DELETE", "/v1/users", { username: u.username }) }, `Remove ${u.username}`),
        ] : ""))))),
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); const f = e.target; act("POST", "/v1/users", { username: f.u.value, password: f.p.value }).catch((err) => { f.querySelector(".error").textContent = err.message; }); } },
      h("label", {}, "New user ", h("input", { name: "u", required: true, autocomplete: "off" })),
      h("label", {}, "Password ", h("input", { name: "p", type: "password", required: true, autocomplete: "new-password" })),
      h("button", { type: "submit" }, "Add user"), h("span", { class: "error", role: "alert" })),
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); const f = e.target; act("PUT", "/v1/users/access", { username: f.u.value, topic: f.t.value, permission: f.perm.value }).catch((err) => { f.querySelector(".error").textContent = err.message; }); } },
      h("label", {}, "User ", h("input", { name: "u", required: true, autocomplete: "off", placeholder: "name or everyone" })),
      h("label", {}, "Topic ", h("input", { name: "t", required: true, autocomplete: "off" })),
      h("label", {}, "Access ", h("select", { name: "perm" }, ["read-write", "read-only", "write-only", "deny"].map((p) => h("option", {}, p)))),
      h("button", { type: "submit" }, "Grant"), h("span", { class: "error", role: "alert" })),
  );
}

// The admin's own access tokens (`/v1/account/token`): list, create (the full token
// is shown once), extend by 72 h, remove. Other users manage theirs the same way.
async function tokens(box) {
  let list;
  try { list = await request("/v1/account/token"); } catch (e) { box.replaceChildren(h("p", { class: "error" }, `Tokens: ${e.message}`)); return; }
  const json = { "Content-Type": "application/json" };
  const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "never");
  box.replaceChildren(
    h("table", {},
      h("caption", {}, "Your access tokens"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "token"), h("th", { scope: "col" }, "label"), h("th", { scope: "col" }, "expires"), h("th", { scope: "col" }, ""))),
      h("tbody", {}, list.map((t) => h("tr", { "data-token": t.token },
        h("td", {}, t.token), h("td", {}, t.label || ""), h("td", {}, when(t.expires)),
        h("td", {},
          h("button", { onclick: async () => { await request("/v1/account/token", { method: "PATCH", headers: json, body: JSON.stringify({ token: t.token }) }); tokens(box); } }, "Extend 72 h"),
          " ",
          h("button", { onclick: async () => { await request("/v1/account/token", { method: "DELETE", headers: { "X-Token": t.token } }); tokens(box); } }, `Remove token ${t.label || t.token}`)))))),
    h("form", { class: "row", onsubmit: async (e) => {
      e.preventDefault();
      const r = await request("/v1/account/token", { method: "POST", headers: json, body: JSON.stringify({ label: e.target.label.value }) });
      await tokens(box);
      box.append(h("p", { role: "status" }, "New token (shown once): ", h("code", { class: "new-token" }, r.token)));
    } },
      h("label", {}, "Token label ", h("input", { name: "label", autocomplete: "off" })),
      h("button", { type: "submit" }, "Create token")),
  );
}

export function showAdmin(view, other) {
  other.hidden = true;
  view.hidden = false;
  const figs = h("div", { class: "figures", "aria-live": "off" });
  const hooks = h("div");
  const people = h("div");
  const keys = h("div");
  view.replaceChildren(
    h("h2", { id: "admin-title" }, "Server"),
    figs,
    h("h3", {}, "Webhooks"), hooks,
    h("h3", {}, "Users, access and tokens"), people,
    keys,
  );
  clearInterval(timer);
  const tick = () => { if (view.hidden) { clearInterval(timer); return; } figures(figs); };
  tick();
  timer = setInterval(tick, 2000);
  webhooks(hooks);
  users(people);
  tokens(keys);
}
