// Rendering: state in, DOM out. Every piece of user-supplied text goes through
// textContent (or a Text node), never innerHTML, so a name or a message is
// always shown as typed.
//
// The lists are updated in place rather than rebuilt: the message list is an
// aria-live log, so a screen reader announces exactly the rows that are added,
// and the sidebar keeps its buttons (and the keyboard focus) across events.
import { mentionRanges } from "./mentions.js";

const $ = (id) => document.getElementById(id);

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
function hue(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

export function paintAvatar(node, name) {
  setText(node, name ? name.slice(0, 1).toUpperCase() : "");
  node.style.setProperty("--avatar-hue", String(hue(name || "")));
  node.hidden = !name;
}

function paintRoomAvatar(node, room) {
  node.replaceChildren(icon(room?.private ? "lock" : "hash"));
  node.hidden = false;
}

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

// -- the sidebar: rooms, then people ------------------------------------------------
// One <li><button> per room and per person, kept while they are listed. All the
// sidebar's buttons (rooms, "New room", "Browse rooms", people) are one keyboard
// widget: one Tab stop (roving tabindex), Up/Down/Home/End move through all of
// them, from the rooms into the people.
const personRows = new Map(); // name -> nodes
const roomRows = new Map(); // name -> nodes
let tabStop = null;

const collator = new Intl.Collator(undefined, { sensitivity: "base" });
// As in the desktop client: online first, then by name.
function byPresenceThenName(a, b) {
  return Number(b.online) - Number(a.online) || collator.compare(a.username, b.username);
}

function navButton(className, key) {
  const button = el("button", `nav-item ${className}`);
  button.type = "button";
  button.dataset.key = key;
  button.tabIndex = -1;
  button.setAttribute("aria-describedby", "sidebar-keys");
  return button;
}

function userRow(name) {
  const li = el("li");
  const button = navButton("user", userKey(name));
  button.dataset.name = name;
  const avatar = el("span", "avatar");
  avatar.setAttribute("aria-hidden", "true");
  paintAvatar(avatar, name);
  const dot = el("span", "dot");
  avatar.append(dot);
  const status = el("span", "visually-hidden"); // ", online" / ", offline"
  const unread = el("span", "visually-hidden"); // ", 3 unread"
  const badge = el("span", "badge");
  badge.setAttribute("aria-hidden", "true"); // read out as `unread`, in words
  button.append(avatar, el("span", "user-name", name), status, unread);
  li.append(button);
  const row = { li, button, dot, status, unread, badge };
  personRows.set(name, row);
  return row;
}

function markCurrent(button, current) {
  if (current) button.setAttribute("aria-current", "true");
  else button.removeAttribute("aria-current");
}

function updateUserRow(row, user, open) {
  const { button, dot, status, unread, badge } = row;
  dot.classList.toggle("online", user.online);
  setText(status, user.online ? ", online" : ", offline");
  markCurrent(button, userKey(user.username) === open);
  if (user.unread > 0) {
    setText(badge, user.unread > 99 ? "99+" : String(user.unread));
    setText(unread, `, ${user.unread} unread`);
    if (!badge.isConnected) button.append(badge);
  } else {
    setText(unread, "");
    badge.remove();
  }
}

function roomRow(name) {
  const li = el("li");
  const button = navButton("room", roomKey(name));
  button.dataset.room = name;
  const mark = el("span", "room-mark");
  mark.setAttribute("aria-hidden", "true");
  const label = el("span", "room-name", name);
  const kind = el("span", "visually-hidden"); // ", private room" / ", room"
  const counts = el("span", "visually-hidden"); // ", 3 unread, 1 mention"
  const mentionBadge = el("span", "badge badge-mention");
  mentionBadge.setAttribute("aria-hidden", "true");
  const unreadBadge = el("span", "badge badge-room");
  unreadBadge.setAttribute("aria-hidden", "true");
  button.append(mark, label, kind, counts);
  li.append(button);
  const row = { li, button, mark, kind, counts, mentionBadge, unreadBadge, private: null };
  roomRows.set(name, row);
  return row;
}

function updateRoomRow(row, room, open) {
  const { button, mark, kind, counts, mentionBadge, unreadBadge } = row;
  if (row.private !== room.private) {
    row.private = room.private;
    mark.replaceChildren(icon(room.private ? "lock" : "hash"));
    setText(kind, room.private ? ", private room" : ", room");
  }
  markCurrent(button, roomKey(room.name) === open);
  button.classList.toggle("has-unread", room.unread > 0);
  const words = [];
  if (room.unread > 0) words.push(`${room.unread} unread`);
  if (room.mentions > 0) words.push(plural(room.mentions, "mention", "mentions"));
  setText(counts, words.length ? `, ${words.join(", ")}` : "");
  // The mention mark first: it is the one that asks for you.
  if (room.mentions > 0) {
    setText(mentionBadge, `@${room.mentions > 99 ? "99+" : room.mentions}`);
    if (!mentionBadge.isConnected) button.append(mentionBadge);
  } else {
    mentionBadge.remove();
  }
  if (room.unread > 0) {
    setText(unreadBadge, room.unread > 99 ? "99+" : String(room.unread));
    if (!unreadBadge.isConnected) button.append(unreadBadge);
  } else {
    unreadBadge.remove();
  }
}

function setTabStop(button) {
  if (tabStop === button) return;
  if (tabStop) tabStop.tabIndex = -1;
  tabStop = button;
  if (button) button.tabIndex = 0;
}

// Bring `list` in line with `items` (in order), making rows with `make` and
// dropping the rows of items gone. Only what is out of place moves.
function syncList(list, rows, items, nameOf, make, update) {
  const names = new Set(items.map(nameOf));
  for (const [name, row] of rows) {
    if (names.has(name)) continue;
    row.li.remove();
    rows.delete(name);
    if (tabStop === row.button) tabStop = null;
  }
  items.forEach((item, i) => {
    const row = rows.get(nameOf(item)) || make(nameOf(item));
    update(row, item);
    if (list.children[i] !== row.li) list.insertBefore(row.li, list.children[i] || null);
  });
}

function roomsWhere(state, joined) {
  const rooms = [...state.rooms.values()].filter((r) => r.joined === joined);
  return rooms.sort((a, b) => collator.compare(a.name, b.name));
}

export const joinedRooms = (state) => roomsWhere(state, true);
export const joinableRooms = (state) => roomsWhere(state, false);

export function renderSidebar(state) {
  const focused = document.activeElement;
  const rooms = joinedRooms(state);
  syncList($("rooms"), roomRows, rooms, (r) => r.name, roomRow, (row, room) =>
    updateRoomRow(row, room, state.open),
  );
  $("rooms-empty").hidden = rooms.length > 0;
  const more = joinableRooms(state).length;
  setText($("browse-count"), more > 0 ? String(more) : "");
  const label = more > 0 ? `Browse rooms, ${plural(more, "room", "rooms")} to join` : "Browse rooms";
  const browse = $("browse-rooms");
  if (browse.getAttribute("aria-label") !== label) browse.setAttribute("aria-label", label);

  const users = [...state.users.values()].sort(byPresenceThenName);
  syncList($("users"), personRows, users, (u) => u.username, userRow, (row, user) =>
    updateUserRow(row, user, state.open),
  );
  // Moving a node drops its focus: give it back.
  if (focused && focused !== document.activeElement && focused.isConnected) {
    focused.focus({ preventScroll: true });
  }
  if (!tabStop) setTabStop(buttonFor(state.open) || firstStop());
}

function buttonFor(key) {
  const [kind, name] = parseKey(key);
  if (kind === "room") return roomRows.get(name)?.button || null;
  if (kind === "user") return personRows.get(name)?.button || null;
  return null;
}

// With nothing open the Tab stop is the first person (the list people had
// before there were rooms), else the first room, else "New room".
function firstStop() {
  return $("users").querySelector(".nav-item") || $("sidebar").querySelector(".nav-item");
}

// One set of listeners for the whole sidebar: a room or a person opens on
// click (or Enter/Space); Up/Down/Home/End move the focus through every item.
export function bindSidebar({ onOpen, onNewRoom, onBrowse }) {
  const nav = $("sidebar");
  nav.addEventListener("click", (event) => {
    const button = event.target.closest(".nav-item");
    if (!button || !nav.contains(button)) return;
    if (button.id === "new-room") onNewRoom(button);
    else if (button.id === "browse-rooms") onBrowse(button);
    else if (button.dataset.key) onOpen(button.dataset.key);
  });
  nav.addEventListener("focusin", (event) => {
    const button = event.target.closest(".nav-item");
    if (button) setTabStop(button);
  });
  nav.addEventListener("keydown", (event) => {
    const button = event.target.closest(".nav-item");
    if (!button || event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return;
    const buttons = [...nav.querySelectorAll(".nav-item")];
    const at = buttons.indexOf(button);
    const to = {
      ArrowUp: at - 1,
      ArrowDown: at + 1,
      Home: 0,
      End: buttons.length - 1,
    }[event.key];
    if (to === undefined) return;
    event.preventDefault();
    const target = buttons[Math.max(0, Math.min(buttons.length - 1, to))];
    target?.focus();
    target?.scrollIntoView({ block: "nearest" });
  });
}

// Focus the sidebar: the item of `key` (a conversation), else its Tab stop.
export function focusSidebar(key) {
  const button = buttonFor(key) || tabStop || firstStop();
  button?.focus();
  return Boolean(button);
}

export function renderTitle(state) {
  let total = 0;
  for (const user of state.users.values()) total += user.unread;
  for (const room of state.rooms.values()) if (room.joined) total += room.unread;
  const title = total > 0 ? `(${total}) Chat` : "Chat";
  if (document.title !== title) document.title = title;
}

export function renderHeader(state) {
  const [kind, name] = parseKey(state.open);
  const user = kind === "user" ? state.users.get(name) : null;
  const room = kind === "room" ? state.rooms.get(name) : null;
  setText($("peer-kind"), kind === "room" ? "Room " : "");
  setText($("peer-label"), name || "No conversation open");
  let status = "";
  if (user) status = user.online ? "online" : "offline";
  if (room) {
    status = `${room.private ? "private" : "public"} · ${plural(room.members, "member", "members")}`;
  }
  setText($("peer-status"), status);
  $("peer-status").classList.toggle("online", Boolean(user?.online));
  if (kind === "room") paintRoomAvatar($("peer-avatar"), room);
  else {
    $("peer-avatar").replaceChildren();
    paintAvatar($("peer-avatar"), name);
  }
  $("peer-avatar").classList.toggle("room-avatar", kind === "room");
  $("room-tools").hidden = kind !== "room";
  $("layout").classList.toggle("show-conv", Boolean(kind));
  $("message").disabled = !kind;
  $("send").disabled = !kind;
  const placeholder = kind === "room" ? `Message #${name}…` : "Write a message…";
  if ($("message").placeholder !== placeholder) $("message").placeholder = placeholder;
}

// -- messages ----------------------------------------------------------------------------
const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "short", day: "numeric" });

