// The chat page: state, polling, sending. Rendering lives in view.js.
// Every chat rule (unread counts, presence, validation) is the server's; this
// file only keeps what the server said and asks again after a reset.
import { api, go, NetworkError, newId, sleep } from "./api.js";
import * as view from "./view.js";

const POLL_INTERVAL_MS = 100; // the polling contract of the product
const LONGPOLL_WAIT_MS = 25000;
const HISTORY_PAGE = 50;
const SEND_RETRY_MS = 30000; // give up a send after this long unreachable

const params = new URLSearchParams(window.location.search);
const longpoll = params.get("longpoll") === "1" || document.body.dataset.longpoll === "1";

const state = {
  me: document.body.dataset.username,
  users: new Map(), // name -> {username, online, unread}
  convs: new Map(), // name -> {messages, ids, hasMore, loaded, loadingOlder}
  open: null,
  cursor: null,
  // Unread increments applied from events, by buffer position: a users list
  // fetched later reflects those at or before its cursor and not the others.
  bumps: [], // {pos, peer}
  readSent: new Map(), // name -> highest up_to sent
};

const $ = (id) => document.getElementById(id);

function conv(name) {
  let c = state.convs.get(name);
  if (!c) {
    c = { messages: [], ids: new Set(), hasMore: false, loaded: false, loadingOlder: false };
    state.convs.set(name, c);
  }
  return c;
}

function addMessages(c, messages) {
  let added = false;
  for (const m of messages) {
    if (c.ids.has(m.id)) continue;
    c.ids.add(m.id);
    c.messages.push(m);
    added = true;
  }
  if (added) c.messages.sort((a, b) => a.id - b.id);
  return added;
}

function renderAll() {
  view.renderUsers(state, openConversation);
  view.renderTitle(state);
  view.renderHeader(state);
}

// A 401 anywhere means the session is gone (logged out, idle, token refused).
function checkSession(res) {
  if (res.status === 401) {
    go("/login");
    throw new Error("not logged in");
  }
  return res;
}

async function loadUsers() {
  const res = checkSession(await api("GET", "/api/users"));
  if (!res.ok) throw new NetworkError(res.data?.message);
  state.users = new Map(res.data.users.map((u) => [u.username, u]));
  return res.data.cursor;
}

async function loadHistory(name, before) {
  const q = new URLSearchParams({ with: name, limit: String(HISTORY_PAGE) });
  if (before !== undefined) q.set("before", String(before));
  const res = checkSession(await api("GET", `/api/history?${q}`));
  if (!res.ok) throw new NetworkError(res.data?.message);
  return res.data;
}

function visible() {
  return document.visibilityState === "visible";
}

async function markRead(name) {
  const c = state.convs.get(name);
  const newest = c?.messages.at(-1);
  const user = state.users.get(name);
  if (!newest || !visible()) return;
  if (user) user.unread = 0;
  view.renderUsers(state, openConversation);
  view.renderTitle(state);
  if ((state.readSent.get(name) || 0) >= newest.id) return;
  state.readSent.set(name, newest.id);
  try {
    checkSession(await api("POST", "/api/read", { with: name, up_to: newest.id }));
  } catch (err) {
    state.readSent.delete(name); // try again at the next chance
    if (!(err instanceof NetworkError)) throw err;
  }
}

async function openConversation(name) {
  state.open = name;
  view.showSendError("");
  renderAll();
  view.renderMessages(state, { keepBottom: true });
  $("message").focus();
  const c = conv(name);
  if (!c.loaded) {
    try {
      const page = await loadHistory(name);
      addMessages(c, page.messages);
      c.hasMore = page.has_more;
      c.loaded = true;
    } catch (err) {
      if (!(err instanceof NetworkError)) throw err;
      view.showSendError("Could not load the conversation; retrying when the server is back.");
      return;
    }
    if (state.open !== name) return;
    view.renderMessages(state, { keepBottom: true });
  }
  await markRead(name);
}

async function loadOlder() {
  const name = state.open;
  const c = name && state.convs.get(name);
  if (!c || !c.hasMore || c.loadingOlder || c.messages.length === 0) return;
  c.loadingOlder = true;
  try {
    const page = await loadHistory(name, c.messages[0].id);
    addMessages(c, page.messages);
    c.hasMore = page.has_more;
    if (state.open === name) view.renderMessages(state, { anchor: "older" });
  } catch (err) {
    if (!(err instanceof NetworkError)) throw err;
  } finally {
    c.loadingOlder = false;
  }
}

// -- events from the server ----------------------------------------------------
function onMessage(m, pos) {
  const peer = m.from === state.me ? m.to : m.from;
  const c = conv(peer);
  const added = addMessages(c, [m]);
  if (peer === state.open) {
    if (added) view.renderMessages(state, { keepBottom: m.from === state.me });
    if (m.from !== state.me && visible()) {
      markRead(peer);
      return;
    }
  }
  const user = state.users.get(peer);
  if (m.from !== state.me && user && added) {
    user.unread += 1;
    if (pos !== undefined) {
      state.bumps.push({ pos, peer });
      if (state.bumps.length > 500) state.bumps.splice(0, 250);
    }
  }
}

function onRead(ev) {
  // Our own marker comes back too (tabs share the session): nothing new.
  if ((state.readSent.get(ev.with) || 0) >= ev.up_to) return;
  state.readSent.set(ev.with, ev.up_to);
  // Read up to the newest message we know of from them: all read. Otherwise
  // only the server can say how many are left.
  const c = state.convs.get(ev.with);
  const newest = Math.max(0, ...(c ? c.messages : []).filter((m) => m.from === ev.with).map((m) => m.id));
  const user = state.users.get(ev.with);
  if (user && newest > 0 && ev.up_to >= newest) {
    user.unread = 0;
    state.bumps = state.bumps.filter((b) => b.peer !== ev.with);
  } else {
    refreshUsers();
  }
}

