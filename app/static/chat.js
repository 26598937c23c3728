// The chat page: state, polling, sending. Rendering lives in view.js.
// Every chat rule (unread counts, presence, validation) is the server's; this
// file keeps what the server said and applies the events that came after it.
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
  users: new Map(), // name -> {username, online, unread}, as the server counted them
  convs: new Map(), // name -> {messages, ids, hasMore, loaded}
  open: null,
  // Positions in the session's event buffer. The poll loop reads on from
  // `cursor`; the users list's counts include every event at or before
  // `countedUpTo` (its cursor) and none after, so only later events change them.
  cursor: null,
  countedUpTo: null,
  needUsers: true, // fetch the users list at the poll loop's next turn
  needReload: false, // the server said reset: users and the open conversation again
  loading: new Set(), // conversations whose first history page is on its way
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

// The newest message from `peer` this tab knows of (0: none).
function newestFrom(peer) {
  const messages = state.convs.get(peer)?.messages || [];
  for (let i = messages.length - 1; i >= 0; i--) {
    if (messages[i].from === peer) return messages[i].id;
  }
  return 0;
}

function renderAll() {
  view.renderUsers(state);
  view.renderTitle(state);
  view.renderHeader(state);
}

// The log is busy while the open conversation's history is on its way.
function settleBusy() {
  view.setBusy(Boolean(state.open && state.loading.has(state.open)));
}

// A 401 anywhere means the session is gone (logged out, idle, token refused).
function checkSession(res) {
  if (res.status === 401) {
    go("/login");
    throw new Error("not logged in");
  }
  return res;
}

// Only the poll loop calls this, between polls: the list and the events the
// loop reads are then in one order, and `countedUpTo` says where they meet.
async function loadUsers() {
  const res = checkSession(await api("GET", "/api/users"));
  if (!res.ok) throw new NetworkError(res.data?.message);
  state.users = new Map(res.data.users.map((u) => [u.username, u]));
  state.countedUpTo = res.data.cursor;
  if (state.cursor === null) state.cursor = res.data.cursor;
  state.needUsers = false;
  renderAll();
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

function narrow() {
  return window.matchMedia("(max-width: 720px)").matches;
}

async function markRead(name) {
  const c = state.convs.get(name);
  const newest = c?.messages.at(-1);
  const user = state.users.get(name);
  if (!newest || !visible()) return;
  if (user && user.unread !== 0) {
    user.unread = 0;
    view.renderUsers(state);
    view.renderTitle(state);
  }
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
  const c = conv(name);
  if (!c.loaded) state.loading.add(name);
  settleBusy();
  renderAll();
  view.renderMessages(state, { keepBottom: true });
  $("message").focus();
  if (!c.loaded) {
    try {
      const page = await loadHistory(name);
      addMessages(c, page.messages);
      c.hasMore = page.has_more;
      c.loaded = true;
      // Still busy: the thread goes in as a whole, not read out row by row.
      if (state.open === name) view.renderMessages(state, { keepBottom: true });
    } catch (err) {
      if (!(err instanceof NetworkError)) throw err;
      if (state.open === name) {
        view.showSendError("Could not load the conversation; retrying when the server is back.");
      }
      return;
    } finally {
      state.loading.delete(name);
      settleBusy();
    }
    if (state.open !== name) return;
  }
  await markRead(name);
}

function closeConversation() {
  const name = state.open;
  state.open = null;
  settleBusy();
  renderAll();
  view.renderMessages(state);
  view.focusUsers(name);
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
    // Older messages are history, not news: they go in without being read out.
    if (state.open === name && state.convs.get(name) === c) {
      view.renderMessages(state, { quiet: true });
    }
  } catch (err) {
    if (!(err instanceof NetworkError)) throw err;
  } finally {
    c.loadingOlder = false;
  }
}

// -- events from the server ----------------------------------------------------
// `pos` is the event's position in the buffer (undefined: our own send's reply).
// Events at or before `countedUpTo` are already in the users list's counts.
function onMessage(m, pos) {
  const mine = m.from === state.me;
  const peer = mine ? m.to : m.from;
  const added = addMessages(conv(peer), [m]);
  if (peer === state.open && added) view.renderMessages(state, { keepBottom: mine });
  if (mine) return;
  if (peer === state.open && visible()) {
    markRead(peer); // read as it arrives, counted or not
    return;
  }
  if (pos === undefined || pos <= state.countedUpTo) return;
  const user = state.users.get(peer);
  if (user) user.unread += 1;
  else state.needUsers = true; // someone new: the list will count it
}

