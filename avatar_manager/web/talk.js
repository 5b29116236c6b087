// Talk: pick an avatar, start it, see and hear it over WebRTC, speak to it (typed, or through the
// microphone), read the conversation. Signalling goes through the manager's relay
// (/avatar/NAME/offer ...), so only the manager's port must be reachable; the media flows straight
// between the browser and the worker, and so do the session's events, on a data channel. The
// relayed offer starts the avatar when needed and counts this page as one connection for as long
// as its WebRTC session lives: the page gives it back by closing the peer (on leaving, or when
// the page goes away).
import { get, imageUrl, post } from "./api.js";
import { Conversation } from "./captions.js";
import { $, badge } from "./dom.js";
import { t } from "./i18n.js";
import { follow, wakeAudio } from "./meter.js";
import * as mic from "./mic.js";
import { clearProblem, showError, showProblem } from "./notice.js";

const video = $("video");
const GATHER_TIMEOUT_MS = 5000;    // ICE candidates of the local machine; a browser has them in ms
const previews = new Map();        // avatar name -> object URL of its preview

// From /console/config; connect_timeout: the worker's own WEBRTC_CONNECT_TIMEOUT, after which a
// peer that is still not connected is taken to be blocked by the network.
let settings = { chat: false, ice_servers: [], connect_timeout: 30 };
let current = null;        // the avatar on stage and one connection to it: see newAttempt()
let conversation = null;   // the captions
let stopVoiceMeter = null;

function setConnection(state) {
  $("connection").dataset.state = state;
  $("connection").textContent = t(`state.${state}`);
  const live = state === "connected";
  for (const id of ["text", "speak", "interrupt", "mic", "ptt"]) $(id).disabled = !live;
  $("connect").hidden = !["idle", "failed", "closed"].includes(state);
  $("leave").hidden = ["idle", "failed", "closed"].includes(state);
}

// --- the gallery -------------------------------------------------------------------------------

function card(record, instance) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "card";
  button.dataset.avatar = record.name;
  const img = document.createElement("img");
  img.alt = record.name;
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = record.name;
  button.append(img, name);
  if (record.description) {
    const about = document.createElement("span");
    about.className = "about";
    about.dir = "auto";
    about.textContent = record.description;
    button.append(about);
  }
  if (instance) {
    button.append(badge(instance.state === "RUNNING" ? t("gallery.running", { n: instance.connections })
      : instance.state, instance.state));
  }
  if (previews.has(record.name)) {
    img.src = previews.get(record.name);
  } else {
    imageUrl(record.preview_url)
      .then((url) => { previews.set(record.name, url); img.src = url; })
      .catch(() => { img.alt = "—"; });
  }
  button.addEventListener("click", () => { open(record.name); connect(); });
  return button;
}

export async function showGallery() {
  if (current) leave();
  $("stage").hidden = true;
  $("gallery").hidden = false;
  let avatars, instances;
  try {
    [avatars, instances] = await Promise.all([get("/avatar/avatars"), get("/avatar/list?all=1")]);  // FAILED ones too, for their badge
  } catch (error) {
    showError(error);
    return;
  }
  const byName = new Map(instances.data.map((i) => [i.real_avatar_name, i]));
  $("gallery").replaceChildren(...avatars.data.map((record) => card(record, byName.get(record.name))));
  $("gallery-empty").hidden = avatars.data.length > 0;
}

// --- one avatar on stage -----------------------------------------------------------------------

// speech: how the session answers what the microphone hears, as its offer said (see speech()).
function newAttempt(name) {
  return { name, pc: null, sessionid: null, watchdog: null, connected: false, speech: null };
}

export function open(name) {
  if (current) leave();
  current = newAttempt(name);
  $("gallery").hidden = true;
  $("gallery-empty").hidden = true;
  $("stage").hidden = false;
  $("avatar-name").textContent = name;
  conversation.clear();
  setConnection("idle");
}

function relay(attempt, path, body) {
  return post(`/avatar/${encodeURIComponent(attempt.name)}/${path}`, body);
}

function gathered(pc) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    const timer = setTimeout(resolve, GATHER_TIMEOUT_MS);  // go on with the candidates we have
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
    });
  });
}

