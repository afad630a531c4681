// The app: topics the browser remembers, their notifications, live subscriptions,
// the publish and login dialogs. State lives in localStorage; the server is only
// asked through the ntfy API (api.js).

import { ApiError, Subscription, checkRead, credentials, publish, request, setCredentials } from "./api.js";
import { card, h } from "./render.js";

const config = window.config || { app_root: "/", enable_login: false, enable_web_push: false };
const $ = (id) => document.getElementById(id);
const KEEP = 200; // notifications kept per topic
const SUBS_KEY = "herald.subscriptions";

// topic -> { since, notifications: [...] } (newest first)
let subs = load();
let selected = null; // a topic, or null for all
const live = new Map(); // topic -> Subscription
let account = null;

function load() {
  try { return JSON.parse(localStorage.getItem(SUBS_KEY)) || {}; } catch { return {}; }
}
function save() {
  localStorage.setItem(SUBS_KEY, JSON.stringify(subs));
}

function setStatus(text) { $("status").textContent = text; }

// --- subscriptions ---

function subscribe(topic) {
  if (!/^[-_A-Za-z0-9]{1,64}$/.test(topic) || (config.disallowed_topics || []).includes(topic)) {
    setStatus(`"${topic}" is not a valid topic name`);
    return false;
  }
  if (!subs[topic]) { subs[topic] = { since: null, notifications: [] }; save(); }
  connect(topic);
  syncPush();
  return true;
}

function connect(topic) {
  if (live.has(topic)) return;
  const sub = new Subscription(topic, subs[topic].since, (ev) => onEvent(topic, ev), (state) => onState(topic, state));
  live.set(topic, sub);
}

function unsubscribe(topic) {
  live.get(topic)?.close();
  live.delete(topic);
  delete subs[topic];
  save();
  syncPush();
  select(null);
}

async function onState(topic, state) {
  if (state === "open") { subs[topic].error = null; renderTopics(); return; }
  // The handshake cannot say why it failed: ask, and show a refusal plainly.
  try {
    await checkRead(topic);
    subs[topic].error = "reconnecting…";
  } catch (e) {
    subs[topic].error = e instanceof ApiError && (e.status === 401 || e.status === 403)
      ? refusal(e.status)
      : "reconnecting…";
    if (e.status === 401 || e.status === 403) { live.get(topic)?.close(); live.delete(topic); }
  }
  renderTopics();
  if (topic === selected) renderNotifications();
}

function onEvent(topic, ev) {
  const s = subs[topic];
  if (!s) return;
  s.since = ev.id;
  const seq = ev.sequence_id || ev.id;
  const sameSeq = (n) => (n.sequence_id || n.id) === seq;
  if (ev.event === "message_delete") {
    s.notifications = s.notifications.filter((n) => !sameSeq(n));
  } else if (ev.event === "message_clear") {
    for (const n of s.notifications) if (sameSeq(n)) n.new = false;
  } else if (!s.notifications.some((n) => n.id === ev.id)) {
    const fresh = ev.time > Date.now() / 1000 - 60;
    // An update replaces its sequence's notification (ntfy's updated notifications).
    s.notifications = s.notifications.filter((n) => !sameSeq(n));
    s.notifications.unshift({ ...ev, new: true });
    s.notifications.sort((a, b) => b.time - a.time);
    s.notifications.length = Math.min(s.notifications.length, KEEP);
    if (fresh) notify(ev);
  }
  save();
  renderTopics();
  if (selected === null || selected === topic) renderNotifications();
}

// A browser notification while the tab is open (Web Push covers a closed one).
function notify(m) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  if (document.visibilityState === "visible" && selected === m.topic) return;
  const n = new Notification(m.title || m.topic, {
    body: m.message || "",
    tag: `${m.topic}/${m.sequence_id || m.id}`,
    icon: m.icon || "/static/icon.svg",
    silent: (m.priority || 3) <= 2,
    requireInteraction: (m.priority || 3) >= 5,
  });
  n.onclick = () => { window.focus(); select(m.topic); };
}

// --- rendering ---

function unread(topic) { return subs[topic].notifications.filter((n) => n.new).length; }

function renderTopics() {
  const list = $("topics");
  list.replaceChildren(
    h("li", {}, h("a", { href: config.app_root, "aria-current": selected === null ? "page" : null, onclick: (e) => { e.preventDefault(); select(null); } }, "All notifications")),
    ...Object.keys(subs).sort().map((t) => {
      const count = unread(t);
      return h("li", {},
        h("a", { href: `/${t}`, "aria-current": selected === t ? "page" : null, onclick: (e) => { e.preventDefault(); select(t); } },
          h("span", { class: "name" }, t),
          subs[t].error ? h("span", { class: "warn" }, subs[t].error) : null,
          count ? h("span", { class: "badge", "aria-label": `${count} unread` }, String(count)) : null));
    }),
  );
  const total = Object.keys(subs).reduce((a, t) => a + unread(t), 0);
  document.title = total ? `(${total}) herald` : "herald";
}

