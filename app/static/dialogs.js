// The room dialogs: a new room, browsing public rooms to join, a room's members
// (and adding one), leaving a room. Each is a native <dialog> opened with
// showModal(): the focus moves in and stays in, Esc closes it, and the focus
// goes back to the button that opened it. Names go in as text, never as HTML.
//
// The requests themselves are chat.js's (`actions`); this file asks and shows.
import * as view from "./view.js";

const $ = (id) => document.getElementById(id);
const { el, setText } = view;

// docs/protocol.md#rooms: 1-40 of a-z 0-9 - _, starting with a letter or digit.
const ROOM_NAME = /^[a-z0-9][a-z0-9_-]{0,39}$/;

let state = null;
let actions = null;

// -- opening and closing --------------------------------------------------------------
const returnTo = new Map(); // dialog -> the element to focus when it closes

function open(dialog, opener) {
  returnTo.set(dialog, opener || document.activeElement);
  for (const node of dialog.querySelectorAll(".form-error")) node.hidden = true;
  dialog.showModal();
}

// Close `dialog`; `restore: false` when the caller moves the focus itself.
export function close(dialog, { restore = true } = {}) {
  if (!restore) returnTo.delete(dialog);
  if (dialog.open) dialog.close();
}

function onClosed(dialog) {
  const back = returnTo.get(dialog);
  returnTo.delete(dialog);
  if (back?.isConnected && !back.disabled && back.offsetParent !== null) back.focus();
  else if (back) view.focusSidebar(state.open);
}

function showError(id, text) {
  const node = $(id);
  setText(node, text || "");
  node.hidden = !text;
}

function busy(button, on) {
  button.disabled = on;
}

// -- new room -------------------------------------------------------------------------------
function openCreate(opener) {
  const form = $("create-form");
  form.reset();
  $("room-name").removeAttribute("aria-invalid");
  const list = $("create-members");
  const names = [...state.users.keys()].sort((a, b) => a.localeCompare(b));
  list.replaceChildren(
    ...names.map((name) => {
      const li = el("li");
      const label = el("label", "check");
      const box = el("input");
      box.type = "checkbox";
      box.name = "members";
      box.value = name;
      label.append(box, document.createTextNode(` ${name}`));
      li.append(label);
      return li;
    }),
  );
  if (names.length === 0) list.append(el("li", "dialog-lead", "Nobody else is registered yet."));
  open($("create-dialog"), opener);
}

async function submitCreate(event) {
  event.preventDefault();
  const input = $("room-name");
  const name = input.value.trim().toLowerCase();
  if (!ROOM_NAME.test(name)) {
    input.setAttribute("aria-invalid", "true");
    const rule = "Room names are 1–40 characters: a–z, 0–9, - and _, starting with a letter or digit.";
    showError("create-error", name ? rule : "Give the room a name.");
    input.focus();
    return;
  }
  input.removeAttribute("aria-invalid");
  const members = [...$("create-members").querySelectorAll("input:checked")].map((b) => b.value);
  const button = $("create-submit");
  busy(button, true);
  showError("create-error", "");
  try {
    const error = await actions.createRoom(name, $("room-private").checked, members);
    if (error) {
      showError("create-error", error);
      if (/name|exists/i.test(error)) {
        input.setAttribute("aria-invalid", "true");
        input.focus();
      }
      return;
    }
    close($("create-dialog"), { restore: false });
    actions.open(view.roomKey(name));
  } finally {
    busy(button, false);
  }
}

// -- browse ---------------------------------------------------------------------------------
let browseShown = null; // what the list shows, to rebuild it only when it changed

