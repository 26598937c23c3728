// Rendering: state in, DOM out. This file draws the messages and the notices;
// the sidebar, the title and the header are sidebar.js, the small helpers
// dom.js, both re-exported here so the page has one view to call.
//
// The message list is updated in place rather than rebuilt: it is an aria-live
// log, so a screen reader announces exactly the rows that are added.
import { $, el, hue, paintAvatar, parseKey, setText } from "./dom.js";
import { mentionRanges } from "./mentions.js";

export * from "./dom.js";
export * from "./sidebar.js";

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
