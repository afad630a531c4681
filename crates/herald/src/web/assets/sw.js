// The service worker: shows Web Push messages while no tab is open and opens the
// topic when one is clicked. The payload is ntfy's: {"event":"message",
// "subscription_id":..., "message":{...}}.

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (e) => e.waitUntil(self.clients.claim()));

self.addEventListener("push", (event) => {
  let data = {};
  try { data = event.data ? event.data.json() : {}; } catch { data = { message: { message: event.data?.text() || "" } }; }
  const m = data.message || {};
  if (data.event && data.event !== "message") return;
  const title = m.title || m.topic || "herald";
  event.waitUntil(self.registration.showNotification(title, {
    body: m.message || "",
    tag: m.topic ? `${m.topic}/${m.sequence_id || m.id}` : undefined,
    icon: m.icon || "/static/icon.svg",
    data: { topic: m.topic || "", click: m.click || "" },
    requireInteraction: (m.priority || 3) >= 5,
    silent: (m.priority || 3) <= 2,
  }));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const { topic, click } = event.notification.data || {};
  const url = click && /^https?:/.test(click) ? click : `/${topic || ""}`;
  event.waitUntil((async () => {
    const tabs = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    const same = tabs.find((c) => new URL(c.url).pathname === url);
    if (same) return same.focus();
    return self.clients.openWindow(url);
  })());
});
