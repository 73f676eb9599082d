// The web demo page's entry (index.html loads it as a module with the response's CSP nonce, which its imports
// inherit): the model's info, sending a message and streaming the answer, regenerating the latest answer or editing
// the latest question, and reset.
import { addError, conversation, el, els, scrollLog, setStatus, state, systemError, updateHint } from './app-common.js';
import { clearBox, fillIdentifyText, loadExamples, markExample } from './app-image.js';

// ---- info and footer -------------------------------------------------------------------------------------
const TASK_LABELS = { chat: 'Chat (no tag)' };
async function loadInfo() {
  try {
    const res = await fetch('/api/info', { headers: { accept: 'application/json' } });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const info = await res.json();
    state.info = info;
    els.task.textContent = '';
    for (const t of info.tasks) {
      const o = el('option', null, TASK_LABELS[t] || `[${t}]`);
      o.value = t;
      els.task.appendChild(o);
    }
    els.temperature.value = String(info.defaults.temperature);
    els.beams.value = String(info.defaults.numBeams);
    els.beams.max = String(info.maxBeams);
    updateHint();
    els.footer.textContent = '';
    const m = info.model;
    if (m) {
      els.footer.appendChild(el('span', null, `Model: ${m.name}${m.path ? ` (${m.path})` : ''}. `));
      if (m.notice) els.footer.appendChild(el('span', 'notice', m.notice));
    } else {
      els.footer.textContent = 'Model: unknown.';
    }
  } catch (err) {
    els.footer.textContent = `Could not reach the server: ${err?.message ? err.message : String(err)}`;
  }
}
els.task.addEventListener('change', () => {
  updateHint();
  if (els.task.value === 'identify' && state.box) fillIdentifyText();
});

// ---- sending and streaming ---------------------------------------------------------------------------------
function userMessage(task, text, image) {
  const li = el('li', 'msg user');
  li.dataset.role = 'user';
  li.dataset.task = task;
  li.dataset.text = text;
  if (task !== 'chat') li.appendChild(el('span', 'tag', `[${task}] `));
  li.appendChild(el('span', 'text', text));
  if (image) {
    const img = el('img', 'thumb');
    img.alt = 'uploaded image';
    img.src = URL.createObjectURL(image);
    li.appendChild(img);
  }
  els.log.appendChild(li);
  return li;
}

