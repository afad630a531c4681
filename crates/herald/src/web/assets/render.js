// Turning a notification into DOM nodes. Untrusted text only ever becomes text
// nodes or attribute values checked here (links: http, https, mailto); nothing is
// parsed as HTML, so a message cannot inject markup or script.

const h = (tag, attrs = {}, ...children) => {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
};
export { h };

export function safeUrl(url) {
  try {
    const u = new URL(url, location.href);
    return ["http:", "https:", "mailto:"].includes(u.protocol) ? u.href : null;
  } catch { return null; }
}

// ntfy's tags that are emoji short codes (a common subset); other tags show as text.
const EMOJI = {
  "+1": "👍", "-1": "👎", thumbsup: "👍", thumbsdown: "👎", warning: "⚠️", rotating_light: "🚨",
  white_check_mark: "✅", heavy_check_mark: "✔️", x: "❌", no_entry: "⛔", tada: "🎉", partying_face: "🥳",
  skull: "💀", fire: "🔥", bell: "🔔", loudspeaker: "📢", mega: "📣", heart: "❤️", star: "⭐",
  rocket: "🚀", computer: "💻", floppy_disk: "💾", cd: "💿", package: "📦", lock: "🔒", unlock: "🔓",
  key: "🔑", bug: "🐛", zap: "⚡", cloud: "☁️", sunny: "☀️", umbrella: "☂️", snowflake: "❄️",
  house: "🏠", car: "🚗", email: "📧", envelope: "✉️", phone: "📱", calendar: "📅", clock: "🕐",
  hourglass: "⌛", moneybag: "💰", chart_with_upwards_trend: "📈", chart_with_downwards_trend: "📉",
  information_source: "ℹ️", question: "❓", exclamation: "❗", bangbang: "‼️", stop_sign: "🛑",
  green_circle: "🟢", red_circle: "🔴", yellow_circle: "🟡", large_blue_circle: "🔵",
  smile: "😄", cry: "😢", robot: "🤖", ghost: "👻", cat: "🐱", dog: "🐶", eyes: "👀", wave: "👋",
  clap: "👏", pray: "🙏", muscle: "💪", coffee: "☕", beer: "🍺", pizza: "🍕", gear: "⚙️", wrench: "🔧",
  hammer: "🔨", shield: "🛡️", link: "🔗", memo: "📝", pushpin: "📌", battery: "🔋", electric_plug: "🔌",
  signal_strength: "📶", satellite: "📡", globe_with_meridians: "🌐", trophy: "🏆", medal: "🏅",
};

export function splitTags(tags = []) {
  const emoji = [], other = [];
  for (const t of tags) (EMOJI[t] ? emoji.push(EMOJI[t]) : other.push(t));
  return { emoji, other };
}

// --- Markdown: a safe subset (paragraphs, headings, lists, quotes, code, emphasis,
// links), built as nodes. ---