export async function connect() {
  const attempt = current;
  if (!attempt || attempt.pc) return;
  Object.assign(attempt, { connected: false, sessionid: null, speech: speech() });  // or a second try
  clearProblem();
  wakeAudio();  // inside the click, where a browser lets audio start
  setConnection("starting");
  try {
    const pc = attempt.pc = new RTCPeerConnection({ iceServers: settings.ice_servers });
    pc.addTransceiver("video", { direction: "recvonly" });
    // Sending too, with no track until the microphone is first turned on: then no new offer.
    mic.attach(pc.addTransceiver("audio", { direction: "sendrecv" }).sender);
    // The worker sends every event of the session on each channel the page opens.
    pc.createDataChannel("events").addEventListener("message", (event) => attempt === current && heard(event.data));
    pc.addEventListener("track", (event) => attempt === current && show(event.track));
    pc.addEventListener("connectionstatechange", () => attempt === current && changed(attempt));
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);  // aiortc does not trickle: the offer carries every candidate
    // Starts the avatar if it is not running (a cold start takes seconds).
    const answer = await relay(attempt, "offer",
                               { sdp: pc.localDescription.sdp, type: pc.localDescription.type, ...attempt.speech });
    if (attempt !== current || !attempt.pc) return release(attempt);
    attempt.sessionid = answer.sessionid;
    setConnection("connecting");
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    attempt.watchdog = setTimeout(() => {
      if (attempt === current && !attempt.connected) blocked(attempt);
    }, settings.connect_timeout * 1000);
  } catch (error) {
    if (attempt !== current) return release(attempt);
    showError(error);
    setConnection("failed");
    release(attempt);
  }
}

function changed(attempt) {
  const state = attempt.pc.connectionState;
  setConnection(state);
  if (state === "connected") {
    attempt.connected = true;
    clearTimeout(attempt.watchdog);
  } else if (state === "failed") {
    if (!attempt.connected) return blocked(attempt);
    showProblem(t("error.lost"));
    release(attempt);
  }
}

function blocked(attempt) {
  showProblem(t("error.webrtc"));
  setConnection("failed");
  release(attempt);
}

function show(track) {
  if (!video.srcObject) video.srcObject = new MediaStream();
  video.srcObject.addTrack(track);
  if (track.kind === "audio") {
    stopVoiceMeter?.();
    stopVoiceMeter = follow(track, $("level"));
  }
  video.play().catch(() => {
    // No click yet and the browser allows no sound before one: play muted, offer the sound.
    video.muted = true;
    $("unmute").hidden = false;
    video.play().catch(() => {});
  });
}

// Leaves the stage's connection: closing the peer ends the worker's session, and with it the
// connection the manager counted for it.
function release(attempt) {
  clearTimeout(attempt.watchdog);
  if (attempt.pc) {
    attempt.pc.close();
    attempt.pc = null;
  }
  if (attempt === current) {
    video.srcObject = null;
    $("unmute").hidden = true;
    stopVoiceMeter?.();
    stopVoiceMeter = null;
    mic.attach(null);
    conversation.hangUp();
  }
}

function leave() {
  if (!current) return;
  release(current);
  mic.stop();
  setConnection("closed");
  current = null;
}

// --- speech: what the microphone hears is answered by the worker itself --------------------------

// How the session answers speech: the worker takes it with the offer only.
function speech() {
  return { mode: $("mode").value, barge_in: $("barge-in").checked };
}

// When the page shows otherwise than the session does while the microphone is in use, a new
// session takes it, so that speech is answered the way the page says. (Typed text needs none:
// each one carries its own type.)
function matchSpeech() {
  if (!current?.pc || !mic.inUse() || JSON.stringify(speech()) === JSON.stringify(current.speech)) return;
  const name = current.name;
  release(current);
  current = newAttempt(name);
  connect();
}

// One event of the session, from its data channel.
function heard(message) {
  let data;
  try {
    data = JSON.parse(message);
  } catch {
    return;  // not an event: nothing this page knows
  }
  if (data.event === "error") showProblem(t("talk.problem"), data.message);
  conversation.event(data.event, data);
}

// --- speaking ----------------------------------------------------------------------------------

async function say(event) {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text || !current || current.sessionid === null) return;
  const type = $("mode").value;
  const line = conversation.typed(text);  // before the answer's first events can arrive
  try {
    await relay(current, "human", { sessionid: current.sessionid, text, type, interrupt: true });
    $("text").value = "";
  } catch (error) {
    line.remove();
    showError(error);
  }
}

async function interrupt() {
  if (!current || current.sessionid === null) return;
  try {
    await relay(current, "interrupt_talk", { sessionid: current.sessionid });
  } catch (error) {
    showError(error);
  }
}

function labelChat() {
  const chat = $("mode").querySelector("option[value=chat]");
  chat.disabled = !settings.chat;
  chat.title = settings.chat ? "" : t("talk.chat_off");
}

export function init(consoleSettings) {
  settings = consoleSettings;
  conversation = new Conversation($("captions"));
  labelChat();
  $("mode").value = settings.chat ? "chat" : "echo";  // as the worker answers speech by default
  mic.init(matchSpeech);
  for (const id of ["mode", "barge-in"]) $(id).addEventListener("change", matchSpeech);
  $("say").addEventListener("submit", say);
  $("interrupt").addEventListener("click", interrupt);
  $("connect").addEventListener("click", connect);
  $("leave").addEventListener("click", leave);
  $("back").addEventListener("click", () => showGallery());
  $("unmute").addEventListener("click", () => {
    video.muted = false;
    wakeAudio();
    $("unmute").hidden = true;
  });
  window.addEventListener("pagehide", () => current && release(current));
  document.addEventListener("languagechange", () => {
    labelChat();
    if (current) setConnection($("connection").dataset.state);
  });
}
