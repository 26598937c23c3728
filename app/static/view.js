// Rendering: state in, DOM out. Every piece of user-supplied text goes through
// textContent (never innerHTML), so a message is always shown as typed.
//
// Both lists are updated in place rather than rebuilt: the message list is an
// aria-live log, so a screen reader announces exactly the rows that are added,
// and the people list keeps its buttons (and the keyboard focus) across events.

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
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

// -- people --------------------------------------------------------------------------
// One <li><button> per user, kept for the page's life: name -> its nodes.
const rows = new Map();
// The one button of the list reachable with Tab (roving tabindex); Up/Down move it.
let tabStop = null;

// As in the desktop client: online first, then by name.
const collator = new Intl.Collator(undefined, { sensitivity: "base" });
function byPresenceThenName(a, b) {
  return Number(b.online) - Number(a.online) || collator.compare(a.username, b.username);
}

function userRow(name) {
  const li = el("li");
  const button = el("button", "user");
  button.type = "button";
  button.dataset.name = name;
  button.tabIndex = -1;
  button.setAttribute("aria-describedby", "people-keys");
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
  rows.set(name, row);
  return row;
}

function updateRow(row, user, open) {
  const { button, dot, status, unread, badge } = row;
  dot.classList.toggle("online", user.online);
  setText(status, user.online ? ", online" : ", offline");
  if (user.username === open) button.setAttribute("aria-current", "true");
  else button.removeAttribute("aria-current");
  if (user.unread > 0) {
    setText(badge, user.unread > 99 ? "99+" : String(user.unread));
    setText(unread, `, ${user.unread} unread`);
    if (!badge.isConnected) button.append(badge);
  } else {
    setText(unread, "");
    badge.remove();
  }
}

function setTabStop(button) {
  if (tabStop === button) return;
  if (tabStop) tabStop.tabIndex = -1;
  tabStop = button;
  if (button) button.tabIndex = 0;
}

export function renderUsers(state) {
  const list = $("users");
  const focused = document.activeElement;
  const users = [...state.users.values()].sort(byPresenceThenName);
  const names = new Set(users.map((u) => u.username));
  for (const [name, row] of rows) {
    if (names.has(name)) continue;
    row.li.remove();
    rows.delete(name);
    if (tabStop === row.button) tabStop = null;
  }
  users.forEach((user, i) => {
    const row = rows.get(user.username) || userRow(user.username);
    updateRow(row, user, state.open);
    // Move only what is out of place (presence re-sorts the list).
    if (list.children[i] !== row.li) list.insertBefore(row.li, list.children[i] || null);
  });
  // Moving a node drops its focus: give it back.
  if (focused && focused !== document.activeElement && focused.isConnected) {
    focused.focus({ preventScroll: true });
  }
  if (!tabStop) setTabStop((rows.get(state.open) || rows.get(users[0]?.username))?.button || null);
}

// One set of listeners for the whole list: click (or Enter/Space) opens,
// Up/Down/Home/End move the focus from person to person.
export function bindUsers(onOpen) {
  const list = $("users");
  list.addEventListener("click", (event) => {
    const button = event.target.closest(".user");
    if (button && list.contains(button)) onOpen(button.dataset.name);
  });
  list.addEventListener("focusin", (event) => {
    const button = event.target.closest(".user");
    if (button) setTabStop(button);
  });
  list.addEventListener("keydown", (event) => {
    const button = event.target.closest(".user");
    if (!button || event.altKey || event.ctrlKey || event.metaKey) return;
    const buttons = [...list.querySelectorAll(".user")];
    const at = buttons.indexOf(button);
    const to = {
      ArrowUp: at - 1,
      ArrowDown: at + 1,
      Home: 0,
      End: buttons.length - 1,
    }[event.key];
    if (to === undefined) return;
    event.preventDefault();
    buttons[Math.max(0, Math.min(buttons.length - 1, to))]?.focus();
  });
}

// Focus the people list: the open conversation's person, else the list's tab stop.
export function focusUsers(name) {
  const button = rows.get(name)?.button || tabStop;
  button?.focus();
  return Boolean(button);
}

export function renderTitle(state) {
  let total = 0;
  for (const user of state.users.values()) total += user.unread;
  const title = total > 0 ? `(${total}) Chat` : "Chat";
  if (document.title !== title) document.title = title;
}

export function renderHeader(state) {
  const peer = state.open;
  const user = peer ? state.users.get(peer) : null;
  setText($("peer-name"), peer || "No conversation open");
  setText($("peer-status"), user ? (user.online ? "online" : "offline") : "");
  $("peer-status").classList.toggle("online", Boolean(user?.online));
  paintAvatar($("peer-avatar"), peer);
  $("layout").classList.toggle("show-conv", Boolean(peer));
  $("message").disabled = !peer;
  $("send").disabled = !peer;
}

// -- messages ----------------------------------------------------------------------------
const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "short", day: "numeric" });

// What the log shows now: whose conversation, and the row of each message id.
// At first: nobody, and the page's own hint.
const shown = { peer: null, rows: new Map(), historyHint: null, emptyHint: $("empty-hint") };

function messageRow(m, me) {
  const when = new Date(m.ts);
  const mine = m.from === me;
  const row = el("div", mine ? "msg mine" : "msg theirs");
  row.dataset.id = String(m.id);
  row.dataset.day = dayFmt.format(when);
  const bubble = el("div", "bubble");
  const who = el("span", "visually-hidden", mine ? "You: " : `${m.from}: `);
  const text = el("p", "text", m.text);
  const time = el("time", "time", timeFmt.format(when));
  time.dateTime = m.ts;
  bubble.append(who, text, time);
  row.append(bubble);
  return row;
}

// One day separator before the first message of each day, wherever rows went in.
function fixDays(box) {
  let lastDay = null;
  for (const node of [...box.children]) {
    if (node.classList.contains("msg")) {
      const day = node.dataset.day;
      const prev = node.previousElementSibling;
      const hasSep = Boolean(prev?.classList.contains("day"));
      if (day !== lastDay) {
        if (hasSep) setText(prev, day);
        else box.insertBefore(el("p", "day", day), node);
      } else if (hasSep) {
        prev.remove();
      }
      lastDay = day;
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
  const peer = state.open;
  const conv = peer ? state.convs.get(peer) : null;
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 48;
  const rebuilding = rebuild || peer !== shown.peer;
  if (rebuilding || quiet) box.setAttribute("aria-busy", "true");
  if (rebuilding) {
    box.replaceChildren();
    shown.peer = peer;
    shown.rows = new Map();
    shown.historyHint = shown.emptyHint = null;
    keepBottom = true;
  }
  if (!conv) {
    syncHint(box, "emptyHint", true, "empty-hint", "Pick someone to start chatting.", false);
  } else {
    syncRows(box, state, conv, keepBottom || atBottom);
  }
  if (rebuilding || quiet) setBusy(busyWanted);
}

function syncRows(box, state, conv, toBottom) {
  const peer = state.open;
  // The reader's place: the oldest row shown, wherever it moves.
  const anchor = box.querySelector(".msg");
  const anchorTop = anchor?.getBoundingClientRect().top;
  syncHint(box, "historyHint", conv.hasMore, "history-hint", "Scroll up for older messages", true);
  const empty = conv.loaded && conv.messages.length === 0;
  const hello = `No messages with ${peer} yet. Say hello!`;
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
  if (added) fixDays(box);
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