function shown() {
  const topics = selected === null ? Object.keys(subs) : [selected];
  return topics.flatMap((t) => subs[t]?.notifications || []).sort((a, b) => b.time - a.time);
}

function renderNotifications() {
  $("admin-view").hidden = true;
  $("topic-view").hidden = false;
  $("topic-title").textContent = selected === null ? "All notifications" : selected;
  $("unsubscribe").hidden = selected === null;
  const list = shown();
  const err = selected && subs[selected]?.error;
  $("empty").hidden = list.length > 0;
  $("empty").firstChild.textContent = err ? `Cannot subscribe: ${err}. ` : "No notifications yet. Publish to this topic, e.g. ";
  $("curl-example").textContent = `curl -d "Hi" ${location.origin}/${selected || "mytopic"}`;
  $("notifications").replaceChildren(...list.map((m) => card(m, {
    showTopic: selected === null,
    onDelete: (n) => { const s = subs[n.topic]; s.notifications = s.notifications.filter((x) => x.id !== n.id); save(); renderTopics(); renderNotifications(); },
    onRead: (n) => { n.new = false; save(); renderTopics(); renderNotifications(); },
    onAction: runAction,
  })));
}

async function runAction(a) {
  if (a.action === "copy") {
    await navigator.clipboard?.writeText(a.value || "");
    setStatus("Copied");
  } else if (a.action === "http") {
    try {
      const resp = await fetch(a.url, { method: a.method || "POST", headers: a.headers || {}, body: a.body || undefined });
      setStatus(`${a.label}: HTTP ${resp.status}`);
    } catch (e) {
      setStatus(`${a.label}: ${e.message}`);
    }
  }
}

function select(topic) {
  selected = topic;
  const path = topic ? `/${topic}` : config.app_root;
  if (location.pathname !== path) history.pushState({}, "", path);
  document.body.classList.remove("nav-open");
  $("menu").setAttribute("aria-expanded", "false");
  renderTopics();
  renderNotifications();
}

// --- publishing ---

function openPublish() {
  const f = $("publish-form");
  f.topic.value = selected || f.topic.value || "";
  $("publish-error").textContent = "";
  $("publish-dialog").showModal();
  (f.topic.value ? f.message : f.topic).focus();
}

async function sendPublish(e) {
  e.preventDefault();
  const f = e.target;
  const file = f.file.files?.[0];
  const fields = {
    "X-Title": f.title.value, "X-Priority": f.priority.value === "3" ? "" : f.priority.value,
    "X-Tags": f.tags.value, "X-Click": f.click.value, "X-Delay": f.delay.value,
    "X-Attach": f.attach.value, "X-Email": f.email.value,
    "X-Markdown": f.markdown.checked ? "yes" : "",
  };
  if (file) { fields["X-Filename"] = file.name; fields["X-Message"] = f.message.value; } else fields.body = f.message.value;
  try {
    await publish(f.topic.value, fields, file);
    $("publish-dialog").close();
    f.message.value = "";
    setStatus(`Published to ${f.topic.value}`);
  } catch (err) {
    $("publish-error").textContent = describe(err);
  }
}

// ntfy answers an anonymous visitor's refusal with 403 too: without credentials
// the way forward is to log in.
function refusal(status) {
  if (status === 401) return credentials() ? "wrong credentials (401)" : "login required (401)";
  return credentials() ? "access denied (403)" : "login required (403)";
}

function describe(err) {
  if (!(err instanceof ApiError)) return err.message;
  if (err.status === 401 || err.status === 403) return `${refusal(err.status)}: you may not do this here.`;
  return `${err.message} (${err.status}${err.code ? `, ${err.code}` : ""})`;
}

// --- login ---

async function login(e) {
  e.preventDefault();
  const f = e.target;
  const creds = f.token.value ? { token: f.token.value.trim() } : { user: f.username.value, password: f.password.value };
  try {
    const acct = await request("/v1/account", { creds });
    if (acct.username === "*") throw new Error("Those credentials were not accepted");
    setCredentials(creds);
    $("login-dialog").close();
    f.reset();
    await refreshAccount();
    reconnectAll();
  } catch (err) {
    $("login-error").textContent = err instanceof ApiError && err.status === 401 ? "Wrong username, password or token (401)" : describe(err);
  }
}

function logout() {
  setCredentials(null);
  account = null;
  refreshAccount();
  reconnectAll();
}

function reconnectAll() {
  for (const s of live.values()) s.close();
  live.clear();
  for (const t of Object.keys(subs)) { subs[t].error = null; connect(t); }
  renderTopics();
}

async function refreshAccount() {
  try {
    account = await request("/v1/account");
  } catch {
    account = null;
  }
  const loggedIn = account && account.username !== "*";
  $("login-open").hidden = !config.enable_login || loggedIn;
  $("logout").hidden = !loggedIn;
  $("logout").textContent = loggedIn ? `Log out ${account.username}` : "Log out";
  $("admin-open").hidden = !(loggedIn && account.role === "admin");
  $("file-label").hidden = !(account?.limits?.attachment_file_size > 0);
  $("email-label").hidden = !config.enable_emails;
}