const SPACE_BEFORE = /^[^\s,.;:!?)\]}]/;
function renderFinal(body, ev) {
  body.textContent = '';
  const segs = Array.isArray(ev.segments) ? ev.segments : [{ text: ev.text }];
  segs.forEach((s, i) => {
    if (i > 0 && SPACE_BEFORE.test(s.text)) body.appendChild(document.createTextNode(' '));
    if (s.colour) {
      const span = el('span', 'phrase', s.text);
      if (/^#[0-9a-f]{6}$/i.test(s.colour)) span.style.borderBottomColor = s.colour;
      body.appendChild(span);
    } else {
      body.appendChild(document.createTextNode(s.text));
    }
  });
}

/**
 * `li` is the latest answer given in full: it gets the Regenerate button, and its question the Edit button (one of
 * each at most: an older answer cannot be regenerated, an older question not edited).
 */
function markLatest(li) {
  dropLatestButtons();
  const b = el('button', 'regen', 'Regenerate');
  b.type = 'button';
  b.title = 'Answer the same question again; the new answer replaces this one';
  b.addEventListener('click', () => regenerate(li));
  li.appendChild(b);
  const q = li.previousElementSibling;
  if (q?.dataset.role !== 'user' || !q.dataset.askedAs) return;
  const e = el('button', 'edit', 'Edit');
  e.type = 'button';
  e.title = 'Change this question; its answer is given again';
  e.addEventListener('click', () => openEditor(q, li));
  q.appendChild(e);
}
function dropLatestButtons() {
  for (const b of els.log.querySelectorAll('button.regen, button.edit')) b.remove();
}

/** An empty assistant message, being written. */
function botMessage() {
  const li = el('li', 'msg bot');
  li.dataset.role = 'assistant';
  li.dataset.state = 'streaming';
  li.appendChild(el('div', 'body'));
  els.log.appendChild(li);
  scrollLog();
  return li;
}

function formWith(fields) {
  const form = new FormData();
  form.append('conversation', conversation);
  form.append('temperature', els.temperature.value);
  form.append('numBeams', els.beams.value);
  for (const [k, v] of Object.entries(fields)) form.append(k, v);
  return form;
}

async function send() {
  if (state.controller) return;
  const task = els.task.value || 'chat';
  const text = els.text.value.trim();
  const image = state.pendingImage;
  if (!text && !image && task === 'chat') {
    els.text.focus();
    return;
  }
  const form = formWith({ text, task });
  if (image) form.append('image', image, image.name || 'image');
  const question = userMessage(task, text, image);
  // (the latest answer keeps its button until this one is given: a refused message leaves it the latest)
  const li = botMessage();
  const r = await stream(form, li, {
    image,
    accepted: () => {
      if (image) {
        state.pendingImage = null;
        state.hasImage = true;
        els.imageInfo.textContent = 'Image sent; follow-up questions use it.';
      }
      els.text.value = '';
      if (state.box) clearBox();
    },
  });
  if (r.ok) {
    // the id the question was asked under, by which it is edited (its answer's id changes when regenerated)
    question.dataset.askedAs = li.dataset.requestId;
    markLatest(li);
  }
  li.dataset.state = 'done';
}

/**
 * The latest answer given again, in its place: its question asked anew (the server replaces the stored answer). If no
 * new answer comes (stopped, an error), the old one is shown again, with why.
 */
async function regenerate(li) {
  if (state.controller || !li.dataset.requestId) return;
  const r = await answerAgain(li, { regenerate: li.dataset.requestId });
  if (r.ok) li.dataset.regenerated = String(Number(li.dataset.regenerated || 0) + 1);
  else li.appendChild(el('div', 'meta', `Not regenerated: ${r.message}`));
}

/**
 * The answer `li` given again in its place, from the fields of the request; if none comes (stopped, an error), the old
 * one is shown again and keeps its buttons unless the server no longer has it (`stale`). Whether one came.
 */
async function answerAgain(li, fields) {
  const old = Array.from(li.childNodes);
  const oldData = { ...li.dataset };
  dropLatestButtons();
  li.textContent = '';
  delete li.dataset.chunks;
  li.dataset.state = 'streaming';
  li.appendChild(el('div', 'body'));
  const r = await stream(formWith(fields), li, {});
  if (!r.ok) {
    li.textContent = '';
    for (const n of old) if (!(n instanceof HTMLButtonElement)) li.appendChild(n);
    for (const k of Object.keys(li.dataset)) if (!(k in oldData)) delete li.dataset[k];
    Object.assign(li.dataset, oldData);
  }
  if (r.ok || r.code !== 'stale') markLatest(li);
  li.dataset.state = 'done';
  return r;
}

/** The latest question `q` (answered by `li`) in an editor: saved with new text, it is answered again. */
function openEditor(q, li) {
  if (state.controller || q.querySelector('.editor')) return;
  const shown = Array.from(q.childNodes).filter((n) => !(n instanceof HTMLButtonElement));
  for (const b of q.querySelectorAll('button.edit')) b.remove();
  for (const n of shown) if (!(n instanceof HTMLImageElement)) n.remove();
  const editor = el('div', 'editor');
  const area = el('textarea', 'edit-text');
  area.value = q.dataset.text || '';
  area.setAttribute('aria-label', 'edited question');
  const save = el('button', 'edit-save', 'Answer again');
  save.type = 'button';
  const cancel = el('button', 'edit-cancel', 'Cancel');
  cancel.type = 'button';
  editor.append(area, save, cancel);
  q.prepend(editor);
  area.focus();
  const close = (text) => {
    editor.remove();
    q.prepend(...questionNodes(q.dataset.task, text));
  };
  cancel.addEventListener('click', () => {
    close(q.dataset.text);
    markLatest(li);
  });
  const submit = async () => {
    const text = area.value.trim();
    if (!text || text === q.dataset.text || state.controller) {
      if (!state.controller) cancel.click();
      return;
    }
    const before = q.dataset.text;
    close(text);
    q.dataset.text = text;
    const r = await answerAgain(li, { edit: q.dataset.askedAs, text, task: q.dataset.task });
    if (r.ok) {
      li.dataset.edited = String(Number(li.dataset.edited || 0) + 1);
      return;
    }
    // not answered: the question as it was, with its answer
    q.dataset.text = before;
    for (const n of Array.from(q.childNodes)) if (!(n instanceof HTMLImageElement) && !(n instanceof HTMLButtonElement)) n.remove();
    q.prepend(...questionNodes(q.dataset.task, before));
    li.appendChild(el('div', 'meta', `Not answered again: ${r.message}`));
  };
  save.addEventListener('click', submit);
  area.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submit();
    } else if (e.key === 'Escape') cancel.click();
  });
}

/** A question's tag and text, as userMessage shows them. */
function questionNodes(task, text) {
  return [...(task !== 'chat' ? [el('span', 'tag', `[${task}] `)] : []), el('span', 'text', text)];
}

/**
 * Sends `form` to /api/chat and streams the answer into `li`. `opts.image`: the image sent with it;
 * `opts.accepted()`: runs once the server took the request. Whether the answer was given in full, else why not.
 */
