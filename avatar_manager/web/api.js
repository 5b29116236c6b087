// Every call to the manager goes through here: the API token when one is set, a timeout, and the
// server's own message on failure. The manager answers {status, message, data}; the relayed worker
// routes answer {code, msg, ...}.
import { t } from "./i18n.js";

const TOKEN_KEY = "avatar-console-token";

class ApiError extends Error {
  constructor(status, message, body = null) {
    super(message);
    this.status = status;   // 0: no answer at all
    this.body = body;
  }
}

export function setToken(token) {
  localStorage.setItem(TOKEN_KEY, token);
}

function headers(extra = {}) {
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function send(method, path, body, timeout) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeout);
  const json = body !== undefined && !(body instanceof FormData);
  try {
    return await fetch(path, {
      method, signal: controller.signal,
      headers: headers(json ? { "Content-Type": "application/json" } : {}),
      body: json ? JSON.stringify(body) : body,
    });
  } catch (error) {
    throw new ApiError(0, t(error.name === "AbortError" ? "error.timeout" : "error.network"));
  } finally {
    clearTimeout(timer);
  }
}

// A refusal, with the server's message; a 401 also makes the page ask for the token.
function refusal(status, statusText, body) {
  if (status === 401) document.dispatchEvent(new CustomEvent("unauthorized"));
  return new ApiError(status, (body && (body.message || body.msg)) || statusText, body);
}

async function answer(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON: the status says enough */ }
  if (!response.ok || (body && body.code !== undefined && body.code !== 0)) {
    throw refusal(response.status, response.statusText, body);
  }
  return body;
}

export async function get(path, { timeout = 15000 } = {}) {
  return answer(await send("GET", path, undefined, timeout));
}

// A start waits for the worker (STARTUP_TIMEOUT, 60 s by default) and a registration for its result.
export async function post(path, body = {}, { timeout = 90000 } = {}) {
  return answer(await send("POST", path, body, timeout));
}

// An image the API serves (it may need the token, which an <img src> cannot send).
export async function imageUrl(path) {
  const response = await send("GET", path, undefined, 15000);
  if (!response.ok) throw refusal(response.status, response.statusText, null);
  return URL.createObjectURL(await response.blob());
}

// A multipart upload with progress (fetch cannot report upload progress; XMLHttpRequest can).
export function upload(path, form, onProgress, { timeout = 600000 } = {}) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", path);
    request.timeout = timeout;
    for (const [name, value] of Object.entries(headers())) request.setRequestHeader(name, value);
    request.upload.onprogress = (event) => event.lengthComputable && onProgress(event.loaded / event.total);
    request.upload.onload = () => onProgress(1);
    request.onload = () => {
      let body = null;
      try { body = JSON.parse(request.responseText); } catch { /* not JSON */ }
      if (request.status >= 400) {
        reject(refusal(request.status, request.statusText, body));
      } else {
        resolve({ status: request.status, body });
      }
    };
    request.onerror = () => reject(new ApiError(0, t("error.network")));
    request.ontimeout = () => reject(new ApiError(0, t("error.timeout")));
    request.send(form);
  });
}
