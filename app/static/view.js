// Rendering: state in, DOM out. Every piece of user-supplied text goes through
// textContent (never innerHTML), so a message is always shown as typed.

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// A stable, pleasant colour per name for the avatars.
function hue(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

export function paintAvatar(node, name) {
  node.textContent = name ? name.slice(0, 1).toUpperCase() : "";
  node.style.setProperty("--avatar-hue", String(hue(name || "")));
  node.hidden = !name;
}

export function renderUsers(state, onOpen) {
  const list = $("users");
  const focused = document.activeElement?.dataset?.name;
  list.replaceChildren();
  for (const user of state.users.values()) {
    const li = el("li");
    const button = el("button", "user");
    button.type = "button";
    button.dataset.name = user.username;
    if (user.username === state.open) button.setAttribute("aria-current", "true");
    const avatar = el("span", "avatar");
    avatar.setAttribute("aria-hidden", "true");
    paintAvatar(avatar, user.username);
    const dot = el("span", user.online ? "dot online" : "dot");
    avatar.append(dot);
    const name = el("span", "user-name", user.username);
    const status = el("span", "visually-hidden", user.online ? ", online" : ", offline");
    button.append(avatar, name, status);
    if (user.unread > 0) {
      const badge = el("span", "badge", user.unread > 99 ? "99+" : String(user.unread));
      badge.setAttribute("aria-label", `${user.unread} unread`);
      button.append(badge);
    }
    button.addEventListener("click", () => onOpen(user.username));
    li.append(button);
    list.append(li);
    if (focused === user.username) button.focus();
  }
}

export function renderTitle(state) {
  let total = 0;
  for (const user of state.users.values()) total += user.unread;
  document.title = total > 0 ? `(${total}) Chat` : "Chat";
}

export function renderHeader(state) {
  const peer = state.open;
  const user = peer ? state.users.get(peer) : null;
  $("peer-name").textContent = peer || "No conversation open";
  $("peer-status").textContent = user ? (user.online ? "online" : "offline") : "";
  $("peer-status").classList.toggle("online", Boolean(user?.online));
  paintAvatar($("peer-avatar"), peer);
  $("layout").classList.toggle("show-conv", Boolean(peer));
  $("message").disabled = !peer;
  $("send").disabled = !peer;
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "short", day: "numeric" });

export function renderMessages(state, { keepBottom = false, anchor = null } = {}) {
  const box = $("messages");
  const conv = state.open ? state.convs.get(state.open) : null;
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 48;
  const oldHeight = box.scrollHeight;
  const oldTop = box.scrollTop;
  box.replaceChildren();
  if (!conv) {
    box.append(el("p", "empty-hint", "Pick someone to start chatting."));
    return;
  }
  if (conv.hasMore) box.append(el("p", "history-hint", "Scroll up for older messages"));
  else if (conv.loaded && conv.messages.length === 0) {
    box.append(el("p", "empty-hint", `No messages with ${state.open} yet. Say hello!`));
  }
  let lastDay = "";
  for (const m of conv.messages) {
    const when = new Date(m.ts);
    const day = dayFmt.format(when);
    if (day !== lastDay) {
      box.append(el("p", "day", day));
      lastDay = day;
    }
    const mine = m.from === state.me;
    const row = el("div", mine ? "msg mine" : "msg theirs");
    row.dataset.id = String(m.id);
    const bubble = el("div", "bubble");
    const who = el("span", "visually-hidden", mine ? "You: " : `${m.from}: `);
    const text = el("p", "text", m.text);
    const time = el("time", "time", timeFmt.format(when));
    time.dateTime = m.ts;
    bubble.append(who, text, time);
    row.append(bubble);
    box.append(row);
  }
  if (anchor === "older") {
    // Older messages went on top: keep the reader's place.
    box.scrollTop = box.scrollHeight - oldHeight + oldTop;
  } else if (keepBottom || atBottom) {
    box.scrollTop = box.scrollHeight;
  } else {
    box.scrollTop = oldTop;
  }
}

export function showBanner(visible) {
  $("banner").hidden = !visible;
}

export function showSendError(text) {
  const node = $("send-error");
  node.textContent = text || "";
  node.hidden = !text;
}
