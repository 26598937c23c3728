// The chat page: events, lists, sending. Its state lives in state.js, rendering
// in view.js, the room dialogs in dialogs.js, the ways events arrive (WebSocket,
// long-poll, poll) in transport.js. Every chat rule (unread and mention counts,
// presence, validation) is the server's; this file keeps what the server said
// and applies the events that came after it.
import { api, checkSession, go, NetworkError, newId, Refused, refusal, sleep } from "./api.js";
import * as dialogs from "./dialogs.js";
import { mentions } from "./mentions.js";
import { addMessages, conv, counted, countedAt, newestFromOthers, state } from "./state.js";
import { chosenTransport, EventStream } from "./transport.js";
import * as view from "./view.js";

const HISTORY_PAGE = 50;
const SEND_RETRY_MS = 30000; // give up a send after this long unreachable

const { userKey, roomKey, parseKey } = view;

const $ = (id) => document.getElementById(id);

function renderAll() {
  view.renderSidebar(state);
  view.renderTitle(state);
  view.renderHeader(state);
  dialogs.refresh();
}

// The log is busy while the open conversation's history is on its way.
function settleBusy() {
  view.setBusy(Boolean(state.open && state.loading.has(state.open)));
}

// Only the event loop calls this, between replies: the list and the events the
// loop applies are then in one order, and `countedUpTo` says where they meet.
async function loadUsers() {
  const res = checkSession(await api("GET", "/api/users"));
  if (!res.ok) throw new NetworkError(res.data?.message);
  state.users = new Map(res.data.users.map((u) => [u.username, u]));
  state.countedUpTo = countedAt(res.data.cursor);
  if (state.cursor === null) state.cursor = res.data.cursor;
  state.needUsers = false;
  renderAll();
}

// The same for the rooms list (docs/protocol.md#rooms): its cursor is exact too.
async function loadRooms() {
  const res = checkSession(await api("GET", "/api/rooms"));
  if (!res.ok) throw new NetworkError(res.data?.message);
  state.rooms = new Map(res.data.rooms.map((r) => [r.name, r]));
  state.roomsCountedUpTo = countedAt(res.data.cursor);
  if (state.cursor === null) state.cursor = res.data.cursor;
  state.needRooms = false;
  // Rooms left meanwhile (in another tab, say): forget what we had of them.
  for (const key of [...state.convs.keys()]) {
    const [kind, name] = parseKey(key);
    if (kind === "room" && !state.rooms.get(name)?.joined) forgetRoom(name);
  }
  renderAll();
}

async function loadHistory(key, before) {
  const [kind, name] = parseKey(key);
  const q = new URLSearchParams({ limit: String(HISTORY_PAGE) });
  q.set(kind === "room" ? "room" : "with", name);
  if (before !== undefined) q.set("before", String(before));
  const res = checkSession(await api("GET", `/api/history?${q}`));
  if (res.status >= 400 && res.status < 500) throw new Refused(refusal(res));
  if (!res.ok) throw new NetworkError(res.data?.message);
  return res.data;
}

function visible() {
  return document.visibilityState === "visible";
}

function narrow() {
  return window.matchMedia("(max-width: 720px)").matches;
}

async function markRead(key) {
  const c = state.convs.get(key);
  const newest = c?.messages.at(-1);
  const entry = counted(key);
  if (!newest || !visible()) return;
  if (entry && (entry.unread !== 0 || entry.mentions)) {
    entry.unread = 0;
    if (entry.mentions) entry.mentions = 0;
    view.renderSidebar(state);
    view.renderTitle(state);
  }
  if ((state.readSent.get(key) || 0) >= newest.id) return;
  state.readSent.set(key, newest.id);
  const [kind, name] = parseKey(key);
  const body = { [kind === "room" ? "room" : "with"]: name, up_to: newest.id };
  try {
    checkSession(await api("POST", "/api/read", body));
  } catch (err) {
    state.readSent.delete(key); // try again at the next chance
    if (!(err instanceof NetworkError)) throw err;
  }
}

