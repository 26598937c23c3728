// Where the chat page's events come from (docs/protocol.md#websocket-push): one
// poll-shaped reply ({cursor, events, reset?}) at a time, whatever the way.
//
//   ws        GET /api/ws?cursor=N pushes a reply per batch (the default)
//   longpoll  GET /api/poll?cursor=N&wait_ms=25000, held until there is news
//   poll      GET /api/poll?cursor=N every 100 ms
//
// The page pulls: `await events.next(cursor)` gives the next reply, or null
// when there is none to give yet (woken, or a failed request: call again). A
// socket's frames wait in a queue until then, so nothing is applied while the
// page is between replies (refreshing a list, say); a reconnect reads on from
// the last frame received, queued or not. Fallbacks last for the page's life:
// a socket that never opens (twice) gives long-poll, held polls that a proxy
// keeps cutting while plain ones work give polling.
import { api, go, NetworkError, sleep } from "./api.js";

export const TRANSPORTS = ["ws", "longpoll", "poll"];
const POLL_INTERVAL_MS = 100; // the polling contract of the product
const LONGPOLL_WAIT_MS = 25000;
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 2000;
const FAILED_OPENS = 2; // sockets that never opened before falling back to long-poll
const CUT_POLLS = 3; // held polls cut (plain ones working) before falling back to polling

// Close codes of GET /api/ws.
const TOO_SLOW = 1013; // reconnect at once with the last cursor: nothing is lost
const LOGGED_OUT = 4401; // the session ended: as a 401 from the API
const ABANDONED = 1006; // as the browser reports a connection that died
const SILENT_MS = 60000; // the server sends a frame at least every 25 s

const NAMES = { ws: "WebSocket push", longpoll: "long-poll", poll: "polling every 100 ms" };

// The transport asked for: ?transport= in the page URL, then the old
// ?longpoll=1, then the server's setting on the page (data-transport, or the
// older data-longpoll), else ws.
export function chosenTransport() {
  const params = new URLSearchParams(window.location.search);
  const body = document.body.dataset;
  let mode = "ws";
  if (TRANSPORTS.includes(params.get("transport"))) mode = params.get("transport");
  else if (params.get("longpoll") === "1") mode = "longpoll";
  else if (TRANSPORTS.includes(body.transport)) mode = body.transport;
  else if (body.longpoll === "1") mode = "longpoll";
  if (mode === "ws" && typeof WebSocket !== "function") mode = "longpoll";
  return mode;
}

export class EventStream {
  // `onDown(true)`: show "reconnecting" (the events or the page's lists cannot be had).
  constructor(mode, { onDown = () => {} } = {}) {
    this.onDown = onDown;
    this.down = { events: false, lists: false };
    this.backoff = BACKOFF_MIN_MS;
    this.waiter = null; // resolves the pending next() (with null: go round)
    this.stopped = false;
    // ws
    this.queue = []; // replies received and not yet taken
    this.socket = null;
    this.reconnecting = null; // the timer of the next connect()
    this.cursor = null; // the last reply received: where a new socket starts
    this.everOpened = false;
    this.failedOpens = 0;
    // poll and longpoll
    this.idle = false; // the last poll had nothing: wait before the next one
    this.cuts = 0; // held polls cut short in a row, each followed by a working plain one
    this.plainNext = false; // a held poll was cut: see whether a plain one works
    this.use(mode);
  }

  use(mode, why = "") {
    this.mode = mode;
    document.body.dataset.activeTransport = mode;
    console.info(`chat: events by ${NAMES[mode]}${why ? ` (${why})` : ""}`);
  }

  // The next reply after `cursor` (the last one the page applied), or null.
  async next(cursor) {
    if (this.stopped) return new Promise(() => {}); // on the way to the login page
    if (this.queue.length > 0) return this.queue.shift();
    if (this.mode === "ws") {
      if (this.cursor === null) this.cursor = cursor;
      if (!this.socket && !this.reconnecting) this.connect();
      return this.wait();
    }
    return this.poll(cursor);
  }

  // Make a pending or coming next() return (null) now, e.g. a list is wanted.
  wake() {
    this.idle = false;
    this.release(null);
  }

  wait() {
    return new Promise((resolve) => {
      this.waiter = resolve;
    });
  }

  release(reply) {
    const waiter = this.waiter;
    this.waiter = null;
    if (waiter) waiter(reply);
    return Boolean(waiter);
  }

  health(ok) {
    if (ok) this.backoff = BACKOFF_MIN_MS;
    this.setDown("events", !ok);
  }

