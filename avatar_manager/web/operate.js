// Operate: every instance, the GPUs and the voice servers as the manager sees them, refreshed
// every two seconds while this view is open; stop, restart and disconnect one instance.
import { get, post } from "./api.js";
import { $, badge } from "./dom.js";
import { t } from "./i18n.js";
import { showError } from "./notice.js";

const REFRESH_MS = 2000;
let timer = null;
let refreshing = false;

function duration(seconds) {
  const s = Math.floor(seconds || 0);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}

function cell(content, className = "") {
  const td = document.createElement("td");
  if (className) td.className = className;
  if (content instanceof Node) td.append(content);
  else td.textContent = content ?? "—";
  return td;
}

function button(label, action, instance, danger = false) {
  const b = document.createElement("button");
  b.type = "button";
  b.dataset.action = action;
  b.textContent = t(label);
  if (danger) b.className = "danger";
  b.addEventListener("click", () => act(action, instance, b.closest("tr")));
  return b;
}

async function act(action, instance, row) {
  const name = instance.real_avatar_name;
  if (action === "stop" && instance.connections > 0
      && !confirm(t("operate.confirm_stop", { name, n: instance.connections }))) return;
  row.querySelectorAll("button").forEach((b) => { b.disabled = true; });
  try {
    if (action === "stop") await post("/avatar/stop", { avatar_id: name, force: true });
    else if (action === "restart") await post("/avatar/restart", { avatar_id: name });
    else await post("/avatar/disconnect", { avatar_name: name });
  } catch (error) {
    showError(error);
  }
  refresh();
}

function instanceRow(instance) {
  const row = document.createElement("tr");
  row.dataset.avatar = instance.real_avatar_name;
  const buttons = document.createElement("span");
  const disconnect = button("btn.disconnect", "disconnect", instance);
  disconnect.disabled = instance.connections === 0;
  buttons.append(disconnect, " ", button("btn.restart", "restart", instance), " ",
                 button("btn.stop", "stop", instance, true));
  row.append(
    cell(instance.real_avatar_name), cell(badge(instance.state, instance.state)), cell(instance.port),
    cell(instance.gpu < 0 ? t("cpu") : instance.gpu), cell(instance.connections),
    cell(instance.running ? duration(instance.uptime_seconds) : "—"), cell(instance.restarts),
    cell(instance.error, "error"), cell(buttons, "buttons"));
  return row;
}

function gpuLine(gpu) {
  const line = document.createElement("div");
  line.className = "gpu";
  const label = document.createElement("div");
  label.textContent = t("operate.gpu", { index: gpu.index, name: gpu.name, used: gpu.used_mb, total: gpu.total_mb,
                                         reserved: gpu.reserved_mb, instances: gpu.instances });
  const meter = document.createElement("meter");
  meter.max = gpu.total_mb;
  meter.value = gpu.used_mb + gpu.reserved_mb;
  meter.high = gpu.total_mb * 0.9;
  line.append(label, meter);
  return line;
}

function ttsRow(server) {
  const row = document.createElement("tr");
  row.dataset.model = server.model;
  row.append(cell(server.model), cell(server.port),
             cell(badge(t(server.running ? "tts.up" : "tts.down"), server.running ? "up" : "")),
             cell(server.running ? duration(server.uptime_seconds) : "—"));
  return row;
}

async function refresh() {
  if (refreshing) return;
  refreshing = true;
  try {
    const [status, tts] = await Promise.all([get("/status"), get("/tts")]);
    const { manager, gpu, gpu_note: why } = status.data;
    $("summary").textContent = t("operate.summary", {
      running: manager.running, max: manager.max, connections: manager.total_connections,
      supervisor: manager.supervisor || t("operate.no_supervisor"),
    });
    $("instances").tBodies[0].replaceChildren(...manager.avatars.map(instanceRow));
    $("no-instances").hidden = manager.avatars.length > 0;
    $("gpus").replaceChildren(...(gpu.length ? gpu.map(gpuLine) : [document.createTextNode(t("operate.no_gpu", { why }))]));
    $("tts").tBodies[0].replaceChildren(...tts.data.map(ttsRow));
    $("updated").textContent = new Date().toLocaleTimeString();
  } catch (error) {
    showError(error);
  } finally {
    refreshing = false;
  }
}

export function start() {
  refresh();
  clearInterval(timer);
  timer = setInterval(() => document.visibilityState === "visible" && refresh(), REFRESH_MS);
}

export function stop() {
  clearInterval(timer);
  timer = null;
}