async function openConversation(key) {
  const [kind, name] = parseKey(key);
  if (kind === "room" && !state.rooms.get(name)?.joined) return;
  state.open = key;
  view.showSendError("");
  const c = conv(key);
  if (!c.loaded) state.loading.add(key);
  settleBusy();
  renderAll();
  view.renderMessages(state, { keepBottom: true });
  $("message").focus();
  if (!c.loaded) {
    try {
      const page = await loadHistory(key);
      addMessages(c, page.messages);
      c.hasMore = page.has_more;
      c.loaded = true;
      // Still busy: the thread goes in as a whole, not read out row by row.
      if (state.open === key) view.renderMessages(state, { keepBottom: true });
    } catch (err) {
      if (!(err instanceof NetworkError) && !(err instanceof Refused)) throw err;
      if (state.open === key) {
        const later = "Could not load the conversation; retrying when the server is back.";
        view.showSendError(err instanceof Refused ? err.message : later);
      }
      return;
    } finally {
      state.loading.delete(key);
      settleBusy();
    }
    if (state.open !== key) return;
  }
  await markRead(key);
}

// `focus`: move the focus to the sidebar (not when the page closes it by itself
// and the focus is elsewhere).
function closeConversation({ focus = true } = {}) {
  const key = state.open;
  const inside = document.activeElement?.closest?.(".conversation");
  state.open = null;
  settleBusy();
  renderAll();
  view.renderMessages(state);
  if (focus || inside) view.focusSidebar(key);
}

async function loadOlder() {
  const key = state.open;
  const c = key && state.convs.get(key);
  if (!c || !c.hasMore || c.loadingOlder || c.messages.length === 0) return;
  c.loadingOlder = true;
  try {
    const page = await loadHistory(key, c.messages[0].id);
    addMessages(c, page.messages);
    c.hasMore = page.has_more;
    // Older messages are history, not news: they go in without being read out.
    if (state.open === key && state.convs.get(key) === c) {
      view.renderMessages(state, { quiet: true });
    }
  } catch (err) {
    if (!(err instanceof NetworkError) && !(err instanceof Refused)) throw err;
  } finally {
    c.loadingOlder = false;
  }
}

// We are no longer in a room: its messages and markers are not ours to keep
// (a later join starts from a new marker), and it cannot stay open.
function forgetRoom(name) {
  const key = roomKey(name);
  state.convs.delete(key);
  state.readSent.delete(key);
  state.loading.delete(key);
  if (state.open === key) closeConversation({ focus: false });
}

// A room as the server sees it for us now (a `room` event or a reply).
function applyRoom(room) {
  if (room.private && !room.joined) state.rooms.delete(room.name); // it no longer exists for us
  else state.rooms.set(room.name, { ...room });
  if (!room.joined) forgetRoom(room.name);
}

// -- events from the server ----------------------------------------------------
// `pos` is the event's position in the buffer (undefined: our own send's reply).
// Events at or before a list's cursor are already in that list's counts.
function onMessage(m, pos) {
  const mine = m.from === state.me;
  const inRoom = m.room !== undefined;
  const key = inRoom ? roomKey(m.room) : userKey(mine ? m.to : m.from);
  const added = addMessages(conv(key), [m]);
  if (key === state.open && added) view.renderMessages(state, { keepBottom: mine });
  if (mine) return;
  if (key === state.open && visible()) {
    markRead(key); // read as it arrives, counted or not
    return;
  }
  if (inRoom) {
    if (pos === undefined || pos <= state.roomsCountedUpTo) return;
    const room = state.rooms.get(m.room);
    if (!room?.joined) {
      state.needRooms = true; // a room we do not know yet: the list will count it
      return;
    }
    room.unread += 1;
    if (mentions(m.text, state.me)) room.mentions += 1;
    return;
  }
  if (pos === undefined || pos <= state.countedUpTo) return;
  const user = state.users.get(m.from);
  if (user) user.unread += 1;
  else state.needUsers = true; // someone new: the list will count it
}

