// The chat page's state: what the server said (lists with their counts, each
// conversation's messages) and where in the event stream it stands. Only
// chat.js changes it; view.js and dialogs.js read it to draw.
import { parseKey } from "./dom.js";

export const state = {
  me: document.body.dataset.username,
  users: new Map(), // name -> {username, online, unread}, as the server counted them
  rooms: new Map(), // name -> {name, private, members, joined, unread, mentions}, likewise
  convs: new Map(), // conversation key ("u:Bob", "r:general") -> {messages, ids, hasMore, loaded}
  open: null, // the open conversation's key
  // Positions in the session's event buffer. The event loop reads on from
  // `cursor`; each list's counts include every event at or before its cursor
  // (`countedUpTo` for people, `roomsCountedUpTo` for rooms) and none after,
  // so only later events change them.
  cursor: null,
  countedUpTo: null,
  roomsCountedUpTo: null,
  needUsers: true, // fetch the users list at the event loop's next turn
  needRooms: true, // the rooms list, likewise
  needReload: false, // the server said reset: the lists and the open conversation again
  loading: new Set(), // conversations whose first history page is on its way
  readSent: new Map(), // key -> highest up_to sent
};

export function conv(key) {
  let c = state.convs.get(key);
  if (!c) {
    c = { messages: [], ids: new Set(), hasMore: false, loaded: false, loadingOlder: false };
    state.convs.set(key, c);
  }
  return c;
}

export function addMessages(c, messages) {
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

// The newest message from someone else in a conversation this tab knows of (0: none).
export function newestFromOthers(key) {
  const messages = state.convs.get(key)?.messages || [];
  for (let i = messages.length - 1; i >= 0; i--) {
    if (messages[i].from !== state.me) return messages[i].id;
  }
  return 0;
}

// What a conversation's unread count lives in: a user or a joined room.
export function counted(key) {
  const [kind, name] = parseKey(key);
  if (kind === "room") {
    const room = state.rooms.get(name);
    return room?.joined ? room : null;
  }
  return state.users.get(name) || null;
}

// A buffer cursor is `epoch * 2**32 + seq`, the epoch one per buffer (app/buffer.py).
export const EPOCH = 2 ** 32;

// Where a list's counts meet our events. A list from another buffer than our
// events' (several web apps behind a balancer without affinity each hold a
// copy of the session) was counted about now: count what comes after our
// cursor. (Comparing positions of two buffers would drop or double events.)
export function countedAt(listCursor) {
  if (state.cursor === null) return listCursor;
  return Math.floor(listCursor / EPOCH) === Math.floor(state.cursor / EPOCH)
    ? listCursor
    : state.cursor;
}
