// The one place problems are shown: a translated headline, and the server's own words under Details.
import { t } from "./i18n.js";

const box = document.getElementById("notice");
const title = document.getElementById("notice-title");
const details = document.getElementById("notice-details");

export function showProblem(headline, detail = "") {
  title.textContent = headline;
  details.querySelector("pre").textContent = detail;
  details.hidden = !detail || detail === headline;
  box.hidden = false;
}

// An ApiError from api.js, explained: what it means for the person, then what the server said.
export function showError(error) {
  const message = error.message || String(error);
  let key = "error.other";
  if (error.status === 0) key = null;                          // already a translated sentence
  else if (error.status === 401) key = "token.wrong";
  else if (error.status === 404) key = "error.missing";
  else if (error.status === 429) key = "error.full";
  else if (error.body?.reason === "capacity") key = "error.capacity";
  else if (error.body?.reason === "start_failed") key = "error.worker";
  showProblem(key ? t(key) : message, key ? message : "");
}

export function clearProblem() {
  box.hidden = true;
}

document.getElementById("notice-close").addEventListener("click", clearProblem);