// What the log shows now: whose conversation, and the row of each message id.
// At first: nobody, and the page's own hint.
const shown = { key: null, rows: new Map(), historyHint: null, emptyHint: $("empty-hint") };

// The message's text, with each "@you" marked when it mentions you.
function textOf(m, me, mentioned) {
  const p = el("p", "text");
  if (!mentioned) {
    p.textContent = m.text;
    return p;
  }
  let last = 0;
  for (const [start, end] of mentionRanges(m.text, me)) {
    if (start > last) p.append(m.text.slice(last, start));
    p.append(el("mark", "at-me", m.text.slice(start, end)));
    last = end;
  }
  if (last < m.text.length) p.append(m.text.slice(last));
  return p;
}

function messageRow(m, me) {
  const when = new Date(m.ts);
  const mine = m.from === me;
  const inRoom = m.room !== undefined;
  const mentioned = inRoom && !mine && mentionRanges(m.text, me).length > 0;
  const row = el("div", `msg ${mine ? "mine" : "theirs"}${inRoom ? " in-room" : ""}`);
  if (mentioned) row.classList.add("mention");
  row.dataset.id = String(m.id);
  row.dataset.from = m.from;
  row.dataset.day = dayFmt.format(when);
  const bubble = el("div", "bubble");
  let who = mine ? "You: " : `${m.from}: `;
  if (mentioned) who = `${m.from}, mentioning you: `;
  if (inRoom && !mine) {
    // Who wrote it, on screen (read out by `who` below, once).
    const avatar = el("span", "avatar avatar-sm");
    avatar.setAttribute("aria-hidden", "true");
    paintAvatar(avatar, m.from);
    row.append(avatar);
    const sender = el("span", "sender", m.from);
    sender.setAttribute("aria-hidden", "true");
    sender.style.setProperty("--avatar-hue", String(hue(m.from)));
    bubble.append(sender);
  }
  const text = textOf(m, me, mentioned);
  const time = el("time", "time", timeFmt.format(when));
  time.dateTime = m.ts;
  bubble.append(el("span", "visually-hidden", who), text, time);
  row.append(bubble);
  return row;
}

