// The console's only way to the gateway: its public HTTP API, with the token in the
// Authorization header. The token lives in sessionStorage (this tab, until logout or the tab
// closes), never in a URL: URLs end up in logs, history and Referer headers.

const TOKEN_KEY = "cstagate.token";
const ROLE_KEY = "cstagate.role";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** "admin" or "tenant" (what GET /v1/pbx said at login), or null when logged out. */
export function role() {
  return token() ? sessionStorage.getItem(ROLE_KEY) : null;
}

export function forget() {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(ROLE_KEY);
}

/** A refusal of the API: its status and its JSON `error` message (or the status text). */
export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function errorOf(resp) {
  let msg = resp.statusText || "request failed";
  let code;
  try {
    const body = await resp.json();
    if (body && typeof body.error === "string") msg = body.error;
    if (body && typeof body.code === "string") code = body.code;
  } catch (_) { /* not JSON: keep the status text */ }
  return new ApiError(resp.status, msg, code);
}

function headers(tok, json) {
  const h = { "Accept": "application/json", "Authorization": "Bearer " + tok };
  if (json) h["Content-Type"] = "application/json";
  return h;
}

/** A query string of the non-empty values of `params`. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && String(v).trim() !== "") q.set(k, String(v).trim());
  }
  const s = q.toString();
  return s ? "?" + s : "";
}

/** One path segment, percent-encoded. */
export function seg(s) {
  return encodeURIComponent(String(s));
}

/** `method path` with the stored token (or `tok`); the parsed JSON body, null for 204. */
export async function call(method, path, body, tok) {
  const t = tok || token();
  if (!t) throw new ApiError(401, "not logged in");
  const resp = await fetch(path, {
    method,
    headers: headers(t, body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  });
  if (!resp.ok) throw await errorOf(resp);
  if (resp.status === 204) return null;
  return resp.json();
}

/**
 * Log in: check the token against the API and remember it. The admin token may read
 * GET /v1/pbx (200); a tenant's is known (403 "admin token required") but not the admin's;
 * anything else is refused with the API's own message (401 "missing or wrong bearer token").
 */
export async function login(tok) {
  let r;
  try {
    await call("GET", "/v1/pbx", undefined, tok);
    r = "admin";
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 403) throw e;
    r = "tenant";
  }
  sessionStorage.setItem(TOKEN_KEY, tok);
  sessionStorage.setItem(ROLE_KEY, r);
  return r;
}

/**
 * Follow a server-sent event stream with the token in the header. EventSource cannot send
 * headers (and a token in its URL is what we refuse to do), so this reads the response body
 * as a stream and parses text/event-stream itself: `onData` gets each event's data (its
 * `data:` lines joined by newlines), `onOpen` is called once the gateway accepted. Ends when the stream ends or `signal` aborts.
 */
export async function follow(path, signal, onData, onOpen) {
  const resp = await fetch(path, { headers: { "Accept": "text/event-stream", "Authorization": "Bearer " + token() }, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer", signal });
  if (!resp.ok) throw await errorOf(resp);
  if (onOpen) onOpen();
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    // Bounded: a line longer than 1 MiB without its end is not a stream we follow.
    if (buf.length > 1 << 20) throw new ApiError(0, "event stream line too long");
    let nl;
    while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
      // A CR last in the buffer may be the first half of a CRLF split between chunks.
      if (nl === buf.length - 1 && buf[nl] === "\r") break;
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + (buf.startsWith("\r\n", nl) ? 2 : 1));
      if (line === "") {
        if (data.length) onData(data.join("\n"));
        data = [];
      } else if (line.startsWith("data:")) {
        data.push(line.slice(5).replace(/^ /, ""));
      }
      // `event:`, `id:`, `retry:` and comments (keep-alives) carry nothing we show.
    }
  }
}