function onRead(ev, pos) {
  // Another tab or window (or this one: every tab hears of every marker) read.
  const inRoom = ev.room !== undefined;
  if (pos <= (inRoom ? state.roomsCountedUpTo : state.countedUpTo)) return;
  const key = inRoom ? roomKey(ev.room) : userKey(ev.with);
  const entry = counted(key);
  if (!entry) {
    if (inRoom) state.needRooms = true;
    else state.needUsers = true;
    return;
  }
  if (entry.unread === 0 && !entry.mentions) return; // a marker only ever lowers the counts
  // Read up to the newest message we know of from the others: all read.
  // (Every newer one would have reached us before this event.) Otherwise
  // only the server can say how many are left.
  const newest = newestFromOthers(key);
  if (newest > 0 && ev.up_to >= newest) {
    entry.unread = 0;
    if (inRoom) entry.mentions = 0;
  } else if (inRoom) state.needRooms = true;
  else state.needUsers = true;
}

function onPresence(ev, pos) {
  if (pos <= state.countedUpTo) return;
  const user = state.users.get(ev.username);
  if (user) user.online = ev.online;
  else state.needUsers = true; // someone new registered
}

// A room we newly see or whose membership (ours) changed: the core's view of
// it at that moment, counts included.
function onRoom(ev, pos) {
  if (pos <= state.roomsCountedUpTo) return;
  applyRoom(ev.room);
}

// Someone joined or left a room we are in (or we left it).
function onMember(ev, pos) {
  dialogs.memberChanged(ev);
  // Our own membership comes with a `room` event holding the whole view.
  if (pos <= state.roomsCountedUpTo || ev.username === state.me) return;
  const room = state.rooms.get(ev.room);
  if (room) room.members = Math.max(0, room.members + (ev.joined ? 1 : -1));
}

const HANDLERS = {
  message: (ev, pos) => onMessage(ev.message, pos),
  presence: onPresence,
  read: onRead,
  room: onRoom,
  member: onMember,
};

function onEvents(events, from) {
  // Buffer cursors are consecutive: event i of a reply sits at from + i + 1.
  let changed = false;
  for (const [i, ev] of events.entries()) {
    const handle = HANDLERS[ev.type];
    if (!handle) continue;
    handle(ev, from + i + 1);
    changed = true;
  }
  if (changed) renderAll();
}

async function reload() {
  // After a reset: start again from what the server holds now. What we knew
  // of other conversations may have gaps; they load again when opened.
  await loadUsers();
  await loadRooms(); // closes a room we are no longer in
  const open = state.open;
  let page = null;
  if (open) {
    state.loading.add(open);
    settleBusy();
    try {
      page = await loadHistory(open);
    } catch (err) {
      if (!(err instanceof Refused)) throw err;
    } finally {
      state.loading.delete(open);
      settleBusy();
    }
  }
  state.convs = new Map();
  state.readSent = new Map();
  if (open && page) {
    const c = conv(open);
    addMessages(c, page.messages);
    c.hasMore = page.has_more;
    c.loaded = true;
  }
  // Another conversation opened meanwhile: its page may predate the reset.
  state.needReload = state.open !== open;
  if (open && !page && state.open === open) closeConversation({ focus: false });
  view.renderMessages(state, { rebuild: true }); // busy while rebuilt (view.js)
  renderAll();
  dialogs.reload();
  if (state.open) markRead(state.open);
}

// The one loop that talks to the event buffer, whatever the transport: list
// refreshes happen here too, between replies (a socket's frames wait meanwhile,
// transport.js), so every event is counted by a list or by us, never both.
async function eventLoop() {
  let backoff = 250;
  for (;;) {
    try {
      if (state.needReload) await reload();
      else {
        if (state.needUsers) await loadUsers();
        if (state.needRooms) await loadRooms();
      }
    } catch (err) {
      if (!(err instanceof NetworkError)) throw err;
      events.setDown("lists", true);
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 2000);
      continue;
    }
    backoff = 250;
    events.setDown("lists", false);
    const reply = await events.next(state.cursor);
    if (reply) applyReply(reply);
  }
}