function onRead(ev, pos) {
  // Another tab or window (or this one: every tab hears of every marker) read.
  if (pos <= state.countedUpTo) return;
  const user = state.users.get(ev.with);
  if (!user) {
    state.needUsers = true;
    return;
  }
  if (user.unread === 0) return; // a marker only ever lowers the count
  // Read up to the newest message we know of from them: all read. (Every newer
  // one would have reached us before this event.) Otherwise only the server
  // can say how many are left.
  const newest = newestFrom(ev.with);
  if (newest > 0 && ev.up_to >= newest) user.unread = 0;
  else state.needUsers = true;
}

function onPresence(ev, pos) {
  if (pos <= state.countedUpTo) return;
  const user = state.users.get(ev.username);
  if (user) user.online = ev.online;
  else state.needUsers = true; // someone new registered
}

function onEvents(events, from) {
  // Buffer cursors are consecutive: event i of a reply sits at from + i + 1.
  let usersChanged = false;
  for (const [i, ev] of events.entries()) {
    const pos = from + i + 1;
    if (ev.type === "message") onMessage(ev.message, pos);
    else if (ev.type === "presence") onPresence(ev, pos);
    else if (ev.type === "read") onRead(ev, pos);
    else continue;
    usersChanged = true;
  }
  if (usersChanged) renderAll();
}

async function reload() {
  // After a reset: start again from what the server holds now. What we knew
  // of other conversations may have gaps; they load again when opened.
  await loadUsers();
  const open = state.open;
  let page = null;
  if (open) {
    state.loading.add(open);
    settleBusy();
    try {
      page = await loadHistory(open);
    } finally {
      state.loading.delete(open);
      settleBusy();
    }
  }
  state.convs = new Map();
  if (open) {
    const c = conv(open);
    addMessages(c, page.messages);
    c.hasMore = page.has_more;
    c.loaded = true;
  }
  // Another conversation opened meanwhile: its page may predate the reset.
  state.needReload = state.open !== open;
  view.renderMessages(state, { rebuild: true }); // busy while rebuilt (view.js)
  renderAll();
  if (state.open) markRead(state.open);
}

// The one loop that talks to the event buffer: list refreshes happen here too,
// between polls, so every event is counted by the list or by us, never both.
async function pollLoop() {
  let backoff = 250;
  for (;;) {
    let res = null;
    try {
      if (state.needReload) await reload();
      else if (state.needUsers) await loadUsers();
      const q = new URLSearchParams({ cursor: String(state.cursor) });
      if (longpoll) q.set("wait_ms", String(LONGPOLL_WAIT_MS));
      res = checkSession(await api("GET", `/api/poll?${q}`));
    } catch (err) {
      if (!(err instanceof NetworkError)) throw err;
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
      // Read on from the fresh position; the next turn reloads before polling.
      state.cursor = res.data.cursor;
      state.needReload = true;
      continue;
    }
    const from = state.cursor;
    state.cursor = res.data.cursor;
    onEvents(res.data.events, from);
    if (!longpoll && res.data.events.length === 0 && !state.needUsers) {
      await sleep(POLL_INTERVAL_MS);
    }
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
$("back").addEventListener("click", closeConversation);
$("logout").addEventListener("click", async () => {
  try {
    await api("POST", "/api/logout", {});
  } catch (err) {
    if (!(err instanceof NetworkError)) throw err;
  }
  go("/login");
});
view.bindUsers(openConversation);
document.addEventListener("visibilitychange", () => {
  if (visible() && state.open) markRead(state.open);
});
// Esc goes back to the people list, as in the desktop client: at phone width
// (one column) the conversation closes; side by side it stays open.
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape" || event.isComposing || event.defaultPrevented || !state.open) return;
  event.preventDefault();
  if (narrow()) closeConversation();
  else view.focusUsers(state.open);
});

view.paintAvatar($("me-avatar"), state.me);
pollLoop();
