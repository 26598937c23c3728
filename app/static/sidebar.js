// The sidebar (rooms, then people), the page title and the conversation's
// header. The lists are updated in place rather than rebuilt, so the sidebar
// keeps its buttons (and the keyboard focus) across events.
import {
  $,
  el,
  icon,
  paintAvatar,
  paintRoomAvatar,
  parseKey,
  plural,
  roomKey,
  setText,
  userKey,
} from "./dom.js";

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
