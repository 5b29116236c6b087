// Add: register an avatar from a photo or a video, with upload progress and the quality report.
import { get, imageUrl, upload } from "./api.js";
import { $ } from "./dom.js";
import { t } from "./i18n.js";
import { clearProblem, showError, showProblem } from "./notice.js";

const JOB_POLL_MS = 1000;
// A job still unfinished after this is not coming back (the supervisor gives up after
// REGISTER_TIMEOUT, 300 s by default; a queued job nobody runs would wait forever).
const JOB_FOLLOW_MS = 15 * 60 * 1000;
const SHOWN_METRICS = ["face_px", "face_fraction", "brightness", "sharpness", "yaw_degrees", "clipped", "frames",
                       "frames_with_face"];

let settings = { max_upload_bytes: Infinity, tts_models: [] };
let onTalk = () => {};

function progress(fraction, text) {
  $("progress").hidden = false;
  if (fraction === null) $("progress-bar").removeAttribute("value");  // indeterminate: the server works
  else $("progress-bar").value = fraction;
  $("progress-text").textContent = text;
}

// The record of a registered avatar, or a refusal's reasons, as a report.
function report({ title, reasons = [], metrics = {}, preview = null, name = null }) {
  $("report").hidden = false;
  $("report-title").textContent = title;
  $("report-reasons").replaceChildren(...reasons.map((reason) => {
    const li = document.createElement("li");
    li.dir = "ltr";
    li.textContent = reason;
    return li;
  }));
  $("report-metrics").tBodies[0].replaceChildren(...SHOWN_METRICS.filter((k) => metrics[k] != null).map((k) => {
    const row = document.createElement("tr");
    const label = document.createElement("th");
    label.textContent = t(`metric.${k}`);
    const value = document.createElement("td");
    value.textContent = metrics[k];
    row.append(label, value);
    return row;
  }));
  const img = $("report-preview");
  img.hidden = !preview;
  if (preview) imageUrl(preview).then((url) => { img.src = url; }).catch(() => { img.hidden = true; });
  $("report-talk").hidden = !name;
  $("report-talk").onclick = () => onTalk(name);
}

function registered(record) {
  $("progress").hidden = true;
  const verdict = record.quality.verdict;
  report({
    title: `${t("add.done", { name: record.name, seconds: record.processing_seconds.toFixed(1) })} `
      + t(verdict === "good" ? "add.good" : "add.fair"),
    reasons: record.quality.reasons, metrics: record.quality.metrics, preview: record.preview_url, name: record.name,
  });
}

function refused(error) {
  $("progress").hidden = true;
  const body = error.body || {};
  if (error.status === 422) {
    report({ title: t("add.refused"), reasons: body.reasons || [error.message], metrics: body.metrics || {} });
  } else {
    showError(error);
  }
}

// A registration that outlived REGISTER_WAIT answered 202: follow its job until it ends.
async function follow(job) {
  const deadline = Date.now() + JOB_FOLLOW_MS;
  while (Date.now() < deadline) {
    progress(null, t(job.state === "queued" ? "add.queued" : "add.preparing"));
    await new Promise((resolve) => setTimeout(resolve, JOB_POLL_MS));
    const answer = await get(job.status_url);  // a refusal throws here, with the registration's reasons
    if (!answer.data || !answer.data.job_id) return answer.data;
    job = { ...job, state: answer.data.state };
  }
  throw Object.assign(new Error(t("error.timeout")), { status: 0 });  // status 0: the message is translated
}

async function submit(event) {
  event.preventDefault();
  clearProblem();
  $("report").hidden = true;
  const form = new FormData($("register"));
  const file = form.get("file");
  if (file.size > settings.max_upload_bytes) {
    return showProblem(t("add.too_big", { size: (file.size / 1048576).toFixed(1),
                                          limit: (settings.max_upload_bytes / 1048576).toFixed(0) }));
  }
  $("upload").disabled = true;
  try {
    progress(0, t("add.uploading", { percent: 0 }));
    const answer = await upload("/avatar/register", form, (fraction) => {
      if (fraction < 1) progress(fraction, t("add.uploading", { percent: Math.round(fraction * 100) }));
      else progress(null, t("add.preparing"));
    });
    registered(answer.status === 202 ? await follow(answer.body.data) : answer.body.data);
    $("register").reset();
  } catch (error) {
    refused(error);
  } finally {
    $("upload").disabled = false;
  }
}

export function init(consoleSettings, talkTo) {
  settings = consoleSettings;
  onTalk = talkTo;
  $("voice").append(...settings.tts_models.map((model) => new Option(model, model)));
  $("register").addEventListener("submit", submit);
}
