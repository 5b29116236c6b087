// The interface in English and Persian. Messages from the server (its reasons, a worker's log)
// stay as the server wrote them; they are shown under "Details".
const STRINGS = {
  en: {
    "title": "Avatars",
    "tab.talk": "Talk", "tab.operate": "Operate", "tab.add": "Add",
    "details": "Details", "close": "Close",
    "token.ask": "This manager needs its API token.", "token.save": "Continue",
    "token.wrong": "The API token was refused. Enter it again.",
    "gallery.empty": "No avatars yet. Add one.",
    "gallery.running": "running, {n} connected",
    "talk.placeholder": "Type what the avatar should say", "talk.echo": "Repeat", "talk.chat": "Chat",
    "talk.chat_off": "Chat needs an LLM: set LLM_URL for the manager",
    "talk.speak": "Speak", "talk.connect": "Connect", "talk.interrupt": "Interrupt", "talk.leave": "Disconnect",
    "talk.back": "All avatars", "talk.unmute": "Tap for sound", "talk.problem": "The avatar reports a problem.",
    "mic.off": "Microphone", "mic.on": "Microphone on", "mic.ptt": "Listening…", "mic.refused": "Microphone blocked",
    "mic.missing": "No microphone", "mic.hold": "Hold to talk (Space)", "mic.barge_in": "Interrupt the avatar when I speak",
    "mic.refused_help": "The microphone was not allowed. Allow it for this page in the browser's site settings, then press Microphone again. Typing still works.",
    "mic.missing_help": "No microphone was found. Connect one and press Microphone again. Typing still works.",
    "mic.insecure": "Browsers give the microphone only to pages opened over HTTPS or from localhost. Typing still works.",
    "captions.interrupted": "interrupted",
    "state.idle": "Not connected", "state.starting": "Starting the avatar…", "state.connecting": "Connecting…",
    "state.new": "Connecting…", "state.checking": "Connecting…", "state.connected": "Connected",
    "state.disconnected": "Connection interrupted…", "state.failed": "Connection failed", "state.closed": "Disconnected",
    "error.capacity": "All avatar slots are in use. Try again in a minute, or ask an operator to raise MAX_AVATARS.",
    "error.full": "This avatar has as many viewers as it can take. Try again later.",
    "error.worker": "The avatar could not be started.",
    "error.missing": "There is no avatar by that name.",
    "error.webrtc": "The video could not connect. The network may block WebRTC (UDP); a TURN server (ICE_SERVERS) gets through.",
    "error.lost": "The connection to the avatar was lost.",
    "error.network": "The manager cannot be reached.",
    "error.timeout": "The manager did not answer in time.",
    "error.other": "Something went wrong.",
    "operate.instances": "Instances", "operate.gpus": "GPUs", "operate.tts": "Voice servers",
    "operate.none": "No instance is running.", "operate.updated": "Updated",
    "operate.summary": "{running} running of {max} slots · {connections} connections · supervisor: {supervisor}",
    "operate.no_supervisor": "none",
    "operate.gpu": "GPU {index} · {name}: {used} of {total} MB used, {reserved} MB reserved, {instances} instance(s)",
    "operate.no_gpu": "No GPU: avatars run on the CPU ({why}).",
    "operate.confirm_stop": "{name} has {n} connection(s). Stop it anyway?",
    "col.avatar": "Avatar", "col.state": "State", "col.port": "Port", "col.gpu": "GPU", "col.connections": "Connections",
    "col.uptime": "Uptime", "col.restarts": "Restarts", "col.error": "Last error", "col.model": "Model",
    "btn.disconnect": "Disconnect", "btn.restart": "Restart", "btn.stop": "Stop",
    "tts.up": "running", "tts.down": "not started",
    "cpu": "CPU",
    "add.file": "Photo or video with one face", "add.name": "Name (letters, digits, - and _)",
    "add.description": "Description", "add.voice": "Voice model", "add.voice_default": "Default",
    "add.timbre": "Voice (optional)", "add.submit": "Register", "add.talk": "Talk to it",
    "add.uploading": "Uploading… {percent}%", "add.preparing": "Checking the face and preparing the avatar…",
    "add.queued": "Waiting for its turn…",
    "add.too_big": "The file is {size} MB; the limit is {limit} MB.",
    "add.done": "{name} is ready ({seconds} s).", "add.good": "Quality: good", "add.fair": "Quality: fair",
    "add.refused": "This file cannot make an avatar.",
    "metric.face_px": "Face width (px)", "metric.face_fraction": "Face / frame width", "metric.brightness": "Brightness",
    "metric.sharpness": "Sharpness", "metric.yaw_degrees": "Turned (degrees)", "metric.frames": "Frames",
    "metric.frames_with_face": "Frames with a face", "metric.clipped": "Overexposed share",
  },
  fa: {
    "title": "آواتارها",
    "tab.talk": "گفتگو", "tab.operate": "مدیریت", "tab.add": "افزودن",
    "details": "جزئیات", "close": "بستن",
    "token.ask": "این سرور توکن API می‌خواهد.", "token.save": "ادامه",
    "token.wrong": "توکن API پذیرفته نشد. دوباره وارد کنید.",
    "gallery.empty": "هنوز آواتاری نیست. یکی اضافه کنید.",
    "gallery.running": "در حال اجرا، {n} اتصال",
    "talk.placeholder": "بنویسید آواتار چه بگوید", "talk.echo": "تکرار", "talk.chat": "گفتگو",
    "talk.chat_off": "گفتگو به یک LLM نیاز دارد: LLM_URL را برای سرور تنظیم کنید",
    "talk.speak": "بگو", "talk.connect": "اتصال", "talk.interrupt": "قطع صحبت", "talk.leave": "قطع اتصال",
    "talk.back": "همه آواتارها", "talk.unmute": "برای شنیدن صدا بزنید", "talk.problem": "آواتار از مشکلی خبر می‌دهد.",
    "mic.off": "میکروفون", "mic.on": "میکروفون روشن است", "mic.ptt": "در حال شنیدن…", "mic.refused": "میکروفون مجاز نیست",
    "mic.missing": "میکروفون نیست", "mic.hold": "برای صحبت نگه دارید (Space)", "mic.barge_in": "وقتی حرف می‌زنم، حرف آواتار قطع شود",
    "mic.refused_help": "اجازهٔ استفاده از میکروفون داده نشد. در تنظیمات سایتِ مرورگر به این صفحه اجازه دهید و دوباره «میکروفون» را بزنید. نوشتن همچنان کار می‌کند.",
    "mic.missing_help": "میکروفونی پیدا نشد. یکی وصل کنید و دوباره «میکروفون» را بزنید. نوشتن همچنان کار می‌کند.",
    "mic.insecure": "مرورگرها میکروفون را فقط به صفحه‌هایی می‌دهند که با HTTPS یا از localhost باز شده‌اند. نوشتن همچنان کار می‌کند.",
    "captions.interrupted": "قطع شد",
    "state.idle": "متصل نیست", "state.starting": "در حال راه‌اندازی آواتار…", "state.connecting": "در حال اتصال…",
    "state.new": "در حال اتصال…", "state.checking": "در حال اتصال…", "state.connected": "متصل",
    "state.disconnected": "اتصال قطع شد…", "state.failed": "اتصال ناموفق بود", "state.closed": "قطع شد",
    "error.capacity": "همه ظرفیت آواتارها پر است. یک دقیقه دیگر دوباره امتحان کنید یا از مدیر بخواهید MAX_AVATARS را بیشتر کند.",
    "error.full": "این آواتار بیشترین تعداد بیننده را دارد. بعداً دوباره امتحان کنید.",
    "error.worker": "آواتار راه‌اندازی نشد.",
    "error.missing": "آواتاری با این نام نیست.",
    "error.webrtc": "ویدیو وصل نشد. ممکن است شبکه WebRTC (UDP) را مسدود کرده باشد؛ یک سرور TURN (ICE_SERVERS) راه را باز می‌کند.",
    "error.lost": "اتصال به آواتار از دست رفت.",
    "error.network": "به سرور دسترسی نیست.",
    "error.timeout": "سرور به‌موقع پاسخ نداد.",
    "error.other": "مشکلی پیش آمد.",
    "operate.instances": "نمونه‌ها", "operate.gpus": "کارت‌های گرافیک", "operate.tts": "سرورهای صدا",
    "operate.none": "هیچ نمونه‌ای در حال اجرا نیست.", "operate.updated": "به‌روزرسانی",
    "operate.summary": "{running} در حال اجرا از {max} ظرفیت · {connections} اتصال · ناظر: {supervisor}",
    "operate.no_supervisor": "هیچ",
    "operate.gpu": "GPU {index} · {name}: {used} از {total} مگابایت مصرف شده، {reserved} مگابایت رزرو، {instances} نمونه",
    "operate.no_gpu": "GPU نیست: آواتارها روی CPU اجرا می‌شوند ({why}).",
    "operate.confirm_stop": "{name} {n} اتصال دارد. با این حال متوقف شود؟",
    "col.avatar": "آواتار", "col.state": "وضعیت", "col.port": "پورت", "col.gpu": "GPU", "col.connections": "اتصال‌ها",
    "col.uptime": "مدت اجرا", "col.restarts": "راه‌اندازی مجدد", "col.error": "آخرین خطا", "col.model": "مدل",
    "btn.disconnect": "قطع اتصال", "btn.restart": "راه‌اندازی مجدد", "btn.stop": "توقف",
    "tts.up": "در حال اجرا", "tts.down": "اجرا نشده",
    "cpu": "CPU",
    "add.file": "عکس یا ویدیو با یک چهره", "add.name": "نام (حروف و ارقام لاتین، - و _)",
    "add.description": "توضیح", "add.voice": "مدل صدا", "add.voice_default": "پیش‌فرض",
    "add.timbre": "صدا (اختیاری)", "add.submit": "ثبت", "add.talk": "گفتگو با آن",
    "add.uploading": "در حال بارگذاری… {percent}٪", "add.preparing": "بررسی چهره و آماده‌سازی آواتار…",
    "add.queued": "در صف…",
    "add.too_big": "حجم فایل {size} مگابایت است؛ حداکثر {limit} مگابایت.",
    "add.done": "{name} آماده است ({seconds} ثانیه).", "add.good": "کیفیت: خوب", "add.fair": "کیفیت: متوسط",
    "add.refused": "از این فایل نمی‌توان آواتار ساخت.",
    "metric.face_px": "عرض چهره (پیکسل)", "metric.face_fraction": "نسبت چهره به عرض تصویر", "metric.brightness": "روشنایی",
    "metric.sharpness": "وضوح", "metric.yaw_degrees": "چرخش (درجه)", "metric.frames": "فریم‌ها",
    "metric.frames_with_face": "فریم‌های دارای چهره", "metric.clipped": "سهم نواحی بیش‌ازحد روشن",
  },
};

const LANGUAGES = Object.keys(STRINGS);
let language = "en";

export function t(key, values = {}) {
  const text = STRINGS[language][key] ?? STRINGS.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (whole, name) => (name in values ? String(values[name]) : whole));
}

// Sets the language, the page direction, and every text marked with data-i18n*.
export function apply(lang) {
  language = LANGUAGES.includes(lang) ? lang : "en";
  document.documentElement.lang = language;
  document.documentElement.dir = language === "fa" ? "rtl" : "ltr";
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  document.querySelectorAll("[data-i18n-placeholder]").forEach((el) => { el.placeholder = t(el.dataset.i18nPlaceholder); });
  document.title = t("title");
  document.dispatchEvent(new CustomEvent("languagechange"));
}

// ?lang=fa, else the last choice, else the browser's language.
export function preferred() {
  const asked = new URLSearchParams(location.search).get("lang") || localStorage.getItem("avatar-console-lang")
    || (navigator.language || "en").slice(0, 2);
  return LANGUAGES.includes(asked) ? asked : "en";
}

export function remember(lang) {
  localStorage.setItem("avatar-console-lang", lang);
}