// One day separator before the first message of each day, wherever rows went
// in; and in a room, a run of messages from one sender shows the name once.
function fixRows(box) {
  let lastDay = null;
  let lastFrom = null;
  for (const node of [...box.children]) {
    if (node.classList.contains("msg")) {
      const day = node.dataset.day;
      const prev = node.previousElementSibling;
      const hasSep = Boolean(prev?.classList.contains("day"));
      if (day !== lastDay) {
        if (hasSep) setText(prev, day);
        else box.insertBefore(el("p", "day", day), node);
        lastFrom = null;
      } else if (hasSep) {
        prev.remove();
      }
      node.classList.toggle("follow", node.dataset.from === lastFrom);
      lastDay = day;
      lastFrom = node.dataset.from;
    } else if (node.classList.contains("day")) {
      if (!node.nextElementSibling?.classList.contains("msg")) node.remove(); // a day left empty
    }
  }
}

function syncHint(box, key, wanted, className, text, atTop) {
  let node = shown[key];
  if (!wanted) {
    node?.remove();
    shown[key] = null;
    return;
  }
  if (!node) {
    node = shown[key] = el("p", className);
    if (atTop) box.prepend(node);
    else box.append(node);
  }
  setText(node, text);
}

// Mark the log busy while a conversation is (re)loaded: screen readers wait
// for the whole new thread instead of reading each row as it goes in. A
// rebuild is busy too, whatever was asked here (renderMessages).
let busyWanted = false;
export function setBusy(busy) {
  busyWanted = busy;
  $("messages").setAttribute("aria-busy", busy ? "true" : "false");
}

