// The console's start: language, the API token when the manager asks for one, the three views.
//   /#talk (default) · /#operate · /#add
//   /?avatar=NAME            that avatar on stage
//   /?avatar=NAME&autostart=1  ... connected and playing without a click (for embedding)
//   /?lang=fa                the interface in Persian
import * as add from "./add.js";
import { get, setToken } from "./api.js";
import { $ } from "./dom.js";
import { apply, preferred, remember } from "./i18n.js";
import { showError } from "./notice.js";
import * as operate from "./operate.js";
import * as talk from "./talk.js";

const VIEWS = ["talk", "operate", "add"];

function route() {
  const view = VIEWS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "talk";
  document.querySelectorAll("[data-view]").forEach((section) => { section.hidden = section.id !== view; });
  document.querySelectorAll("nav a").forEach((a) => {
    if (a.dataset.tab === view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
  if (view === "operate") operate.start();
  else operate.stop();
  if (view === "talk" && $("stage").hidden) talk.showGallery();
}

function askForToken() {
  $("token-form").hidden = false;
  $("token").focus();
}

async function main() {
  apply(preferred());
  $("language").value = document.documentElement.lang;
  $("language").addEventListener("change", (event) => { remember(event.target.value); apply(event.target.value); });
  document.addEventListener("unauthorized", askForToken);
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken($("token").value);
    location.reload();
  });

  let config;
  try {
    config = (await get("/console/config")).data;
  } catch (error) {
    if (error.status !== 401) showError(error);
    return;
  }
  talk.init(config);
  add.init(config, (name) => {
    location.hash = "#talk";
    talk.open(name);
  });
  const wanted = new URLSearchParams(location.search);
  if (wanted.get("avatar")) {
    talk.open(wanted.get("avatar"));
    if (wanted.get("autostart") === "1") talk.connect();
  }
  window.addEventListener("hashchange", route);
  route();
}

main();
