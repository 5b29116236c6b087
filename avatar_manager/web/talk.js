// Talk: pick an avatar, start it, see and hear it over WebRTC, make it speak, read its replies.
// Signalling goes through the manager's relay (/avatar/NAME/offer ...), so only the manager's port
// must be reachable; the media flows straight from the worker. The relayed offer starts the avatar
// when needed and counts this page as one connection for as long as its WebRTC session lives: the
// page gives it back by closing the peer (on leaving, or when the page goes away).
import { events, get, imageUrl, post } from "./api.js";
import { $, badge } from "./dom.js";
import { t } from "./i18n.js";
import { clearProblem, showError, showProblem } from "./notice.js";

const video = $("video");
const GATHER_TIMEOUT_MS = 5000;    // ICE candidates of the local machine; a browser has them in ms
const FOLLOW_RETRY_MS = 2000;      // the event stream broke (a manager restart): open it again after this
const previews = new Map();        // avatar name -> object URL of its preview

// From /console/config; connect_timeout: the worker's own WEBRTC_CONNECT_TIMEOUT, after which a
// peer that is still not connected is taken to be blocked by the network.
let settings = { chat: false, ice_servers: [], connect_timeout: 30 };
let current = null;  // the avatar on stage: {name, pc, sessionid, watchdog, connected, captions, reply}
let level = null;    // the audio meter: {context, timer}

function setConnection(state) {
  $("connection").dataset.state = state;
  $("connection").textContent = t(`state.${state}`);
  const live = state === "connected";
  for (const id of ["text", "speak", "interrupt"]) $(id).disabled = !live;
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

export function open(name) {
  if (current) leave();
  current = { name, pc: null, sessionid: null, watchdog: null, connected: false, captions: null, reply: null };
  $("gallery").hidden = true;
  $("gallery-empty").hidden = true;
  $("stage").hidden = false;
  $("avatar-name").textContent = name;
  $("transcript").replaceChildren();
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
  Object.assign(attempt, { connected: false, sessionid: null });  // a second try after a failure
  clearProblem();
  startMeter();  // inside the click, where a browser lets audio start
  setConnection("starting");
  try {
    const pc = attempt.pc = new RTCPeerConnection({ iceServers: settings.ice_servers });
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    pc.addEventListener("track", (event) => attempt === current && show(event.track));
    pc.addEventListener("connectionstatechange", () => attempt === current && changed(attempt));
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);  // aiortc does not trickle: the offer carries every candidate
    // Starts the avatar if it is not running (a cold start takes seconds).
    const answer = await relay(attempt, "offer", { sdp: pc.localDescription.sdp, type: pc.localDescription.type });
    if (attempt !== current || !attempt.pc) return release(attempt);
    attempt.sessionid = answer.sessionid;
    setConnection("connecting");
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    follow(attempt);
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
  if (track.kind === "audio") listen(track);
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
  attempt.captions?.abort();
  attempt.captions = null;
  attempt.reply = null;
  if (attempt.pc) {
    attempt.pc.close();
    attempt.pc = null;
  }
  if (attempt === current) {
    video.srcObject = null;
    $("unmute").hidden = true;
    stopMeter();
  }
}

function leave() {
  if (!current) return;
  release(current);
  setConnection("closed");
  current = null;
}

// --- speaking ----------------------------------------------------------------------------------

async function say(event) {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text || !current || current.sessionid === null) return;
  const type = $("mode").value;
  try {
    await relay(current, "human", { sessionid: current.sessionid, text, type, interrupt: true });
    current.reply = null;  // what the avatar answers now goes on a line of its own
    transcribe(text, "said");
    $("text").value = "";
  } catch (error) {
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

// --- captions: the avatar's chat replies as text, from the worker's relayed event stream -------------

// A line at the top of the transcript; dir="auto" (and the CSS) set its direction from its text.
function transcribe(text, kind) {
  const line = document.createElement("li");
  line.dir = "auto";
  line.className = kind;
  line.textContent = text;
  $("transcript").prepend(line);
  return line;
}

function caption(attempt, name, data) {
  if (name === "reply" && data.delta) {
    if (!attempt.reply) attempt.reply = transcribe("", "reply");
    attempt.reply.textContent += data.delta;
  } else if (name === "reply_end") {
    if (!attempt.reply) attempt.reply = transcribe("", "reply");
    if (data.text) attempt.reply.textContent = data.text;  // the whole reply, as spoken
    attempt.reply = null;
  }
}

// Follows this session's events for as long as it is on stage, opening the stream again if it breaks.
async function follow(attempt) {
  const controller = attempt.captions = new AbortController();
  const path = `/avatar/${encodeURIComponent(attempt.name)}/sse?sessionid=${attempt.sessionid}`;
  while (!controller.signal.aborted) {
    try {
      await events(path, (name, data) => caption(attempt, name, data), controller.signal);
    } catch {
      // Captions are an extra: the avatar still speaks without them.
    }
    if (controller.signal.aborted) return;
    await new Promise((resolve) => setTimeout(resolve, FOLLOW_RETRY_MS));
  }
}

// --- the audio level, so a person sees the avatar is speaking even with the sound off ------------

function startMeter() {
  if (!level) level = { context: new AudioContext(), timer: null, value: 0 };
  level.context.resume().catch(() => {});
}

function listen(track) {
  if (!level) return;
  const analyser = level.context.createAnalyser();
  analyser.fftSize = 2048;
  level.context.createMediaStreamSource(new MediaStream([track])).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  clearInterval(level.timer);
  level.timer = setInterval(() => {
    analyser.getFloatTimeDomainData(samples);
    const rms = Math.sqrt(samples.reduce((sum, s) => sum + s * s, 0) / samples.length);
    level.value = Math.max(Math.min(1, rms * 4), level.value * 0.8);  // fast up, slow down
    $("level").value = level.value;
  }, 100);
}

function stopMeter() {
  if (level) {
    clearInterval(level.timer);
    level.value = 0;
  }
  $("level").value = 0;
}

function labelChat() {
  const chat = $("mode").querySelector("option[value=chat]");
  chat.disabled = !settings.chat;
  chat.title = settings.chat ? "" : t("talk.chat_off");
}

export function init(consoleSettings) {
  settings = consoleSettings;
  labelChat();
  $("say").addEventListener("submit", say);
  $("interrupt").addEventListener("click", interrupt);
  $("connect").addEventListener("click", connect);
  $("leave").addEventListener("click", leave);
  $("back").addEventListener("click", () => showGallery());
  $("unmute").addEventListener("click", () => {
    video.muted = false;
    startMeter();
    $("unmute").hidden = true;
  });
  window.addEventListener("pagehide", () => current && release(current));
  document.addEventListener("languagechange", () => {
    labelChat();
    if (current) setConnection($("connection").dataset.state);
  });
}