// --- Web Push (the service worker shows pushes while no tab is open) ---

const b64url = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
const fromB64url = (s) => Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));

async function pushRegistration() {
  if (!config.enable_web_push || !("serviceWorker" in navigator) || !("PushManager" in window)) return null;
  return navigator.serviceWorker.register("/sw.js");
}

async function enablePush() {
  const reg = await pushRegistration();
  if (!reg) return;
  if ((await Notification.requestPermission()) !== "granted") { setStatus("Notifications are blocked in this browser"); return; }
  await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: fromB64url(config.web_push_public_key) });
  localStorage.setItem("herald.push", "on");
  await syncPush();
}

// Tells the server which topics this browser's push subscription wants (all of
// them), or removes it when none are left.
async function syncPush() {
  if (localStorage.getItem("herald.push") !== "on") return renderPushButton();
  const reg = await pushRegistration();
  const sub = await reg?.pushManager.getSubscription();
  if (!sub) return renderPushButton();
  const topics = Object.keys(subs);
  const key = (name) => b64url(sub.getKey(name));
  try {
    if (topics.length) {
      await request("/v1/webpush", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ endpoint: sub.endpoint, auth: key("auth"), p256dh: key("p256dh"), topics }) });
    } else {
      await request("/v1/webpush", { method: "DELETE", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ endpoint: sub.endpoint }) });
    }
  } catch (e) {
    setStatus(`Web Push: ${describe(e)}`);
  }
  renderPushButton();
}

function renderPushButton() {
  const b = $("push-toggle");
  b.hidden = !config.enable_web_push || !("PushManager" in window);
  b.textContent = localStorage.getItem("herald.push") === "on" ? "Background push on" : "Enable background push";
}

// --- wiring ---

function applyTheme() {
  const t = localStorage.getItem("herald.theme");
  if (t) document.documentElement.dataset.theme = t; else delete document.documentElement.dataset.theme;
}

function topicFromPath() {
  const p = location.pathname.replace(/\/+$/, "") || "/";
  if (p === config.app_root || p === "/") return null;
  const name = p.slice(1);
  return /^[-_A-Za-z0-9]{1,64}$/.test(name) ? name : null;
}

function init() {
  applyTheme();
  $("theme").onclick = () => {
    const dark = document.documentElement.dataset.theme === "dark"
      || (!document.documentElement.dataset.theme && matchMedia("(prefers-color-scheme: dark)").matches);
    localStorage.setItem("herald.theme", dark ? "light" : "dark");
    applyTheme();
  };
  $("menu").onclick = () => {
    const open = document.body.classList.toggle("nav-open");
    $("menu").setAttribute("aria-expanded", String(open));
  };
  $("subscribe-form").onsubmit = (e) => {
    e.preventDefault();
    const t = e.target.topic.value.trim();
    if (subscribe(t)) { e.target.reset(); select(t); }
  };
  $("publish-open").onclick = openPublish;
  $("publish-cancel").onclick = () => $("publish-dialog").close();
  $("publish-form").onsubmit = sendPublish;
  $("login-open").onclick = () => { $("login-error").textContent = ""; $("login-dialog").showModal(); };
  $("login-cancel").onclick = () => $("login-dialog").close();
  $("login-form").onsubmit = login;
  $("logout").onclick = logout;
  $("mark-read").onclick = () => { for (const n of shown()) n.new = false; save(); renderTopics(); renderNotifications(); };
  $("clear").onclick = () => { for (const t of selected ? [selected] : Object.keys(subs)) subs[t].notifications = []; save(); renderTopics(); renderNotifications(); };
  $("unsubscribe").onclick = () => selected && unsubscribe(selected);
  $("notify-toggle").hidden = !("Notification" in window) || Notification.permission === "granted";
  $("notify-toggle").onclick = async () => { await Notification.requestPermission(); $("notify-toggle").hidden = Notification.permission === "granted"; };
  $("push-toggle").onclick = () => enablePush().catch((e) => setStatus(`Web Push: ${e.message}`));
  $("admin-open").onclick = async () => { const { showAdmin } = await import("./admin.js"); showAdmin($("admin-view"), $("topic-view")); };
  window.onpopstate = () => { selected = topicFromPath(); renderTopics(); renderNotifications(); };
  // A sleeping laptop's sockets may be dead without a close event: reconnect on wake.
  document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") for (const s of live.values()) s.connect(); });

  const topic = topicFromPath();
  if (topic) subscribe(topic);
  for (const t of Object.keys(subs)) connect(t);
  selected = topic;
  renderTopics();
  renderNotifications();
  renderPushButton();
  refreshAccount().then(() => {
    if (config.require_login && !credentials()) $("login-dialog").showModal();
  });
  document.body.dataset.ready = "true";
}

init();
