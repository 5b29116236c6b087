// The microphone: hands-free (#mic turns it on and off) or push-to-talk (hold #ptt, or the space
// bar outside text fields). The browser asks for it only when one of them is first pressed. Its
// track goes out on the audio transceiver every offer carries, so no new offer is needed; turning
// it off or letting go only disables the track (silence is sent), which is instant and asks nothing.
import { $ } from "./dom.js";
import { t } from "./i18n.js";
import { follow, wakeAudio } from "./meter.js";
import { showProblem } from "./notice.js";

// The browser's own processing, so the avatar's voice from the speakers is not heard as the
// person's (echo cancellation) and a quiet or distant voice still reaches the recogniser.
const CONSTRAINTS = { audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true } };

let track = null;       // the microphone's track once the browser gave it
let asking = null;      // the pending getUserMedia, so that two presses ask once
let sender = null;      // the RTCRtpSender of the live session's audio, if any
let stopMeter = null;
let handsFree = false;
let held = false;       // #ptt or the space bar is down
let failure = null;     // "refused" or "missing" when the last try got no microphone
let onUse = () => {};

// Whether the person is talking through it now, or has it on.
export function inUse() {
  return Boolean(track) && (handsFree || held);
}

export function attach(audioSender) {
  sender = audioSender;
  if (sender && track) sender.replaceTrack(track).catch(() => {});
}

function state() {
  if (failure) return failure;
  if (handsFree) return "on";
  return held ? "ptt" : "off";
}

function show() {
  const button = $("mic");
  button.dataset.state = state();
  button.textContent = t(`mic.${state()}`);
  button.setAttribute("aria-pressed", String(handsFree));
}

function update() {
  if (track) track.enabled = handsFree || held;
  show();
  if (inUse()) onUse();
}

// Why there is no microphone, in the person's words: NotAllowedError is a "no" (theirs, the
// browser's or a policy's); the rest mean there is none to be had.
function explain(error) {
  if (!navigator.mediaDevices) return ["refused", "mic.insecure"];
  if (error.name === "NotAllowedError" || error.name === "SecurityError") return ["refused", "mic.refused_help"];
  return ["missing", "mic.missing_help"];
}

async function acquire() {
  if (track) return;
  try {
    asking ??= navigator.mediaDevices.getUserMedia(CONSTRAINTS);
    const stream = await asking;
    if (track) return;
    track = stream.getAudioTracks()[0];
    track.addEventListener("ended", () => forget("missing"));  // unplugged, or taken by the system
    stopMeter = follow(track, $("mic-level"));
    failure = null;
    attach(sender);
  } catch (error) {
    const [kind, help] = explain(error);
    failure = kind;
    handsFree = held = false;
    showProblem(t(help), error.message);
  } finally {
    asking = null;
  }
}

function forget(why) {
  stopMeter?.();
  track?.stop();
  track = stopMeter = null;
  handsFree = held = false;
  failure = why;
  show();
}

// Lets the microphone go (the browser's recording indicator goes off): leaving the avatar.
export function stop() {
  forget(null);
}

async function toggle() {
  wakeAudio();
  handsFree = !handsFree;
  if (handsFree) await acquire();
  update();
}

async function press() {
  if (held) return;
  wakeAudio();
  held = true;
  await acquire();
  update();
}

function letGo() {
  if (!held) return;
  held = false;
  update();
}

// Space is push-to-talk except where it types or presses a control of its own.
function spaceIsOurs(event) {
  const target = event.target;
  return event.code === "Space" && !$("stage").hidden && !$("ptt").disabled
    && !target.closest("input, textarea, select, [contenteditable]");
}

// use(): called whenever the microphone starts being used (talk.js checks the session takes speech
// the way the page shows).
export function init(use) {
  onUse = use;
  $("mic").addEventListener("click", toggle);
  const ptt = $("ptt");
  ptt.addEventListener("pointerdown", (event) => { ptt.setPointerCapture(event.pointerId); press(); });
  for (const name of ["pointerup", "pointercancel"]) ptt.addEventListener(name, letGo);
  document.addEventListener("keydown", (event) => {
    if (!spaceIsOurs(event)) return;
    event.preventDefault();  // no page scroll, no click on a focused button
    if (!event.repeat) press();
  });
  document.addEventListener("keyup", (event) => {
    if (event.code !== "Space" || !held) return;
    event.preventDefault();
    letGo();
  });
  window.addEventListener("blur", letGo);  // a key held while the window loses focus never comes up
  document.addEventListener("languagechange", show);
  show();
}