function renderBrowse() {
  const rooms = view.joinableRooms(state);
  const summary = JSON.stringify(rooms.map((r) => [r.name, r.members]));
  if (summary === browseShown) return;
  browseShown = summary;
  const list = $("browse-list");
  const focused = document.activeElement?.closest?.("#browse-list [data-room]")?.dataset.room;
  list.replaceChildren(
    ...rooms.map((room) => {
      const li = el("li", "browse-item");
      const mark = el("span", "room-mark");
      mark.setAttribute("aria-hidden", "true");
      mark.append(view.icon("hash"));
      const info = el("span", "browse-info");
      info.append(el("span", "room-name", room.name));
      info.append(el("span", "browse-meta", members(room.members)));
      const join = el("button", "btn-primary btn-small", "Join");
      join.type = "button";
      join.dataset.room = room.name;
      join.append(el("span", "visually-hidden", ` ${room.name}`));
      li.append(mark, info, join);
      return li;
    }),
  );
  $("browse-empty").hidden = rooms.length > 0;
  if (focused) {
    const again = [...list.querySelectorAll("[data-room]")].find((b) => b.dataset.room === focused);
    (again || $("browse-dialog").querySelector("[data-close]")).focus();
  }
}

function members(n) {
  return `${n} ${n === 1 ? "member" : "members"}`;
}

function openBrowse(opener) {
  browseShown = null;
  renderBrowse();
  actions.refreshRooms(); // member counts of rooms we are not in are not sent to us live
  open($("browse-dialog"), opener);
  $("browse-list").querySelector("button")?.focus(); // the first Join, if any
}

async function join(button) {
  const name = button.dataset.room;
  busy(button, true);
  showError("browse-error", "");
  try {
    const error = await actions.joinRoom(name);
    if (error) {
      showError("browse-error", error);
      return;
    }
    close($("browse-dialog"), { restore: false });
    actions.open(view.roomKey(name));
  } finally {
    busy(button, false);
  }
}

// -- members -----------------------------------------------------------------------------------
// The open members dialog: its room, the member names (null while they load),
// and the `member` events that came while they were on their way (replayed on
// top of the list, so the newest word on each member wins).
const roster = { room: null, names: null, pending: [], shown: null };

async function openMembers(room, opener) {
  roster.room = room;
  roster.names = null;
  roster.pending = [];
  roster.shown = null;
  setText($("members-room"), `#${room}`);
  showError("members-error", "");
  renderMembers();
  open($("members-dialog"), opener);
  await loadMembers();
}

async function loadMembers() {
  const room = roster.room;
  roster.names = null;
  roster.pending = [];
  const { names, error } = await actions.fetchMembers(room);
  if (roster.room !== room) return;
  if (error) {
    showError("members-error", error);
    setText($("members-status"), "");
    return;
  }
  roster.names = new Set(names);
  for (const ev of roster.pending) applyMember(ev);
  roster.pending = [];
  renderMembers();
}

function applyMember(ev) {
  if (ev.joined) roster.names.add(ev.username);
  else roster.names.delete(ev.username);
}

function online(name) {
  return name === state.me || Boolean(state.users.get(name)?.online);
}

function renderMembers() {
  if (!roster.room) return;
  const list = $("members-list");
  const names = roster.names ? [...roster.names].sort((a, b) => a.localeCompare(b)) : [];
  const summary = roster.names ? JSON.stringify(names.map((n) => [n, online(n)])) : "loading";
  if (summary !== roster.shown) {
    roster.shown = summary;
    list.setAttribute("aria-busy", roster.names ? "false" : "true");
    list.replaceChildren(
      ...names.map((name) => {
        const li = el("li", "member");
        const avatar = el("span", "avatar");
        avatar.setAttribute("aria-hidden", "true");
        view.paintAvatar(avatar, name);
        const dot = el("span", online(name) ? "dot online" : "dot");
        avatar.append(dot);
        li.append(avatar, el("span", "member-name", name === state.me ? `${name} (you)` : name));
        li.append(el("span", "visually-hidden", online(name) ? ", online" : ", offline"));
        return li;
      }),
    );
    setText($("members-status"), roster.names ? members(names.length) : "Loading members…");
  }
  // Who can be added: everyone registered who is not in yet.
  const select = $("add-who");
  const outside = [...state.users.keys()].filter((n) => !roster.names?.has(n));
  outside.sort((a, b) => a.localeCompare(b));
  const current = [...select.options].map((o) => o.value).join("\n");
  if (current !== outside.join("\n") || (outside.length === 0 && select.options.length === 0)) {
    const chosen = select.value;
    select.replaceChildren(
      ...outside.map((name) => {
        const option = el("option", "", name);
        option.value = name;
        return option;
      }),
    );
    if (outside.length === 0) {
      const none = el("option", "", roster.names ? "Everyone is in this room" : "…");
      none.value = "";
      select.append(none);
    }
    if (outside.includes(chosen)) select.value = chosen;
  }
  const canAdd = Boolean(roster.names) && outside.length > 0;
  select.disabled = !canAdd;
  $("add-submit").disabled = !canAdd;
}

