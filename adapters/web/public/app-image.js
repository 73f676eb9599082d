// The image side of the page: upload (file, drop, paste), the example scenes, and the box drawn for [identify].
import { el, els, fmtMB, state, systemError, updateHint } from './app-common.js';

// ---- images ------------------------------------------------------------------------------------------------
function setImage(file) {
  if (!file) return;
  const max = state.info ? state.info.maxUploadBytes : Infinity;
  if (file.size > max) {
    systemError(`The image is too large (${fmtMB(file.size)}): the limit is ${fmtMB(max)}. Please choose a smaller image.`);
    return;
  }
  if (file.size === 0) {
    systemError('The file is empty.');
    return;
  }
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  markExample(null);
  state.pendingImage = file;
  state.previewUrl = URL.createObjectURL(file);
  els.preview.src = state.previewUrl;
  els.stage.hidden = false;
  clearBox();
  els.imageInfo.textContent = `${file.name ? `${file.name}, ` : ''}${fmtMB(file.size)} - sent with the next message`;
}
els.preview.addEventListener('error', () => {
  if (state.pendingImage) els.imageInfo.textContent = 'This browser cannot preview the file; the server will check it when you send.';
});
els.pick.addEventListener('click', () => els.file.click());
els.file.addEventListener('change', () => {
  if (els.file.files?.[0]) setImage(els.file.files[0]);
  els.file.value = '';
});
const hasFiles = (e) => !!e.dataTransfer && Array.from(e.dataTransfer.types || []).includes('Files');
document.addEventListener('dragover', (e) => {
  if (!hasFiles(e)) return;
  e.preventDefault();
  els.drop.classList.add('over');
});
document.addEventListener('dragleave', (e) => {
  if (!e.relatedTarget) els.drop.classList.remove('over');
});
document.addEventListener('drop', (e) => {
  if (!hasFiles(e)) return;
  e.preventDefault();
  els.drop.classList.remove('over');
  const f = e.dataTransfer?.files?.[0];
  if (f) setImage(f);
});
document.addEventListener('paste', (e) => {
  const items = e.clipboardData ? Array.from(e.clipboardData.items) : [];
  const item = items.find((i) => i.kind === 'file');
  if (!item) return;
  const f = item.getAsFile();
  if (f) {
    e.preventDefault();
    setImage(f);
  }
});

// ---- example scenes ----------------------------------------------------------------------------------------
// Synthetic scenes from the server (GET /examples), each with a suggested prompt. Choosing one is the same
// as uploading it: it becomes the pending image (a new image starts a new conversation on the server).
let exampleSeq = 0;
export function markExample(button) {
  for (const c of els.exampleList.children) c.classList.toggle('chosen', c === button);
}
const exampleUrl = (id) => `/examples/${encodeURIComponent(id)}.png`;
export async function loadExamples() {
  let list;
  try {
    const res = await fetch('/examples', { headers: { accept: 'application/json' } });
    if (!res.ok) return;
    list = await res.json();
  } catch (_) {
    return;
  } // no examples: the row stays hidden
  if (!Array.isArray(list) || list.length === 0) return;
  els.exampleList.textContent = '';
  list.forEach((ex, i) => {
    if (!ex || typeof ex.id !== 'string' || typeof ex.prompt !== 'string') return;
    const b = el('button');
    b.type = 'button';
    b.dataset.example = ex.id;
    b.dataset.task = String(ex.task || 'chat');
    b.title = ex.prompt;
    b.setAttribute('aria-label', `Example ${i + 1}: ${ex.prompt}`);
    const img = el('img');
    img.alt = typeof ex.alt === 'string' && ex.alt ? ex.alt : `example scene ${i + 1}`;
    if (ex.width > 0 && ex.height > 0) {
      img.width = ex.width;
      img.height = ex.height;
    }
    img.src = exampleUrl(ex.id);
    b.appendChild(img);
    b.addEventListener('click', () => useExample(ex, b));
    els.exampleList.appendChild(b);
  });
  els.examples.hidden = els.exampleList.childElementCount === 0;
}
async function useExample(ex, button) {
  const seq = ++exampleSeq;
  let blob;
  try {
    const res = await fetch(exampleUrl(ex.id));
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    blob = await res.blob();
  } catch (err) {
    if (seq === exampleSeq) systemError(`Could not load the example: ${err?.message ? err.message : String(err)}`);
    return;
  }
  if (seq !== exampleSeq) return; // another example was chosen meanwhile
  setImage(new File([blob], `example-${ex.id}.png`, { type: 'image/png' }));
  if (state.pendingImage === null || state.pendingImage.name !== `example-${ex.id}.png`) return;
  markExample(button);
  // The task goes in the selector and the rest of the prompt in the text box, as the task buttons do.
  const task = Array.from(els.task.options).some((o) => o.value === ex.task) ? ex.task : 'chat';
  els.task.value = task;
  updateHint();
  els.text.value = task === 'chat' ? ex.prompt : ex.prompt.replace(/^\s*\[[a-z]+\]\s*/i, '');
  // An [identify] example's box is shown on the image, like a drawn one.
  const m = task === 'identify' ? /\{<(\d+)><(\d+)><(\d+)><(\d+)>\}/.exec(els.text.value) : null;
  if (m) {
    state.box = { x1: +m[1], y1: +m[2], x2: +m[3], y2: +m[4] };
    showGridSel(state.box);
    els.clearBox.hidden = false;
  }
  els.text.focus();
}

