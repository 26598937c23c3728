// The HTTP API (docs/protocol.md#http-api), as small async helpers.
// Every call resolves to {status, ok, data}; only a network failure rejects,
// so callers can tell "server said no" from "server unreachable".

export class NetworkError extends Error {}

export async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin", cache: "no-store" };
  if (body !== undefined) {
    // JSON content type is also what the CSRF check asks of every POST.
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    throw new NetworkError(String(err));
  }
  let data = null;
  if (res.status !== 204) {
    try {
      data = await res.json();
    } catch {
      data = { error: "bad_response", message: `unexpected reply (HTTP ${res.status})` };
    }
  }
  return { status: res.status, ok: res.ok, data };
}

// A client_msg_id: random, so a retried send is recognised by the server.
// crypto.randomUUID needs a secure context; getRandomValues works everywhere.
export function newId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Keep ?transport=… (and any other page option) across login/logout redirects.
export function go(path) {
  window.location.assign(path + window.location.search);
}

export class Refused extends Error {} // the server said no (4xx): retrying will not help

// A 401 anywhere means the session is gone (logged out, idle, token refused).
export function checkSession(res) {
  if (res.status === 401) {
    go("/login");
    throw new Error("not logged in");
  }
  return res;
}

// What a failed request says, for a person.
export function refusal(res) {
  return res?.data?.message || "The server cannot be reached; try again.";
}