// A poll-shaped reply ({cursor, events, reset?}), from any transport.
function applyReply(reply) {
  if (reply.reset) {
    // Read on from the fresh position; the next turn reloads first.
    state.cursor = reply.cursor;
    state.needReload = true;
    return;
  }
  const from = state.cursor;
  state.cursor = reply.cursor;
  onEvents(reply.events, from);
}

const events = new EventStream(chosenTransport(), { onDown: view.showBanner });

// -- rooms: what the dialogs ask for ------------------------------------------------
// Each resolves to null when done, else a sentence to show.
async function request(method, path, body) {
  try {
    return checkSession(await api(method, path, body));
  } catch (err) {
    if (!(err instanceof NetworkError)) throw err;
    return null;
  }
}

const roomPath = (name) => `/api/rooms/${encodeURIComponent(name)}`;

// A room from a reply: taken only if the events have not told us already (they
// are the later word; both are the core's view).
function adoptRoom(room) {
  if (!state.rooms.get(room.name)?.joined) applyRoom(room);
  renderAll();
}

const roomActions = {
  open: (key) => openConversation(key),
  refreshRooms() {
    state.needRooms = true;
    events.wake();
  },
  async createRoom(name, isPrivate, members) {
    const res = await request("POST", "/api/rooms", { room: name, private: isPrivate, members });
    if (!res?.ok) return refusal(res);
    adoptRoom(res.data.room);
    return null;
  },
  async joinRoom(name) {
    const res = await request("POST", `${roomPath(name)}/join`, {});
    if (!res?.ok) return refusal(res);
    adoptRoom(res.data.room);
    return null;
  },
  async leaveRoom(name) {
    const res = await request("POST", `${roomPath(name)}/leave`, {});
    if (!res?.ok && res?.status !== 403) return refusal(res); // 403: not in it any more
    const room = state.rooms.get(name);
    if (room?.joined) {
      const members = Math.max(0, room.members - 1);
      applyRoom({ ...room, joined: false, unread: 0, mentions: 0, members });
    }
    renderAll();
    return null;
  },
  async addMember(name, username) {
    const res = await request("POST", `${roomPath(name)}/members`, { username });
    return res?.ok ? null : refusal(res);
  },
  async fetchMembers(name) {
    const res = await request("GET", `${roomPath(name)}/members`);
    if (!res?.ok) return { error: refusal(res) };
    return { names: res.data.members.map((m) => m.username) };
  },
};

// -- sending -------------------------------------------------------------------------
let sending = false;

async function send() {
  const box = $("message");
  const text = box.value;
  const key = state.open;
  if (!key || text === "" || sending) return;
  const [kind, name] = parseKey(key);
  sending = true;
  $("send").disabled = true;
  view.showSendError("");
  // One id for every retry of this message, so the server stores it once.
  const body = { [kind === "room" ? "room" : "to"]: name, text, client_msg_id: newId() };
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
$("back").addEventListener("click", () => closeConversation());
$("logout").addEventListener("click", async () => {
  try {
    await api("POST", "/api/logout", {});
  } catch (err) {
    if (!(err instanceof NetworkError)) throw err;
  }
  go("/login");
});
view.bindSidebar({
  onOpen: openConversation,
  onNewRoom: (button) => dialogs.openRoomDialog("create", button),
  onBrowse: (button) => dialogs.openRoomDialog("browse", button),
});
dialogs.setup(state, roomActions);
document.addEventListener("visibilitychange", () => {
  if (visible() && state.open) markRead(state.open);
});
// Esc goes back to the sidebar, as in the desktop client: at phone width (one
// column) the conversation closes; side by side it stays open. In a dialog,
// Esc closes the dialog (the browser does that) and nothing else.
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape" || event.isComposing || event.defaultPrevented || !state.open) return;
  if (dialogs.anyOpen()) return;
  event.preventDefault();
  if (narrow()) closeConversation();
  else view.focusSidebar(state.open);
});

view.paintAvatar($("me-avatar"), state.me);
eventLoop();