  // `what`: "events" (ours) or "lists" (the page's list requests).
  setDown(what, value) {
    if (this.down[what] === value) return;
    this.down[what] = value;
    this.onDown(this.down.events || this.down.lists);
  }

  loggedOut() {
    this.stopped = true;
    go("/login");
  }

  // -- ws ---------------------------------------------------------------------------
  connect() {
    this.reconnecting = null;
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${window.location.host}/api/ws?cursor=${this.cursor}`;
    const socket = new WebSocket(url);
    this.socket = socket;
    let opened = false;
    // The server sends a frame at least every 25 s; silence for longer means a dead
    // connection the browser may not notice for hours: drop it and reconnect.
    let watchdog = null;
    const watch = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => {
        // A close handshake cannot finish on a dead connection: do not wait for it.
        socket.onclose = null;
        socket.onmessage = null;
        socket.close();
        if (this.socket === socket) this.socket = null;
        this.closed(ABANDONED, true);
      }, SILENT_MS);
    };
    socket.onopen = () => {
      opened = true;
      this.everOpened = true;
      this.failedOpens = 0;
      watch();
    };
    socket.onmessage = (event) => {
      watch();
      let reply;
      try {
        reply = JSON.parse(event.data);
      } catch {
        socket.close(); // not ours to read: start again from the last good one
        return;
      }
      this.cursor = reply.cursor;
      this.health(true);
      if (!this.release(reply)) this.queue.push(reply);
    };
    socket.onclose = (event) => {
      clearTimeout(watchdog);
      if (this.socket === socket) this.socket = null;
      this.closed(event.code, opened);
    };
  }

  closed(code, opened) {
    if (this.stopped) return;
    if (code === LOGGED_OUT) {
      this.loggedOut();
      return;
    }
    if (!opened && !this.everOpened && ++this.failedOpens >= FAILED_OPENS) {
      // A proxy that refuses upgrades, say: long-poll from the last reply received.
      this.use("longpoll", "the WebSocket could not be opened");
      this.release(null);
      return;
    }
    if (code === TOO_SLOW) {
      this.reconnectIn(0);
      return;
    }
    if (opened || this.everOpened) this.health(false); // not before a first fallback
    if (!opened && this.everOpened) this.checkSession();
    this.reconnectIn(this.backoff);
    this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
  }

  // A refused upgrade does not say why: a 401 (the session ended while the
  // socket was down) must not be retried forever. A plain poll tells.
  async checkSession() {
    try {
      const res = await api("GET", `/api/poll?${new URLSearchParams({ cursor: this.cursor })}`);
      if (res.status === 401 && !this.stopped) {
        clearTimeout(this.reconnecting);
        this.loggedOut();
      }
    } catch (err) {
      if (!(err instanceof NetworkError)) throw err;
    }
  }

  reconnectIn(ms) {
    this.reconnecting = setTimeout(() => this.connect(), ms);
  }

  // -- poll and longpoll ------------------------------------------------------------
  async poll(cursor) {
    if (this.mode === "poll" && this.idle) {
      // The interval, cut short by wake().
      const woken = await Promise.race([sleep(POLL_INTERVAL_MS).then(() => false), this.wait()]);
      this.waiter = null;
      if (woken === null) return null;
    }
    const held = this.mode === "longpoll" && !this.plainNext;
    const q = new URLSearchParams({ cursor: String(cursor) });
    if (held) q.set("wait_ms", String(LONGPOLL_WAIT_MS));
    let res = null;
    try {
      res = await api("GET", `/api/poll?${q}`);
    } catch (err) {
      if (!(err instanceof NetworkError)) throw err;
    }
    if (res?.status === 401) {
      this.loggedOut();
      return new Promise(() => {});
    }
    if (!res?.ok) return this.pollFailed(held, res);
    if (this.plainNext) {
      // The held poll failed and a plain one right after worked: something cuts held ones.
      this.plainNext = false;
      if (++this.cuts >= CUT_POLLS) this.use("poll", "held polls keep being cut short");
    } else if (held) this.cuts = 0;
    this.health(true);
    this.idle = res.data.events.length === 0 && !res.data.reset;
    return res.data;
  }

  async pollFailed(held, res) {
    // Cut on the way (no reply, or a proxy's bad gateway or timeout): try a plain poll at once.
    const cut = !res || res.status === 502 || res.status === 504;
    if (held && cut) {
      this.plainNext = true;
      return null;
    }
    this.plainNext = false; // the server itself is unreachable: not a proxy's doing
    this.health(false);
    await sleep(this.backoff);
    this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
    return null;
  }
}
