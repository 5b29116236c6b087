// The conversation as captions, oldest first: what the person said or typed (data-role=user) and
// what the avatar says (data-role=avatar), built from the session's events. A line is
// data-final=false while it can still change: the recogniser's running guess, which the final
// words replace, or a chat reply still streaming. Each line takes its direction from its own text.
import { t } from "./i18n.js";

const words = (line) => line.querySelector(".words");

export class Conversation {
  constructor(list) {
    this.list = list;
    this.clear();
  }

  clear() {
    this.list.replaceChildren();
    this.hearing = null;    // the line of what the person is saying now
    this.awaiting = [];     // lines of speech that ended, oldest first, waiting for their final words
    this.reply = null;      // the chat reply being streamed
    this.unspoken = [];     // avatar lines not yet heard to their end
  }

  line(role, text, final) {
    const line = document.createElement("li");
    line.dir = "auto";
    line.dataset.role = role;
    const span = document.createElement("span");
    span.className = "words";
    line.append(span);
    this.list.append(line);
    this.write(line, text, final);
    if (role === "avatar") this.unspoken.push(line);
    return line;
  }

  write(line, text, final) {
    words(line).textContent = text;
    line.dataset.final = String(final);
    this.list.scrollTop = this.list.scrollHeight;  // the newest line in view
  }

  typed(text) {
    this.reply = null;  // the answer to it goes on a line of its own
    return this.line("user", text, true);
  }

  // One event of the session, named as the worker names it.
  event(name, data) {
    HANDLERS[name]?.call(this, data);
  }

  // Speech began: its line, empty ("…") until the recogniser has a guess.
  listening() {
    this.hearing = this.line("user", "", false);
  }

  // The recogniser's running guess: of the speech going on, else of the last that ended.
  guessed(text) {
    if (!this.hearing && !this.awaiting.length) this.listening();
    this.write(this.hearing ?? this.awaiting.at(-1), text, false);
  }

  // Speech ended; too short to be a turn (ignored), it gets no words and no answer.
  ended(ignored) {
    if (this.hearing && !ignored) this.awaiting.push(this.hearing);
    else this.hearing?.remove();
    this.hearing = null;
  }

  // The final words come in the order the speech ended; nothing recognised, nothing is answered.
  understood(text) {
    const line = this.awaiting.shift();
    if (!text) return line?.remove();
    this.write(line ?? this.line("user", "", false), text, true);
    this.reply = null;
  }

  answering(delta) {
    this.reply ??= this.line("avatar", "", false);
    this.write(this.reply, words(this.reply).textContent + delta, false);
  }

  answered(text) {
    this.reply ??= this.line("avatar", "", false);
    this.write(this.reply, text || words(this.reply).textContent, true);  // the whole reply, as spoken
    this.reply = null;
  }

  // The avatar fell silent: what it had still to say is over, heard to the end or cut off.
  silent(interrupted) {
    for (const line of this.unspoken) {
      line.dataset.final = "true";
      if (interrupted) cut(line);
    }
    this.unspoken = [];
    this.reply = null;
  }

  // Speech that will get no final words (its recognition failed, or the session is over) leaves
  // no line, and the next final words go to the next speech.
  unheard() {
    for (const line of [this.hearing, ...this.awaiting]) line?.remove();
    this.hearing = null;
    this.awaiting = [];
  }

  // The session is over: nothing more of it will be heard or said.
  hangUp() {
    this.unheard();
    this.silent(false);
  }
}

function cut(line) {
  line.dataset.interrupted = "true";
  const mark = document.createElement("small");
  mark.className = "cut";
  mark.dataset.i18n = "captions.interrupted";  // translated again when the language changes
  mark.textContent = t("captions.interrupted");
  line.append(mark);
}

const HANDLERS = {
  speech_started() { this.listening(); },
  transcript_partial(data) { this.guessed(data.text); },
  speech_ended(data) { this.ended(data.ignored); },
  transcript(data) { this.understood(data.text.trim()); },
  error() { this.unheard(); },  // the recogniser failed (talk.js shows why)
  reply(data) { this.answering(data.delta); },
  reply_end(data) { this.answered(data.text); },
  // A chat reply is shown as it streams (reply); a repeated text when its speech begins.
  text(data) { if (data.kind !== "chat" && data.text) this.line("avatar", data.text, true); },
  speaking_ended(data) { this.silent(data.interrupted); },
};