let refreshing = false;
let refreshAgain = false;
async function refreshUsers() {
  // Read markers set in another tab or window: the server owns the counts.
  // Calls while one runs fold into one more run, so none is lost.
  if (refreshing) {
    refreshAgain = true;
    return;
  }
  refreshing = true;
  try {
    do {
      refreshAgain = false;
      await sleep(50); // a burst of events costs one request
      const asOf = await loadUsers();
      for (const b of state.bumps) {
        const user = state.users.get(b.peer);
        if (b.pos > asOf && user && !(b.peer === state.open && visible())) user.unread += 1;
      }
      renderAll();
    } while (refreshAgain);
  } catch (err) {
    if (!(err instanceof NetworkError)) throw err;
  } finally {
    refreshing = false;
  }
}

async function reload() {
  // After a reset: start again from what the server holds now.
  state.cursor = await loadUsers();
  state.bumps = [];
  const open = state.open;
  for (const [name, c] of state.convs) if (name !== open) c.loaded = false;
  if (open) {
    const page = await loadHistory(open);
    const c = conv(open);
    c.messages = [];
    c.ids = new Set();
    addMessages(c, page.messages);
    c.hasMore = page.has_more;
    c.loaded = true;
    view.renderMessages(state, {});
    await markRead(open);
  }
  renderAll();
}

function onEvents(events, from) {
  // Buffer cursors are consecutive: event i of a reply sits at from + i + 1.
  let usersChanged = false;
  for (const [i, ev] of events.entries()) {
    if (ev.type === "message") {
      onMessage(ev.message, from + i + 1);
      usersChanged = true;
    } else if (ev.type === "presence") {
      const user = state.users.get(ev.username);
      if (user) user.online = ev.online;
      else refreshUsers(); // someone new registered
      usersChanged = true;
    } else if (ev.type === "read") {
      onRead(ev);
      usersChanged = true;
    }
  }
  if (usersChanged) renderAll();
}

async function pollLoop() {
  let backoff = 250;
  for (;;) {
    const q = new URLSearchParams({ cursor: String(state.cursor) });
    if (longpoll) q.set("wait_ms", String(LONGPOLL_WAIT_MS));
    let res;
    try {
      res = checkSession(await api("GET", `/api/poll?${q}`));
    } catch (err) {
      if (!(err instanceof NetworkError)) throw err;
      res = null;
    }
    if (!res || !res.ok) {
      view.showBanner(true);
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 2000);
      continue;
    }
    view.showBanner(false);
    backoff = 250;
    if (res.data.reset) {
      try {
        await reload();
      } catch (err) {
        if (!(err instanceof NetworkError)) throw err;
        continue; // cursor unchanged: the next poll says reset again
      }
      continue;
    }
    const from = state.cursor;
    state.cursor = res.data.cursor;
    onEvents(res.data.events, from);
    if (!longpoll && res.data.events.length === 0) await sleep(POLL_INTERVAL_MS);
  }
}

// -- sending -------------------------------------------------------------------------
let sending = false;

async function send() {
  const box = $("message");
  const text = box.value;
  const to = state.open;
  if (!to || text === "" || sending) return;
  sending = true;
  $("send").disabled = true;
  view.showSendError("");
  // One id for every retry of this message, so the server stores it once.
  const body = { to, text, client_msg_id: newId() };
  const deadline = Date.now() + SEND_RETRY_MS;
  try {
    for (let delay = 250; ; delay = Math.min(delay * 2, 2000)) {
      let res = null;
      try {
        res = checkSession(await api("POST", "/api/messages", body));
      } catch (err) {
        if (!(err instanceof NetworkError)) throw err;
      }
      if (res?.ok) {
        if (box.value === text) box.value = "";
        onMessage(res.data.message);
        renderAll();
        return;
      }
      const retryable = !res || res.status === 503 || res.status === 429;
      if (!retryable || Date.now() > deadline) {
        view.showSendError(res?.data?.message || "Not sent: the server cannot be reached.");
        return;
      }
      await sleep(delay);
    }
  } finally {
    sending = false;
    $("send").disabled = !state.open;
    autosize();
  }
}

function autosize() {
  const box = $("message");
  box.style.height = "auto";
  box.style.height = `${Math.min(box.scrollHeight, 160)}px`;
}

// -- wiring ------------------------------------------------------------------------------
$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
$("message").addEventListener("input", autosize);
$("messages").addEventListener("scroll", () => {
  if ($("messages").scrollTop < 80) loadOlder();
});
$("back").addEventListener("click", () => {
  const name = state.open;
  state.open = null;
  renderAll();
  view.renderMessages(state, {});
  document.querySelector(`.user[data-name="${CSS.escape(name)}"]`)?.focus();
});
$("logout").addEventListener("click", async () => {
  try {
    await api("POST", "/api/logout", {});
  } catch (err) {
    if (!(err instanceof NetworkError)) throw err;
  }
  go("/login");
});
document.addEventListener("visibilitychange", () => {
  if (visible() && state.open) markRead(state.open);
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && state.open && window.matchMedia("(max-width: 720px)").matches) {
    $("back").click();
  }
});

async function start() {
  view.paintAvatar($("me-avatar"), state.me);
  for (let delay = 250; ; delay = Math.min(delay * 2, 2000)) {
    try {
      state.cursor = await loadUsers();
      break;
    } catch (err) {
      if (!(err instanceof NetworkError)) throw err;
      view.showBanner(true);
      await sleep(delay);
    }
  }
  view.showBanner(false);
  renderAll();
  pollLoop();
}

start();
