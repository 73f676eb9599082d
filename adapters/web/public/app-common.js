// The web demo page's script is three ES modules, so that none passes the project's 500 lines: app.js (info,
// sending and streaming, reset), app-image.js (the image, the example scenes, the box for [identify]) and this
// one, what both share: the page's elements, the tab's conversation and state, and the log's helpers. Model text
// is only ever set with textContent.

const $ = (id) => document.getElementById(id);
export const els = {
  status: $('status'),
  drop: $('drop'),
  pick: $('pick'),
  file: $('file'),
  stage: $('stage'),
  preview: $('preview'),
  sel: $('sel'),
  imageInfo: $('imageInfo'),
  clearBox: $('clearBox'),
  log: $('log'),
  form: $('form'),
  task: $('task'),
  temperature: $('temperature'),
  beams: $('beams'),
  text: $('text'),
  send: $('send'),
  stop: $('stop'),
  reset: $('reset'),
  footer: $('footer'),
  examples: $('examples'),
  exampleList: $('exampleList'),
};

// One conversation per tab: a random id kept in sessionStorage (survives reloads, not shared with other tabs).
function randomId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}
export let conversation = sessionStorage.getItem('minigpt.conversation');
if (!conversation || !/^[A-Za-z0-9_-]{8,64}$/.test(conversation)) {
  conversation = randomId();
  sessionStorage.setItem('minigpt.conversation', conversation);
}

export const state = {
  info: null,
  pendingImage: null, // a File/Blob not yet sent
  hasImage: false, // the server holds an image for this conversation
  previewUrl: null,
  box: null, // {x1,y1,x2,y2} on the 0..100 grid
  controller: null,
};

export const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};
export const setStatus = (s) => {
  els.status.textContent = s;
};
export const scrollLog = () => {
  els.log.scrollTop = els.log.scrollHeight;
};
export const fmtMB = (n) => `${(n / (1024 * 1024)).toFixed(1)} MB`;

export function addError(container, message) {
  const box = el('div', 'error', message);
  box.setAttribute('role', 'alert');
  container.appendChild(box);
  scrollLog();
  return box;
}
export function systemError(message) {
  const li = el('li', 'msg bot');
  li.dataset.role = 'system';
  addError(li, message);
  els.log.appendChild(li);
  scrollLog();
}

export function updateHint() {
  const hints = state.info ? state.info.taskHints : {};
  els.text.placeholder = hints[els.task.value] || 'Type in whatever you want';
}