const INLINE = /(`[^`]+`)|(\*\*[^*]+\*\*|__[^_]+__)|(\*[^*\s][^*]*\*|_[^_\s][^_]*_)|(~~[^~]+~~)|(\[[^\]]+\]\([^)\s]+\))|(https?:\/\/[^\s<>()]+)/;

export function inline(text) {
  const out = [];
  let rest = text;
  while (rest) {
    const m = INLINE.exec(rest);
    if (!m) { out.push(rest); break; }
    if (m.index) out.push(rest.slice(0, m.index));
    const t = m[0];
    if (m[1]) out.push(h("code", {}, t.slice(1, -1)));
    else if (m[2]) out.push(h("strong", {}, ...inline(t.slice(2, -2))));
    else if (m[3]) out.push(h("em", {}, ...inline(t.slice(1, -1))));
    else if (m[4]) out.push(h("del", {}, ...inline(t.slice(2, -2))));
    else if (m[5]) {
      const [, label, url] = /^\[([^\]]+)\]\(([^)\s]+)\)$/.exec(t);
      const href = safeUrl(url);
      out.push(href ? h("a", { href, target: "_blank", rel: "noopener noreferrer" }, ...inline(label)) : t);
    } else if (m[6]) {
      const href = safeUrl(t);
      out.push(href ? h("a", { href, target: "_blank", rel: "noopener noreferrer" }, t) : t);
    }
    rest = rest.slice(m.index + t.length);
  }
  return out;
}

export function markdown(src) {
  const root = h("div", { class: "md" });
  const lines = src.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (line.startsWith("```")) {
      const code = [];
      for (i++; i < lines.length && !lines[i].startsWith("```"); i++) code.push(lines[i]);
      root.append(h("pre", {}, h("code", {}, code.join("\n"))));
      i++;
    } else if (/^#{1,6}\s/.test(line)) {
      const level = Math.min(line.indexOf(" "), 6);
      // Headings inside a card are demoted so the page's outline stays intact.
      root.append(h(`h${Math.min(level + 3, 6)}`, {}, ...inline(line.slice(level + 1))));
      i++;
    } else if (/^\s*([-*+]|\d+\.)\s/.test(line)) {
      const ordered = /^\s*\d+\./.test(line);
      const list = h(ordered ? "ol" : "ul");
      for (; i < lines.length && /^\s*([-*+]|\d+\.)\s/.test(lines[i]); i++) {
        list.append(h("li", {}, ...inline(lines[i].replace(/^\s*([-*+]|\d+\.)\s/, ""))));
      }
      root.append(list);
    } else if (line.startsWith(">")) {
      const quote = [];
      for (; i < lines.length && lines[i].startsWith(">"); i++) quote.push(lines[i].replace(/^>\s?/, ""));
      root.append(h("blockquote", {}, ...inline(quote.join(" "))));
    } else if (!line.trim()) {
      i++;
    } else {
      const para = [];
      for (; i < lines.length && lines[i].trim() && !/^(```|#{1,6}\s|>|\s*([-*+]|\d+\.)\s)/.test(lines[i]); i++) {
        if (para.length) para.push(h("br"));
        para.push(...inline(lines[i]));
      }
      root.append(h("p", {}, ...para));
    }
  }
  return root;
}

const PRIORITY = { 1: "min", 2: "low", 4: "high", 5: "max" };
const IMAGE = /\.(png|jpe?g|gif|webp|avif|svg)$/i;

function timeText(t) {
  return new Date(t * 1000).toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

// One notification as a list item. `actions` get (action, message) for `http` and
// `copy`; `onDelete`/`onRead` act on the stored notification.
export function card(m, { onDelete, onRead, onAction, showTopic }) {
  const { emoji, other } = splitTags(m.tags);
  const titleText = m.title || (showTopic ? m.topic : "");
  const body = m.content_type === "text/markdown" ? markdown(m.message || "") : h("p", { class: "text" }, m.message || "");
  const click = m.click && safeUrl(m.click);
  const att = m.attachment;
  const attUrl = att && safeUrl(att.url);
  const isImage = att && attUrl && ((att.type || "").startsWith("image/") || IMAGE.test(att.name || attUrl));
  const actions = (m.actions || []).filter((a) => a.action !== "broadcast");
  const icon = m.icon && safeUrl(m.icon);
  return h("li", {
    class: `card${m.new ? " unread" : ""}${m.priority ? ` p${m.priority}` : ""}`,
    "data-id": m.id, "data-sequence": m.sequence_id || m.id,
  },
    h("div", { class: "card-head" },
      icon && h("img", { class: "icon", src: icon, alt: "", width: 32, height: 32, loading: "lazy" }),
      h("div", { class: "meta" },
        h("time", { datetime: new Date(m.time * 1000).toISOString() }, timeText(m.time)),
        showTopic && m.title ? h("span", { class: "topic" }, m.topic) : null,
        PRIORITY[m.priority] && h("span", { class: `prio prio-${m.priority}`, title: `Priority ${m.priority}` }, `priority ${PRIORITY[m.priority]}`),
      ),
      h("div", { class: "card-buttons" },
        m.new && h("button", { class: "icon-btn", "aria-label": "Mark read", onclick: () => onRead(m) }, "✓"),
        h("button", { class: "icon-btn", "aria-label": "Delete notification", onclick: () => onDelete(m) }, "✕"),
      ),
    ),
    titleText && h("h3", { class: "title" }, emoji.length ? `${emoji.join(" ")} ` : "", titleText),
    !titleText && emoji.length ? h("div", { class: "emoji" }, emoji.join(" ")) : null,
    body,
    isImage && h("a", { href: attUrl, target: "_blank", rel: "noopener noreferrer" },
      h("img", { class: "attachment", src: attUrl, alt: att.name || "attached image", loading: "lazy" })),
    att && attUrl && !isImage && h("p", {}, h("a", { class: "file", href: attUrl, target: "_blank", rel: "noopener noreferrer", download: att.name || true }, `📎 ${att.name || "attachment"}`)),
    other.length ? h("ul", { class: "tags", "aria-label": "Tags" }, other.map((t) => h("li", {}, t))) : null,
    (click || actions.length) ? h("div", { class: "actions" },
      click && h("a", { class: "button", href: click, target: "_blank", rel: "noopener noreferrer" }, "Open link"),
      actions.map((a) => a.action === "view"
        ? (safeUrl(a.url) ? h("a", { class: "button", href: safeUrl(a.url), target: "_blank", rel: "noopener noreferrer" }, a.label) : null)
        : h("button", { onclick: () => onAction(a, m) }, a.label)),
    ) : null,
  );
}
