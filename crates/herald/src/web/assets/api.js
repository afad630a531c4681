// Talking to the server: the same ntfy API every client uses. Credentials are kept
// in localStorage (as ntfy's app keeps its session) and sent as a header on fetch,
// or as ntfy's `auth` query parameter where a browser cannot set headers (WebSocket).

const AUTH_KEY = "herald.auth";

export function credentials() {
  try { return JSON.parse(localStorage.getItem(AUTH_KEY)) || null; } catch { return null; }
}

export function setCredentials(c) {
  if (c) localStorage.setItem(AUTH_KEY, JSON.stringify(c));
  else localStorage.removeItem(AUTH_KEY);
}

// The Authorization header value for `c` ({user, password} or {token}).
export function authHeader(c = credentials()) {
  if (!c) return null;
  if (c.token) return `Bearer ${c.token}`;
  const bytes = new TextEncoder().encode(`${c.user}:${c.password}`);
  return `Basic ${btoa(String.fromCharCode(...bytes))}`;
}

function authParam() {
  const h = authHeader();
  return h ? `auth=${btoa(h).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "")}` : "";
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error || `HTTP ${status}`);
    this.status = status;
    this.code = body?.code;
  }
}

export async function request(path, { method = "GET", headers = {}, body, creds } = {}) {
  const h = { ...headers };
  const auth = authHeader(creds === undefined ? credentials() : creds);
  if (auth) h.Authorization = auth;
  const resp = await fetch(path, { method, headers: h, body });
  if (!resp.ok) {
    let err = null;
    try { err = await resp.json(); } catch { /* not JSON */ }
    throw new ApiError(resp.status, err);
  }
  const type = resp.headers.get("content-type") || "";
  return type.includes("json") ? resp.json() : resp.text();
}

// Publishes with ntfy's headers (one request per form submission).
export function publish(topic, fields, file) {
  const headers = {};
  for (const [k, v] of Object.entries(fields)) if (v) headers[k] = v;
  return request(`/${encodeURIComponent(topic)}`, { method: "PUT", headers, body: file || fields.body || "" });
}

// A live subscription to one topic over WebSocket, resumed with `since=` after a
// drop (or a laptop's sleep) so nothing published meanwhile is missed.
export class Subscription {
  constructor(topic, since, onEvent, onState) {
    this.topic = topic;
    this.since = since;
    this.onEvent = onEvent;
    this.onState = onState;
    this.delay = 1000;
    this.closed = false;
    this.connect();
  }

  connect() {
    // One socket at a time: a wake-up may ask while a reconnect is already under way.
    if (this.closed || (this.ws && this.ws.readyState <= WebSocket.OPEN)) return;
    clearTimeout(this.retry);
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const params = [`since=${encodeURIComponent(this.since || "all")}`, authParam()].filter(Boolean).join("&");
    const ws = new WebSocket(`${proto}//${location.host}/${this.topic}/ws?${params}`);
    this.ws = ws;
    ws.onopen = () => { this.delay = 1000; this.onState("open"); };
    ws.onmessage = (e) => {
      let ev;
      try { ev = JSON.parse(e.data); } catch { return; }
      if (ev.event === "message" || ev.event === "message_delete" || ev.event === "message_clear") {
        this.since = ev.id;
        this.onEvent(ev);
      }
    };
    ws.onclose = (e) => {
      if (this.closed) return;
      this.onState(e.code === 1008 || e.code === 4401 ? "denied" : "reconnecting");
      this.retry = setTimeout(() => this.connect(), this.delay);
      this.delay = Math.min(this.delay * 2, 30000);
    };
  }

  close() {
    this.closed = true;
    clearTimeout(this.retry);
    this.ws?.close();
  }
}

// Whether the caller may read `topic` (`GET /<topic>/auth`): the WebSocket handshake
// cannot say why it was refused, this can.
export function checkRead(topic) {
  return request(`/${encodeURIComponent(topic)}/auth`);
}