async function submitAdd(event) {
  event.preventDefault();
  const who = $("add-who").value;
  const room = roster.room;
  if (!who || !room) return;
  const button = $("add-submit");
  busy(button, true);
  showError("members-error", "");
  try {
    const error = await actions.addMember(room, who);
    if (error) {
      showError("members-error", error);
      return;
    }
    if (roster.room === room && roster.names) roster.names.add(who);
    renderMembers();
    setText($("members-status"), `${who} was added. ${members(roster.names?.size || 0)}`);
  } finally {
    busy(button, false);
    renderMembers();
    if ($("add-who").disabled) $("members-dialog").querySelector("[data-close]").focus();
    else $("add-who").focus();
  }
}

// A `member` event: someone joined or left a room (us too).
export function memberChanged(ev) {
  if (!$("members-dialog").open || roster.room !== ev.room) return;
  if (ev.username === state.me && !ev.joined) {
    close($("members-dialog"));
    return;
  }
  if (roster.names === null) roster.pending.push(ev);
  else applyMember(ev);
}

// -- leave -----------------------------------------------------------------------------------
let leaving = null;

function openLeave(room, opener) {
  leaving = room;
  const info = state.rooms.get(room);
  setText($("leave-room"), `#${room}`);
  setText(
    $("leave-text"),
    info?.private
      ? "It is private: only one of its members can add you back."
      : "You can join it again from Browse rooms.",
  );
  showError("leave-error", "");
  open($("leave-dialog"), opener);
}

async function confirmLeave() {
  const room = leaving;
  const button = $("leave-confirm");
  busy(button, true);
  try {
    const error = await actions.leaveRoom(room);
    if (error) {
      showError("leave-error", error);
      return;
    }
    close($("leave-dialog"), { restore: false });
    view.focusSidebar(null);
  } finally {
    busy(button, false);
  }
}

// -- wiring ------------------------------------------------------------------------------------
// After any change of state: the open dialogs follow.
export function refresh() {
  if ($("browse-dialog").open) renderBrowse();
  if ($("members-dialog").open) {
    if (!state.rooms.get(roster.room)?.joined) close($("members-dialog"));
    else renderMembers();
  }
  if ($("leave-dialog").open && !state.rooms.get(leaving)?.joined) close($("leave-dialog"));
}

// After a reset: what the members dialog shows may have gaps.
export function reload() {
  if ($("members-dialog").open) loadMembers();
}

export function openRoomDialog(which, opener) {
  const [kind, name] = view.parseKey(state.open);
  if (which === "create") openCreate(opener);
  else if (which === "browse") openBrowse(opener);
  else if (kind === "room" && which === "members") openMembers(name, opener);
  else if (kind === "room" && which === "leave") openLeave(name, opener);
}

export function anyOpen() {
  return Boolean(document.querySelector("dialog[open]"));
}

export function setup(chatState, chatActions) {
  state = chatState;
  actions = chatActions;
  for (const dialog of document.querySelectorAll("dialog")) {
    dialog.addEventListener("close", () => onClosed(dialog));
    dialog.addEventListener("click", (event) => {
      if (event.target.closest("[data-close]")) close(dialog);
    });
  }
  $("create-form").addEventListener("submit", submitCreate);
  $("room-name").addEventListener("input", () => $("room-name").removeAttribute("aria-invalid"));
  $("browse-list").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-room]");
    if (button) join(button);
  });
  $("add-form").addEventListener("submit", submitAdd);
  $("leave-confirm").addEventListener("click", confirmLeave);
  $("members-button").addEventListener("click", (e) => openRoomDialog("members", e.currentTarget));
  $("leave-button").addEventListener("click", (e) => openRoomDialog("leave", e.currentTarget));
}
