// The page's small DOM helpers: conversation keys, elements, icons, avatars.
// Every piece of user-supplied text goes through textContent (or a Text node),
// never innerHTML, so a name or a message is always shown as typed.

export const $ = (id) => document.getElementById(id);

// A conversation is a person or a room; its key tells which ("u:Bob", "r:general").
export const userKey = (name) => `u:${name}`;
export const roomKey = (name) => `r:${name}`;
export function parseKey(key) {
  if (!key) return [null, null];
  return [key.startsWith("r:") ? "room" : "user", key.slice(2)];
}

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

// Small line icons, built as DOM (no markup strings).
const ICONS = {
  lock: ["M7 11V8a5 5 0 0 1 10 0v3", "M5 11h14v10H5z"],
  hash: ["M9 4 7 20", "M17 4l-2 16", "M4 9h16", "M3 15h16"],
};
export function icon(name) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", `icon icon-${name}`);
  for (const d of ICONS[name]) {
    const path = document.createElementNS(ns, "path");
    path.setAttribute("d", d);
    svg.append(path);
  }
  return svg;
}

// A stable, pleasant colour per name for the avatars.
export function hue(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

export function paintAvatar(node, name) {
  setText(node, name ? name.slice(0, 1).toUpperCase() : "");
  node.style.setProperty("--avatar-hue", String(hue(name || "")));
  node.hidden = !name;
}

export function paintRoomAvatar(node, room) {
  node.replaceChildren(icon(room?.private ? "lock" : "hash"));
  node.hidden = false;
}

export function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}