async function stream(form, li, opts) {
  const body = li.querySelector('.body');
  const image = opts.image;
  const controller = new AbortController();
  state.controller = controller;
  els.send.disabled = true;
  els.stop.disabled = false;
  setStatus(image ? 'Uploading…' : 'Sending…');
  let errorCode = null;
  let errorMessage = '';
  let sawFinal = false;
  try {
    const res = await fetch('/api/chat', { method: 'POST', body: form, signal: controller.signal });
    if (!res.ok) {
      let message = `HTTP ${res.status}`;
      try {
        const j = await res.json();
        if (j?.error?.message) message = j.error.message;
        errorCode = j?.error ? j.error.code : null;
      } catch (_) {
        /* not JSON */
      }
      li.dataset.error = errorCode || String(res.status);
      errorMessage = message;
      addError(li, message);
      return { ok: false, code: errorCode, message };
    }
    opts.accepted?.();
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const frame = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = frame
          .split('\n')
          .filter((l) => l.startsWith('data:'))
          .map((l) => l.slice(5).trimStart())
          .join('\n');
        if (!data) continue;
        let ev;
        try {
          ev = JSON.parse(data);
        } catch (_) {
          continue;
        }
        onEvent(ev);
      }
    }
  } catch (err) {
    if (controller.signal.aborted) {
      li.appendChild(el('div', 'meta', '(stopped)'));
      errorCode = 'cancelled';
      errorMessage = 'stopped';
    } else {
      errorMessage = `Connection failed: ${err?.message ? err.message : String(err)}`;
      addError(li, errorMessage);
    }
  } finally {
    state.controller = null;
    els.send.disabled = false;
    els.stop.disabled = true;
    setStatus('');
    scrollLog();
  }
  if (!sawFinal && !errorMessage) errorMessage = 'the answer ended early';
  return sawFinal && !errorCode ? { ok: true } : { ok: false, code: errorCode, message: errorMessage };

  function onEvent(ev) {
    switch (ev.type) {
      case 'queued':
        setStatus(`Queued (position ${ev.position})…`);
        break;
      case 'started':
        setStatus('Thinking…');
        break;
      case 'restart':
        body.textContent = '';
        setStatus('Answering again…');
        break;
      case 'text':
        if (!sawFinal) {
          body.appendChild(document.createTextNode(ev.text));
          li.dataset.chunks = String(Number(li.dataset.chunks || 0) + 1);
          scrollLog();
        }
        break;
      case 'final': {
        sawFinal = true;
        if (typeof ev.requestId === 'string') li.dataset.requestId = ev.requestId;
        renderFinal(body, ev);
        if (ev.text) {
          const d = el('details', 'raw');
          d.appendChild(el('summary', null, 'raw answer'));
          d.appendChild(el('pre', null, ev.text));
          li.appendChild(d);
        }
        break;
      }
      case 'image': {
        if (typeof ev.data !== 'string' || !/^image\/(png|jpeg|webp)$/.test(ev.mime)) break;
        const img = el('img', 'annotated');
        img.alt = "the image with the answer's boxes drawn";
        img.src = `data:${ev.mime};base64,${ev.data}`;
        li.appendChild(img);
        scrollLog();
        break;
      }
      case 'timings': {
        const t = ev.timings || {};
        const parts = [];
        if (t.firstTokenMs !== undefined) parts.push(`first token ${Math.round(t.firstTokenMs)} ms`);
        if (t.totalMs !== undefined) parts.push(`total ${Math.round(t.totalMs)} ms`);
        if (t.newTokens !== undefined) parts.push(`${t.newTokens} tokens`);
        if (parts.length) li.appendChild(el('div', 'meta', parts.join(' · ')));
        break;
      }
      case 'error':
        errorCode = ev.code;
        errorMessage = ev.message || ev.code;
        li.dataset.error = ev.code;
        if (ev.code === 'bad_image' && image) {
          state.hasImage = false;
          els.imageInfo.textContent = 'That file was refused; choose another image.';
        }
        if (ev.code === 'no_image') state.hasImage = false;
        addError(li, errorMessage);
        break;
      default:
        break;
    }
  }
}

els.form.addEventListener('submit', (e) => {
  e.preventDefault();
  send();
});
els.text.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  }
});
els.stop.addEventListener('click', () => {
  if (state.controller) state.controller.abort();
});

els.reset.addEventListener('click', async () => {
  if (state.controller) state.controller.abort();
  try {
    const res = await fetch('/api/reset', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ conversation }),
    });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
  } catch (err) {
    systemError(`Reset failed: ${err?.message ? err.message : String(err)}`);
    return;
  }
  els.log.textContent = '';
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = null;
  state.pendingImage = null;
  state.hasImage = false;
  clearBox();
  els.preview.removeAttribute('src');
  els.stage.hidden = true;
  els.text.value = '';
  els.imageInfo.textContent = 'No image yet.';
  markExample(null);
  setStatus('New conversation.');
});

loadInfo().then(loadExamples);