// ---- drawing a box for [identify] -------------------------------------------------------------------------
let drag = null;
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
function pointIn(e) {
  const r = els.preview.getBoundingClientRect();
  return { x: clamp(e.clientX - r.left, 0, r.width), y: clamp(e.clientY - r.top, 0, r.height), w: r.width, h: r.height };
}
function showSel(x1, y1, x2, y2) {
  els.sel.hidden = false;
  els.sel.style.left = `${Math.min(x1, x2)}px`;
  els.sel.style.top = `${Math.min(y1, y2)}px`;
  els.sel.style.width = `${Math.abs(x2 - x1)}px`;
  els.sel.style.height = `${Math.abs(y2 - y1)}px`;
}
/** A box on the 0..100 grid, drawn in percent of the shown image. */
function showGridSel(b) {
  els.sel.hidden = false;
  els.sel.style.left = `${b.x1}%`;
  els.sel.style.top = `${b.y1}%`;
  els.sel.style.width = `${b.x2 - b.x1}%`;
  els.sel.style.height = `${b.y2 - b.y1}%`;
}
els.stage.addEventListener('pointerdown', (e) => {
  if (e.button !== 0) return;
  e.preventDefault();
  const p = pointIn(e);
  drag = { x: p.x, y: p.y };
  els.stage.setPointerCapture(e.pointerId);
  showSel(p.x, p.y, p.x, p.y);
});
els.stage.addEventListener('pointermove', (e) => {
  if (!drag) return;
  const p = pointIn(e);
  showSel(drag.x, drag.y, p.x, p.y);
});
els.stage.addEventListener('pointerup', (e) => {
  if (!drag) return;
  const p = pointIn(e);
  const d = drag;
  drag = null;
  if (Math.abs(p.x - d.x) < 4 || Math.abs(p.y - d.y) < 4) {
    clearBox();
    return;
  }
  // Displayed pixels -> the model's 0..100 grid (the preview shows the whole image, EXIF-oriented).
  const g = (v, size) => clamp(Math.round((v / size) * 100), 0, 100);
  state.box = {
    x1: g(Math.min(d.x, p.x), p.w),
    y1: g(Math.min(d.y, p.y), p.h),
    x2: g(Math.max(d.x, p.x), p.w),
    y2: g(Math.max(d.y, p.y), p.h),
  };
  els.clearBox.hidden = false;
  if (els.task.value !== 'identify') {
    els.task.value = 'identify';
    updateHint();
  }
  fillIdentifyText();
});
els.stage.addEventListener('pointercancel', () => {
  drag = null;
});
const BOX_RE = /\{\s*(?:<[^<>{}\n]*>\s*)+\}/g;
function boxText(b) {
  return `{<${b.x1}><${b.y1}><${b.x2}><${b.y2}>}`;
}
export function fillIdentifyText() {
  const rest = els.text.value
    .replace(/^\s*\[identify\]/i, '')
    .replace(BOX_RE, ' ')
    .replace(/\s+/g, ' ')
    .trim();
  els.text.value = `${rest || 'what is this'} ${boxText(state.box)}`;
}
export function clearBox() {
  state.box = null;
  els.sel.hidden = true;
  els.clearBox.hidden = true;
  els.text.value = els.text.value.replace(BOX_RE, ' ').replace(/\s+$/, '');
}
els.clearBox.addEventListener('click', clearBox);