// Bring the log in line with the open conversation. Only missing rows are
// added (appended for new messages, prepended for older pages); the log is
// rebuilt only for another conversation or with `rebuild` (after a reload).
// A rebuild, and a `quiet` update (an older page), happen with the log busy.
export function renderMessages(state, { keepBottom = false, rebuild = false, quiet = false } = {}) {
  const box = $("messages");
  const key = state.open;
  const conv = key ? state.convs.get(key) : null;
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 48;
  const rebuilding = rebuild || key !== shown.key;
  if (rebuilding || quiet) box.setAttribute("aria-busy", "true");
  if (rebuilding) {
    box.replaceChildren();
    shown.key = key;
    shown.rows = new Map();
    shown.historyHint = shown.emptyHint = null;
    keepBottom = true;
  }
  if (!conv) {
    const hint = "Pick a room or someone to start chatting.";
    syncHint(box, "emptyHint", true, "empty-hint", hint, false);
  } else {
    syncRows(box, state, conv, keepBottom || atBottom);
  }
  if (rebuilding || quiet) setBusy(busyWanted);
}

function syncRows(box, state, conv, toBottom) {
  const [kind, name] = parseKey(state.open);
  // The reader's place: the oldest row shown, wherever it moves.
  const anchor = box.querySelector(".msg");
  const anchorTop = anchor?.getBoundingClientRect().top;
  syncHint(box, "historyHint", conv.hasMore, "history-hint", "Scroll up for older messages", true);
  const empty = conv.loaded && conv.messages.length === 0;
  const where = kind === "room" ? `in #${name}` : `with ${name}`;
  const hello = `No messages ${where} yet. Say hello!`;
  syncHint(box, "emptyHint", empty, "empty-hint", hello, false);
  // Newest first: each missing row goes in right before the next newer one shown.
  let added = false;
  let next = null;
  for (let i = conv.messages.length - 1; i >= 0; i--) {
    const m = conv.messages[i];
    let row = shown.rows.get(m.id);
    if (!row) {
      row = messageRow(m, state.me);
      shown.rows.set(m.id, row);
      box.insertBefore(row, next || shown.emptyHint);
      added = true;
    }
    next = row;
  }
  if (shown.historyHint && shown.historyHint !== box.firstChild) box.prepend(shown.historyHint);
  if (added) fixRows(box);
  if (toBottom) {
    box.scrollTop = box.scrollHeight;
  } else if (anchor?.isConnected) {
    box.scrollTop += anchor.getBoundingClientRect().top - anchorTop;
  }
}

export function showBanner(visible) {
  $("banner").hidden = !visible;
}

export function showSendError(text) {
  const node = $("send-error");
  setText(node, text || "");
  node.hidden = !text;
}
