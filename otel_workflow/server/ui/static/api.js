// Every request of the UI: JSON from /api/*. A 401 sends the browser to the login page (and
// comes back here after it); any other error throws an ApiError with the server's message.

export class ApiError extends Error {
  constructor(message, status, body) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.body = body || null;
  }
}

// Thrown when the page is leaving for /login: callers show nothing.
export class LoginRedirect extends Error {
  constructor() {
    super("login needed");
    this.name = "LoginRedirect";
  }
}

export function loginUrl() {
  return "/login?next=" + encodeURIComponent(location.pathname + location.search);
}

let redirecting = false;

async function answer(response) {
  if (response.status === 401) {
    if (!redirecting) {
      redirecting = true;
      location.assign(loginUrl());
    }
    throw new LoginRedirect();
  }
  const type = response.headers.get("content-type") || "";
  let body = null;
  let text = "";
  if (type.includes("json")) {
    try {
      body = await response.json();
    } catch {
      body = null;
    }
  } else {
    text = await response.text().catch(() => "");
  }
  if (!response.ok) {
    let message = body && typeof body.error === "string" ? body.error : "";
    if (!message) message = text.trim().slice(0, 300) || `${response.status} ${response.statusText}`;
    throw new ApiError(message, response.status, body);
  }
  if (body === null) throw new ApiError("the server did not answer JSON", response.status, null);
  return body;
}

async function send(path, init) {
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin", ...init });
  } catch (error) {
    if (error && error.name === "AbortError") throw error;
    throw new ApiError(`cannot reach the server (${error && error.message ? error.message : error})`, 0, null);
  }
  return answer(response);
}

export function getJSON(path, { signal } = {}) {
  return send(path, { headers: { Accept: "application/json" }, signal });
}

export function postJSON(path, data, { signal } = {}) {
  return send(path, {
    method: "POST",
    headers: { Accept: "application/json", "Content-Type": "application/json" },
    body: JSON.stringify(data),
    signal,
  });
}

// "/api/x" plus a query built from an object (arrays repeat the parameter; empty values left out).
export function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) {
    for (const one of Array.isArray(value) ? value : [value]) {
      if (one !== undefined && one !== null && one !== "") query.append(name, String(one));
    }
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

// True when the error is one the page should not show (the login redirect, an aborted request).
export function isSilent(error) {
  return error instanceof LoginRedirect || (error && error.name === "AbortError");
}
