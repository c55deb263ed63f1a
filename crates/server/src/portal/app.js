// deeptune portal: a client of the v2 API in one script, no build step.
// Pages are functions of the URL fragment (#/apps/{app}/models/{model}...); each renders into
// <main> and registers what must stop when the user leaves it (polls, log streams).
'use strict';

const TOKEN_KEY = 'deeptune_key';
const USER = 'me';
const PAGE_SIZE = 48;
const FINAL_CODES = new Set([21100, 21106, 21119, 64004]);
// Stored, or stored already (an identical upload is not an error).
const OK_INPUT = new Set([10000, 30000, 30100]);
const COLORS = ['#3b5bdb', '#e8590c', '#2b8a3e', '#c2255c', '#7048e8', '#0c8599', '#e67700', '#5c940d', '#862e9c', '#495057'];

// ---------------------------------------------------------------- small helpers

/** Creates an element: h('button', {class: 'primary', onclick: f}, 'Save'). */
function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key === 'value') el.value = value;
    else if (key === 'checked' || key === 'selected' || key === 'disabled' || key === 'hidden' || key === 'multiple') el[key] = true;
    else el.setAttribute(key, value === true ? '' : value);
  }
  append(el, children);
  return el;
}

function append(el, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function clear(el) { while (el.firstChild) el.firstChild.remove(); return el; }

const fmt = {
  pct: (x, digits = 1) => (x === null || x === undefined || Number.isNaN(x)) ? '–' : (100 * x).toFixed(digits) + '%',
  num: (x, digits = 3) => (x === null || x === undefined || Number.isNaN(x)) ? '–' : Number(x).toFixed(digits),
  int: (x) => (x === null || x === undefined) ? '–' : Number(x).toLocaleString('en-US'),
  date: (s) => s ? new Date(s).toLocaleString() : '–',
  duration(seconds) {
    if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return '–';
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
    return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min`;
  },
};

function toast(message, bad = false) {
  const el = h('div', { class: 'toast' + (bad ? ' bad' : '') }, message);
  document.getElementById('toasts').append(el);
  setTimeout(() => el.remove(), bad ? 7000 : 3500);
}

function statusBadge(status) {
  const code = status && status.code;
  const text = (status && status.description) || 'unknown';
  let kind = '';
  if (code === 21100 || code === 21301 || code === 10000) kind = 'ok';
  else if (code === 21106 || code === 21119 || code === 21309) kind = 'bad';
  else if (code === 64004) kind = 'warn';
  else if (code === 21101 || code === 21103 || code === 21300 || code === 21310) kind = 'run';
  const labels = { 21100: 'Trained', 21101: 'Training', 21103: 'Queued', 21106: 'Failed', 21119: 'Too many invalid inputs', 64004: 'Canceled',
    21300: 'Evaluating', 21301: 'Evaluated', 21309: 'Evaluation failed', 21310: 'Queued for evaluation' };
  return h('span', { class: 'badge ' + kind, title: text, dataset: { code: String(code) } }, labels[code] || text);
}

function field(labelText, control, hint) {
  const id = control.id || ('f-' + Math.random().toString(36).slice(2, 9));
  control.id = id;
  return h('div', { class: 'field' }, h('label', { for: id }, labelText), control, hint ? h('span', { class: 'hint' }, hint) : null);
}

function copyButton(text, label = 'Copy id') {
  return h('button', { type: 'button', class: 'small', title: `${label}: ${text}`, 'aria-label': `${label} ${text}`,
    onclick: async () => {
      try { await navigator.clipboard.writeText(text); toast(`Copied ${text}`); }
      catch { window.prompt('Copy this id:', text); }
    } }, 'Copy');
}

function errorBox(error) {
  return h('div', { class: 'error-box', role: 'alert' }, h('b', {}, error.title || 'Error'), ' ', error.message);
}

function spinner(text) { return h('span', {}, h('span', { class: 'spinner', 'aria-hidden': 'true' }), ' ', text || 'Loading…'); }

/** Reads a File as base64 (without the data: prefix). */
function fileBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(',', 2)[1] || '');
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function debounce(fn, ms) {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

// ---------------------------------------------------------------- the API

const auth = {
  get token() { return localStorage.getItem(TOKEN_KEY); },
  set(token) {
    localStorage.setItem(TOKEN_KEY, token);
    // Read by the server on GET requests only (images, downloads, the log stream).
    document.cookie = `${TOKEN_KEY}=${encodeURIComponent(token)}; path=/; SameSite=Strict`;
  },
  clear() {
    localStorage.removeItem(TOKEN_KEY);
    document.cookie = `${TOKEN_KEY}=; path=/; SameSite=Strict; max-age=0`;
  },
};

class ApiError extends Error {
  constructor(httpStatus, body) {
    const status = (body && body.status) || {};
    super(status.details || status.description || `HTTP ${httpStatus}`);
    this.title = status.description || `HTTP ${httpStatus}`;
    this.httpStatus = httpStatus;
    this.code = status.code;
    this.body = body;
  }
}

/** Calls the API under /v2/users/me; `path` starts with '/'. */
async function api(method, path, body, options = {}) {
  const headers = { Authorization: `Key ${auth.token}` };
  let payload;
  if (body instanceof Blob || typeof body === 'string') { payload = body; if (options.contentType) headers['Content-Type'] = options.contentType; }
  else if (body !== undefined) { payload = JSON.stringify(body); headers['Content-Type'] = 'application/json'; }
  const response = await fetch(`/v2/users/${USER}${path}`, { method, headers, body: payload });
  let json = null;
  try { json = await response.json(); } catch { /* not JSON */ }
  if (response.status === 401) { auth.clear(); location.hash = '#/signin'; }
  if (!response.ok && !(options.allow || []).includes(response.status)) throw new ApiError(response.status, json);
  return json;
}
const get = (path) => api('GET', path);
const post = (path, body, options) => api('POST', path, body, options);
const del = (path, body) => api('DELETE', path, body);

const appPath = (app, rest = '') => `/apps/${encodeURIComponent(app)}${rest}`;
const mediaUrl = (app, inputId, kind = 'thumbnail') => `/v2/users/${USER}/apps/${encodeURIComponent(app)}/inputs/${encodeURIComponent(inputId)}/${kind}`;

/** Every item of a paginated list (up to `max`). */
async function listAll(path, key, max = 100000) {
  const out = [];
  const perPage = 1000;
  for (let page = 1; out.length < max; page++) {
    const sep = path.includes('?') ? '&' : '?';
    const body = await get(`${path}${sep}page=${page}&per_page=${perPage}`);
    const items = body[key] || [];
    out.push(...items);
    if (items.length < perPage) break;
  }
  return out;
}

// ---------------------------------------------------------------- routing and page lifecycle

const main = () => document.getElementById('main');
let leaveHandlers = [];
/** Registers what to stop when the user leaves the page (timers, streams). */
function onLeave(fn) { leaveHandlers.push(fn); }
/** Repeats `fn` every `ms` until the page is left (or `fn` returns false). */
function every(ms, fn) {
  let stopped = false;
  let timer;
  const tick = async () => {
    if (stopped) return;
    let again = true;
    try { again = (await fn()) !== false; } catch (e) { console.warn(e); }
    if (!stopped && again) timer = setTimeout(tick, ms);
  };
  timer = setTimeout(tick, ms);
  onLeave(() => { stopped = true; clearTimeout(timer); });
}

function parseRoute() {
  const raw = location.hash.replace(/^#/, '') || '/apps';
  const [path, query] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(query || '') };
}

function go(hash) { location.hash = hash; }
const link = (...parts) => '#/' + parts.map(encodeURIComponent).join('/');

async function render() {
  for (const fn of leaveHandlers.splice(0)) { try { fn(); } catch { /* already stopped */ } }
  document.querySelectorAll('dialog[open]').forEach((d) => d.close());
  document.querySelectorAll('.drawer').forEach((d) => d.remove());
  const { parts, query } = parseRoute();
  const root = clear(main());
  document.getElementById('signout').hidden = !auth.token;
  if (!auth.token && parts[0] !== 'signin') { go('#/signin'); return; }
  try {
    await route(parts, query, root);
  } catch (error) {
    console.error(error);
    append(root, errorBox(error));
  }
  if (document.activeElement === document.body) main().focus({ preventScroll: true });
}

async function route(parts, query, root) {
  const [top, app, section, id, sub, subId, extra] = parts;
  if (top === 'signin') return signInPage(root);
  if (top !== 'apps') return go('#/apps');
  if (!app) { setChrome(null); return appsPage(root); }
  setChrome(app, section || 'inputs');
  switch (section || 'inputs') {
    case 'inputs': return inputsPage(root, app, query);
    case 'datasets':
      if (!id) return datasetsPage(root, app);
      if (sub === 'versions' && subId) return datasetVersionPage(root, app, id, subId);
      return datasetPage(root, app, id);
    case 'models':
      if (!id) return modelsPage(root, app);
      if (sub === 'train') return trainPage(root, app, id);
      if (sub === 'versions' && subId && extra === 'evaluation') return evaluationPage(root, app, id, subId, query);
      if (sub === 'versions' && subId) return versionPage(root, app, id, subId);
      return modelPage(root, app, id);
    case 'predict': return predictPage(root, app, query);
    case 'workflows':
      if (!id) return workflowsPage(root, app);
      if (id === 'new') return workflowBuilderPage(root, app);
      return workflowPage(root, app, id);
    case 'leaderboard': return leaderboardPage(root, app);
    default: return go(link('apps', app));
  }
}

const SECTIONS = [['inputs', 'Inputs'], ['datasets', 'Datasets'], ['models', 'Models'], ['workflows', 'Workflows'], ['predict', 'Predict'], ['leaderboard', 'Leaderboard']];

function setChrome(app, section) {
  const sidebar = document.getElementById('sidebar');
  const crumbs = clear(document.getElementById('crumbs'));
  append(crumbs, h('a', { href: '#/apps' }, 'Apps'));
  if (!app) { sidebar.hidden = true; return; }
  append(crumbs, h('span', { class: 'sep' }, '›'), h('a', { href: link('apps', app) }, app));
  sidebar.hidden = false;
  clear(sidebar);
  for (const [key, label] of SECTIONS) {
    append(sidebar, h('a', { href: link('apps', app, key), 'aria-current': key === section ? 'page' : null }, label));
  }
  const current = SECTIONS.find(([key]) => key === section);
  if (current) append(crumbs, h('span', { class: 'sep' }, '›'), h('a', { href: link('apps', app, current[0]) }, current[1]));
}

/** Opens a modal <dialog> built by `build(dialog, close)`; resolves when it closes. */
function openDialog(title, build) {
  return new Promise((resolve) => {
    const dialog = h('dialog', { 'aria-label': title });
    document.body.append(dialog);
    const close = (value) => { dialog.close(); resolve(value); };
    dialog.addEventListener('close', () => { dialog.remove(); resolve(undefined); });
    append(dialog, build(close, dialog));
    dialog.showModal();
  });
}

/** A form that shows its submit's error inside itself and disables its buttons meanwhile. */
function asyncForm(props, children, onsubmit) {
  const errors = h('div', { class: 'form-errors' });
  const form = h('form', props, errors, children);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clear(errors);
    const buttons = [...form.querySelectorAll('button')];
    buttons.forEach((b) => { b.disabled = true; });
    try { await onsubmit(form); }
    catch (error) { console.error(error); append(errors, errorBox(error)); }
    finally { buttons.forEach((b) => { b.disabled = false; }); }
  });
  return form;
}

// ---------------------------------------------------------------- sign in, apps

function signInPage(root) {
  setChrome(null);
  const token = h('input', { type: 'password', name: 'token', autocomplete: 'current-password', required: true, size: 40 });
  append(root, h('h1', {}, 'Sign in'),
    h('div', { class: 'panel' },
      h('p', {}, 'Paste a personal access token. The first admin token is in ', h('code', {}, '<data dir>/admin-token'),
        '; ', h('code', {}, 'deeptune serve'), ' and ', h('code', {}, 'deeptune demo'), ' print a link that signs you in.'),
      asyncForm({ id: 'signin-form' }, [field('Access token', token), h('button', { class: 'primary', type: 'submit' }, 'Sign in')], async () => {
        auth.set(token.value.trim());
        try { await get('/apps?per_page=1'); }
        catch (error) { auth.clear(); throw error; }
        go('#/apps');
      })));
  token.focus();
}

async function appsPage(root) {
  append(root, h('h1', {}, 'Apps'));
  const list = h('div', { class: 'cards', id: 'apps' }, spinner());
  const id = h('input', { name: 'app_id', required: true, pattern: '[A-Za-z0-9_\\-]+', placeholder: 'my-app' });
  const name = h('input', { name: 'app_name', placeholder: 'optional' });
  const description = h('input', { name: 'app_description', placeholder: 'optional' });
  append(root,
    h('div', { class: 'panel' }, h('h2', { class: 'first' }, 'Create an app'),
      asyncForm({ id: 'create-app' }, [h('div', { class: 'grid2' }, field('App id', id, 'Letters, digits, - and _'), field('Name', name), field('Description', description)),
        h('button', { class: 'primary', type: 'submit' }, 'Create app')], async () => {
        await post('/apps', { apps: [{ id: id.value.trim(), name: name.value.trim(), description: description.value.trim() }] });
        toast(`Created app ${id.value}`);
        go(link('apps', id.value.trim(), 'inputs'));
      })),
    h('h2', {}, 'Your apps'), list);
  const body = await get('/apps?per_page=1000');
  clear(list);
  if (!body.apps.length) append(list, h('p', { class: 'muted' }, 'No apps yet: create one above.'));
  for (const app of body.apps) {
    append(list, h('a', { class: 'card', href: link('apps', app.id) }, h('h3', {}, app.name || app.id),
      h('div', { class: 'muted' }, app.description || app.id), h('div', { class: 'muted' }, 'Created ', fmt.date(app.created_at))));
  }
}

// ---------------------------------------------------------------- inputs

async function conceptIds(app) {
  const concepts = await listAll(appPath(app, '/concepts'), 'concepts', 5000);
  return concepts.map((c) => c.id);
}

function conceptChips(concepts, onRemove) {
  return (concepts || []).map((c) => h('span', { class: 'chip' + (c.value === 0 ? ' neg' : ''), title: c.value === 0 ? `not ${c.id}` : c.id },
    c.id, onRemove ? h('button', { type: 'button', 'aria-label': `Remove ${c.id}`, onclick: () => onRemove(c) }, '×') : null));
}

async function inputsPage(root, app, query) {
  const page = Math.max(1, Number(query.get('page')) || 1);
  const filter = query.get('filter') || '';
  const selected = new Set();
  const concepts = await conceptIds(app);
  const filterSelect = h('select', { id: 'input-filter', 'aria-label': 'Show' },
    h('option', { value: '' }, 'All inputs'), h('option', { value: ':unlabeled', selected: filter === ':unlabeled' }, 'Unlabeled'),
    concepts.map((c) => h('option', { value: c, selected: filter === c }, `Labeled ${c}`)));
  filterSelect.addEventListener('change', () => go(link('apps', app, 'inputs') + (filterSelect.value ? `?filter=${encodeURIComponent(filterSelect.value)}` : '')));
  const selectionBar = h('span', { class: 'muted', id: 'selection' });
  const addToDataset = h('button', { type: 'button', disabled: true, onclick: () => addSelectedToDataset(app, [...selected]) }, 'Add to dataset…');
  const labelSelected = h('button', { type: 'button', disabled: true, onclick: () => labelMany(app, [...selected]) }, 'Label…');
  const deleteSelected = h('button', { type: 'button', class: 'danger', disabled: true, onclick: async () => {
    if (!confirm(`Delete ${selected.size} inputs?`)) return;
    await del(appPath(app, '/inputs'), { ids: [...selected] });
    toast(`Deleted ${selected.size} inputs`); render();
  } }, 'Delete');
  const updateSelection = () => {
    selectionBar.textContent = selected.size ? `${selected.size} selected` : '';
    for (const b of [addToDataset, labelSelected, deleteSelected]) b.disabled = !selected.size;
  };
  append(root, h('h1', {}, 'Inputs'),
    h('div', { class: 'toolbar' },
      h('button', { type: 'button', class: 'primary', id: 'upload-button', onclick: () => uploadDialog(app, concepts) }, 'Upload inputs'),
      filterSelect, addToDataset, labelSelected, deleteSelected, selectionBar));
  const grid = h('div', { class: 'thumbs', id: 'input-grid' }, spinner());
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' });
  append(root, grid, pager);
  let path = appPath(app, `/inputs?page=${page}&per_page=${PAGE_SIZE}`);
  if (filter === ':unlabeled') path += '&unlabeled=true';
  else if (filter) path += `&concept_id=${encodeURIComponent(filter)}`;
  const body = await get(path);
  clear(grid);
  if (!body.inputs.length) append(grid, h('p', { class: 'muted' }, page > 1 ? 'No more inputs.' : 'No inputs yet: upload some images.'));
  for (const input of body.inputs) {
    const box = h('input', { type: 'checkbox', 'aria-label': `Select ${input.id}`, onchange: () => {
      if (box.checked) selected.add(input.id); else selected.delete(input.id);
      card.classList.toggle('selected', box.checked); updateSelection();
    } });
    const card = h('div', { class: 'thumb', dataset: { inputId: input.id } },
      h('button', { type: 'button', class: 'open', 'aria-label': `Open input ${input.id}`, onclick: () => inputDialog(app, input.id, concepts) },
        h('img', { src: mediaUrl(app, input.id), alt: `Input ${input.id}`, loading: 'lazy' })),
      h('div', { class: 'cap' }, h('span', { class: 'id' }, box, ' ', input.id), conceptChips(input.data.concepts)));
    grid.append(card);
  }
  const base = link('apps', app, 'inputs') + `?${filter ? `filter=${encodeURIComponent(filter)}&` : ''}page=`;
  append(pager,
    page > 1 ? h('a', { class: 'button', href: base + (page - 1), rel: 'prev' }, '← Previous') : null,
    h('span', {}, `Page ${page}`),
    body.inputs.length === PAGE_SIZE ? h('a', { class: 'button', href: base + (page + 1), rel: 'next' }, 'Next →') : null);
}

function conceptsInput(concepts, name = 'concepts') {
  const listId = 'concepts-' + Math.random().toString(36).slice(2, 8);
  return [h('input', { name, list: listId, placeholder: 'e.g. cat, dog', autocomplete: 'off' }),
    h('datalist', { id: listId }, concepts.map((c) => h('option', { value: c })))];
}

function parseConcepts(text) {
  return text.split(',').map((s) => s.trim()).filter(Boolean);
}

function uploadDialog(app, concepts) {
  return openDialog('Upload inputs', (close) => {
    const files = h('input', { type: 'file', name: 'files', accept: 'image/*', multiple: true });
    const urls = h('textarea', { name: 'urls', rows: 3, placeholder: 'https://example.com/cat.jpg (one per line)' });
    const csv = h('input', { type: 'file', name: 'csv', accept: '.csv,.tsv,text/csv,text/tab-separated-values' });
    const [labels, datalist] = conceptsInput(concepts, 'labels');
    const negative = h('input', { type: 'checkbox', name: 'negative' });
    const drop = h('div', { class: 'drop', tabindex: '-1' }, 'Drop images here, or choose files below');
    let dropped = [];
    drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
    drop.addEventListener('dragleave', () => drop.classList.remove('over'));
    drop.addEventListener('drop', (e) => {
      e.preventDefault(); drop.classList.remove('over');
      dropped = [...e.dataTransfer.files].filter((f) => f.type.startsWith('image/'));
      drop.textContent = `${dropped.length} image(s) dropped`;
    });
    const bar = h('div', { class: 'progress hidden', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100' }, h('div', {}));
    const result = h('div', { id: 'upload-result', role: 'status' });
    return asyncForm({ id: 'upload-form' }, [
      h('h2', {}, 'Upload inputs'), drop,
      field('Image files', files, 'JPEG, PNG, WebP, GIF, BMP or TIFF'),
      field('Image URLs', urls),
      field('CSV or TSV file', csv, "Clarifai's columns: input.id, input.data.image.url, input.data.concepts[0].id, …"),
      field('Label the uploaded images with', labels, 'Concepts, comma-separated (optional)'), datalist,
      h('div', { class: 'field inline' }, negative, h('label', { for: negative.id = 'upload-negative' }, 'as negatives (value 0)')),
      bar, result,
      h('div', { class: 'dialog-actions' }, h('button', { type: 'button', onclick: () => close() }, 'Close'),
        h('button', { type: 'submit', class: 'primary' }, 'Upload')),
    ], async () => {
      clear(result);
      const value = negative.checked ? 0 : 1;
      const concepts = parseConcepts(labels.value).map((id) => ({ id, value }));
      const images = [...dropped, ...files.files];
      const urlList = urls.value.split(/\s+/).map((s) => s.trim()).filter(Boolean);
      const total = images.length + urlList.length;
      if (!total && !csv.files.length) throw Object.assign(new Error('Choose images, URLs or a CSV file first.'), { title: 'Nothing to upload' });
      let done = 0, ok = 0;
      const failures = [];
      bar.classList.remove('hidden');
      const progress = () => { bar.firstChild.style.width = `${total ? (100 * done / total) : 100}%`; bar.setAttribute('aria-valuenow', String(Math.round(100 * done / Math.max(total, 1)))); };
      const send = async (inputs, names) => {
        const body = await post(appPath(app, '/inputs'), { inputs }, { allow: [207, 400] });
        (body.inputs || []).forEach((input, i) => {
          const s = input.status || body.status;
          if (s && !OK_INPUT.has(s.code)) failures.push(`${names[i]}: ${s.details || s.description}`);
          else ok++;
        });
        if (!(body.inputs || []).length && body.status && body.status.code !== 10000) failures.push(body.status.details || body.status.description);
        done += inputs.length; progress();
      };
      for (let i = 0; i < images.length; i += 16) {
        const chunk = images.slice(i, i + 16);
        const inputs = await Promise.all(chunk.map(async (f) => ({ data: { image: { base64: await fileBase64(f) }, concepts } })));
        await send(inputs, chunk.map((f) => f.name));
      }
      for (let i = 0; i < urlList.length; i += 32) {
        const chunk = urlList.slice(i, i + 32);
        await send(chunk.map((url) => ({ data: { image: { url }, concepts } })), chunk);
      }
      if (csv.files.length) {
        const file = csv.files[0];
        const type = file.name.toLowerCase().endsWith('.tsv') ? 'text/tab-separated-values' : 'text/csv';
        const body = await post(appPath(app, '/inputs/import'), file, { contentType: type, allow: [207, 400] });
        ok += (body.imported || 0) + (body.already_present || 0);
        for (const row of body.rows || []) if (!OK_INPUT.has(row.status.code)) failures.push(`line ${row.line}: ${row.status.details || row.status.description}`);
      }
      append(result, h('p', { class: 'notice' }, `${ok} input(s) uploaded${failures.length ? `, ${failures.length} failed` : ''}.`));
      if (failures.length) append(result, h('div', { class: 'error-box' }, h('b', {}, 'Failed'), h('pre', {}, failures.join('\n'))));
      if (!failures.length) { toast(`${ok} input(s) uploaded`); close(); }
      render();
    });
  });
}

async function annotationsOf(app, inputId) {
  const body = await get(appPath(app, `/annotations?input_id=${encodeURIComponent(inputId)}&per_page=1000`));
  return body.annotations || [];
}

/** Removes concept `conceptId` from every annotation of the input that carries it. */
async function removeConcept(app, inputId, conceptId) {
  const annotations = (await annotationsOf(app, inputId)).filter((a) => (a.data.concepts || []).some((c) => c.id === conceptId));
  if (!annotations.length) return;
  await api('PATCH', appPath(app, '/annotations'), { action: 'remove',
    annotations: annotations.map((a) => ({ id: a.id, input_id: inputId, data: { concepts: [{ id: conceptId }] } })) });
}

async function addConcept(app, inputIds, conceptId, value) {
  for (const inputId of inputIds) await removeConcept(app, inputId, conceptId);
  for (let i = 0; i < inputIds.length; i += 128) {
    await post(appPath(app, '/annotations'), { annotations: inputIds.slice(i, i + 128).map((inputId) => ({ input_id: inputId, data: { concepts: [{ id: conceptId, value }] } })) });
  }
}

function inputDialog(app, inputId, concepts) {
  return openDialog(`Input ${inputId}`, (close, dialog) => {
    // However it closes (button, Escape), the grid shows the labels as they are now.
    dialog.addEventListener('close', () => { if (changed) render(); });
    const chips = h('div', { class: 'cap', id: 'input-concepts' });
    const body = h('div', { class: 'body' });
    const refresh = async () => {
      const { input } = await get(appPath(app, `/inputs/${encodeURIComponent(inputId)}`));
      clear(chips);
      append(chips, input.data.concepts.length ? conceptChips(input.data.concepts, async (c) => {
        await removeConcept(app, inputId, c.id); toast(`Removed ${c.id}`); refresh(); changed = true;
      }) : h('span', { class: 'muted' }, 'No concepts yet'));
      const info = input.data.image && input.data.image.image_info;
      meta.textContent = info ? `${info.width}×${info.height} ${info.format}, ${fmt.int(info.file_size)} bytes` : '';
    };
    let changed = false;
    const meta = h('div', { class: 'muted' });
    const [concept, datalist] = conceptsInput(concepts, 'concept');
    concept.required = true;
    const value = h('select', { name: 'value', 'aria-label': 'Positive or negative' }, h('option', { value: '1' }, 'positive'), h('option', { value: '0' }, 'negative'));
    refresh();
    append(body, h('h2', {}, inputId),
      h('img', { src: mediaUrl(app, inputId, 'image'), alt: `Input ${inputId}`, class: 'full' }),
      meta, h('h3', {}, 'Concepts'), chips,
      asyncForm({ id: 'label-form', class: 'toolbar' }, [concept, datalist, value, h('button', { type: 'submit', class: 'primary' }, 'Add concept')], async () => {
        await addConcept(app, [inputId], concept.value.trim(), Number(value.value));
        toast(`Labeled ${concept.value.trim()}`); concept.value = ''; changed = true; refresh();
      }),
      h('div', { class: 'dialog-actions' },
        h('button', { type: 'button', class: 'danger', onclick: async () => {
          if (!confirm(`Delete input ${inputId}?`)) return;
          await del(appPath(app, `/inputs/${encodeURIComponent(inputId)}`)); close(); render();
        } }, 'Delete input'),
        h('button', { type: 'button', onclick: () => close() }, 'Close')));
    return body;
  });
}

function labelMany(app, inputIds) {
  return openDialog('Label inputs', (close) => {
    const [concept, datalist] = conceptsInput([], 'concept');
    concept.required = true;
    const value = h('select', { name: 'value' }, h('option', { value: '1' }, 'positive'), h('option', { value: '0' }, 'negative'));
    return asyncForm({}, [h('h2', {}, `Label ${inputIds.length} inputs`), field('Concept', concept), datalist, field('Value', value),
      h('div', { class: 'dialog-actions' }, h('button', { type: 'button', onclick: () => close() }, 'Cancel'), h('button', { type: 'submit', class: 'primary' }, 'Label'))],
    async () => { await addConcept(app, inputIds, concept.value.trim(), Number(value.value)); toast('Labeled'); close(); render(); });
  });
}

async function addSelectedToDataset(app, inputIds) {
  const datasets = (await get(appPath(app, '/datasets?per_page=1000'))).datasets || [];
  return openDialog('Add to dataset', (close) => {
    const select = h('select', { name: 'dataset' }, datasets.map((d) => h('option', { value: d.id }, d.id)), h('option', { value: ':new' }, 'New dataset…'));
    const newId = h('input', { name: 'new_dataset', placeholder: 'dataset id' });
    return asyncForm({}, [h('h2', {}, `Add ${inputIds.length} inputs to a dataset`), field('Dataset', select), field('New dataset id (when creating one)', newId),
      h('div', { class: 'dialog-actions' }, h('button', { type: 'button', onclick: () => close() }, 'Cancel'), h('button', { type: 'submit', class: 'primary' }, 'Add'))],
    async () => {
      let id = select.value;
      if (id === ':new') { id = newId.value.trim(); await post(appPath(app, '/datasets'), { datasets: [{ id }] }); }
      await addInputsToDataset(app, id, inputIds);
      toast(`Added ${inputIds.length} inputs to ${id}`); close();
    });
  });
}

async function addInputsToDataset(app, datasetId, inputIds) {
  for (let i = 0; i < inputIds.length; i += 500) {
    await post(appPath(app, `/datasets/${encodeURIComponent(datasetId)}/inputs`), { dataset_inputs: inputIds.slice(i, i + 500).map((id) => ({ input: { id } })) });
  }
}

// ---------------------------------------------------------------- datasets

async function datasetsPage(root, app) {
  append(root, h('h1', {}, 'Datasets'));
  const id = h('input', { name: 'dataset_id', required: true, placeholder: 'my-dataset' });
  const description = h('input', { name: 'dataset_description', placeholder: 'optional' });
  const table = h('div', { class: 'table-wrap' }, spinner());
  append(root, h('div', { class: 'panel' }, h('h2', {}, 'Create a dataset'),
    asyncForm({ id: 'create-dataset' }, [h('div', { class: 'grid2' }, field('Dataset id', id), field('Description', description)),
      h('button', { type: 'submit', class: 'primary' }, 'Create dataset')], async () => {
      await post(appPath(app, '/datasets'), { datasets: [{ id: id.value.trim(), description: description.value.trim() }] });
      go(link('apps', app, 'datasets', id.value.trim()));
    })), table);
  const { datasets } = await get(appPath(app, '/datasets?per_page=1000'));
  clear(table);
  append(table, h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Dataset'), h('th', { class: 'num' }, 'Inputs'), h('th', {}, 'Description'), h('th', { class: 'hide-narrow' }, 'Created'))),
    h('tbody', {}, datasets.length ? datasets.map((d) => h('tr', {}, h('td', {}, h('a', { href: link('apps', app, 'datasets', d.id) }, d.id)),
      h('td', { class: 'num' }, fmt.int(d.inputs_count)), h('td', {}, d.description), h('td', { class: 'hide-narrow' }, fmt.date(d.created_at))))
      : h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'No datasets yet.')))));
}

async function datasetPage(root, app, datasetId) {
  const [{ dataset }, versions, concepts] = await Promise.all([
    get(appPath(app, `/datasets/${encodeURIComponent(datasetId)}`)),
    get(appPath(app, `/datasets/${encodeURIComponent(datasetId)}/versions?per_page=1000`)),
    conceptIds(app)]);
  append(root, h('h1', {}, 'Dataset ', h('code', {}, dataset.id)), dataset.description ? h('p', { class: 'muted' }, dataset.description) : null,
    h('div', { class: 'stats' }, h('div', { class: 'stat' }, h('b', { id: 'dataset-inputs' }, fmt.int(dataset.inputs_count)), h('span', {}, 'inputs')),
      h('div', { class: 'stat' }, h('b', {}, fmt.int(versions.dataset_versions.length)), h('span', {}, 'versions'))));
  const source = h('select', { name: 'source' }, h('option', { value: ':all' }, 'All inputs of the app'), h('option', { value: ':unlabeled' }, 'Unlabeled inputs'),
    concepts.map((c) => h('option', { value: c }, `Inputs labeled ${c}`)));
  const added = h('span', { class: 'muted', role: 'status' });
  append(root, h('div', { class: 'panel' }, h('h2', {}, 'Add inputs'),
    asyncForm({ id: 'add-inputs', class: 'toolbar' }, [source, h('button', { type: 'submit' }, 'Add inputs'), added], async () => {
      let path = appPath(app, '/inputs');
      if (source.value === ':unlabeled') path += '?unlabeled=true';
      else if (source.value !== ':all') path += `?concept_id=${encodeURIComponent(source.value)}`;
      added.textContent = 'Listing inputs…';
      const inputs = await listAll(path, 'inputs');
      await addInputsToDataset(app, datasetId, inputs.map((i) => i.id));
      toast(`Added ${inputs.length} inputs`);
      render();
    }), h('p', { class: 'muted' }, 'Or select inputs on the Inputs page and use “Add to dataset”.')));
  const fraction = h('input', { type: 'number', name: 'train_fraction', min: '0.05', max: '1', step: '0.05', value: '0.8' });
  const seed = h('input', { type: 'number', name: 'split_seed', min: '0', step: '1', value: '42' });
  const description = h('input', { name: 'version_description', placeholder: 'optional' });
  append(root, h('div', { class: 'panel' }, h('h2', {}, 'Create a version'),
    h('p', { class: 'muted' }, 'A version freezes the dataset’s inputs and labels, with a train/validation split made per concept.'),
    asyncForm({ id: 'create-version' }, [h('div', { class: 'grid2' }, field('Training share', fraction, 'The rest validates'), field('Split seed', seed), field('Description', description)),
      h('button', { type: 'submit', class: 'primary' }, 'Create version')], async () => {
      const body = await post(appPath(app, `/datasets/${encodeURIComponent(datasetId)}/versions`), { dataset_versions: [{
        description: description.value, split: { train_fraction: Number(fraction.value), seed: Number(seed.value) } }] });
      const version = body.dataset_versions[0];
      toast(`Created version ${version.id}`);
      go(link('apps', app, 'datasets', datasetId, 'versions', version.id));
    })));
  append(root, h('h2', {}, 'Versions'), h('div', { class: 'table-wrap' }, h('table', { id: 'dataset-versions' },
    h('thead', {}, h('tr', {}, h('th', {}, 'Version'), h('th', { class: 'num' }, 'Inputs'), h('th', { class: 'num' }, 'Train'), h('th', { class: 'num' }, 'Validation'), h('th', { class: 'hide-narrow' }, 'Created'))),
    h('tbody', {}, versions.dataset_versions.length ? versions.dataset_versions.map((v) => h('tr', {},
      h('td', {}, h('a', { href: link('apps', app, 'datasets', datasetId, 'versions', v.id) }, v.id), ' ', copyButton(v.id)),
      h('td', { class: 'num' }, fmt.int(v.metrics && v.metrics.inputs_count)),
      h('td', { class: 'num' }, fmt.int(v.metrics && v.metrics.train_inputs_count)),
      h('td', { class: 'num' }, fmt.int(v.metrics && v.metrics.validation_inputs_count)),
      h('td', { class: 'hide-narrow' }, fmt.date(v.created_at)))) : h('tr', {}, h('td', { colspan: 5, class: 'muted' }, 'No versions yet.'))))));
}

async function datasetVersionPage(root, app, datasetId, versionId) {
  const { dataset_version: v } = await get(appPath(app, `/datasets/${encodeURIComponent(datasetId)}/versions/${encodeURIComponent(versionId)}`));
  const m = v.metrics || { concepts: [] };
  append(root, h('h1', {}, 'Dataset ', h('a', { href: link('apps', app, 'datasets', datasetId) }, datasetId), ' version ', h('code', {}, v.id), copyButton(v.id)),
    v.description ? h('p', { class: 'muted' }, v.description) : null,
    h('div', { class: 'stats', id: 'version-metrics' },
      [['inputs', m.inputs_count], ['unlabeled', m.unlabeled_inputs_count], ['train', m.train_inputs_count], ['validation', m.validation_inputs_count], ['concepts', m.concepts.length]]
        .map(([label, value]) => h('div', { class: 'stat' }, h('b', {}, fmt.int(value)), h('span', {}, label)))),
    h('p', { class: 'muted' }, `Split: ${fmt.pct(v.split && v.split.train_fraction, 0)} train, seed ${v.split ? v.split.seed : '–'}. Created ${fmt.date(v.created_at)}.`));
  const max = Math.max(1, ...m.concepts.map((c) => c.positive_count));
  append(root, h('h2', {}, 'Positives per concept'), h('div', { class: 'panel bars' }, m.concepts.map((c) => h('div', { class: 'bar' },
    h('span', {}, c.id), h('div', { class: 'track', role: 'img', 'aria-label': `${c.id}: ${c.positive_count} positives` }, barFill(c.positive_count / max)), h('span', { class: 'num' }, fmt.int(c.positive_count))))));
  append(root, h('div', { class: 'table-wrap' }, h('table', { id: 'concept-counts' },
    h('thead', {}, h('tr', {}, h('th', {}, 'Concept'), h('th', { class: 'num' }, 'Positives'), h('th', { class: 'num' }, 'Negatives'), h('th', { class: 'num' }, 'Train positives'), h('th', { class: 'num' }, 'Validation positives'))),
    h('tbody', {}, m.concepts.map((c) => h('tr', {}, h('td', {}, c.id), h('td', { class: 'num' }, fmt.int(c.positive_count)), h('td', { class: 'num' }, fmt.int(c.negative_count)),
      h('td', { class: 'num' }, fmt.int(c.train_positive_count)), h('td', { class: 'num' }, fmt.int(c.validation_positive_count))))))));
  append(root, h('p', {}, h('a', { class: 'button primary', href: link('apps', app, 'models') + `?dataset=${encodeURIComponent(datasetId)}&version=${encodeURIComponent(v.id)}` }, 'Train a model on this version')));
}

function barFill(fraction) {
  const div = h('div', {});
  div.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  return div;
}

// ---------------------------------------------------------------- models

async function modelsPage(root, app) {
  append(root, h('h1', {}, 'Models', h('button', { type: 'button', class: 'primary', id: 'add-model', onclick: () => addModelDialog(app) }, 'Add model')));
  const table = h('div', { class: 'table-wrap' }, spinner());
  append(root, table);
  const { models } = await get(appPath(app, '/models?per_page=1000'));
  clear(table);
  append(table, h('table', { id: 'models' }, h('thead', {}, h('tr', {}, h('th', {}, 'Model'), h('th', {}, 'Type'), h('th', {}, 'Latest version'), h('th', { class: 'hide-narrow' }, 'Created'))),
    h('tbody', {}, models.length ? models.map((m) => h('tr', {},
      h('td', {}, h('a', { href: link('apps', app, 'models', m.id) }, m.name || m.id), m.name && m.name !== m.id ? h('div', { class: 'muted mono' }, m.id) : null),
      h('td', {}, m.model_type_id),
      h('td', {}, m.model_version ? [statusBadge(m.model_version.status), ' ', h('code', {}, m.model_version.id)] : h('span', { class: 'muted' }, 'not trained')),
      h('td', { class: 'hide-narrow' }, fmt.date(m.created_at)))) : h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'No models yet: “Add model” starts one.')))));
}

async function addModelDialog(app) {
  const { model_types: types } = await get(appPath(app, '/models/types'));
  return openDialog('Add model', (close) => {
    const choices = types.map((t, i) => h('label', { class: 'card' }, h('input', { type: 'radio', name: 'model_type', value: t.id, checked: i === 0 }), ' ',
      h('b', {}, t.title), h('div', { class: 'muted' }, t.description)));
    const id = h('input', { name: 'model_id', required: true, pattern: '[A-Za-z0-9_\\-]+', placeholder: 'my-classifier' });
    const name = h('input', { name: 'model_name', placeholder: 'optional' });
    return asyncForm({ id: 'add-model-form' }, [h('h2', {}, 'Add model'), h('fieldset', { class: 'cards' }, h('legend', {}, 'Model type'), choices),
      h('div', { class: 'grid2' }, field('Model id', id), field('Name', name)),
      h('div', { class: 'dialog-actions' }, h('button', { type: 'button', onclick: () => close() }, 'Cancel'), h('button', { type: 'submit', class: 'primary' }, 'Continue to training'))],
    async (form) => {
      const type = form.querySelector('input[name="model_type"]:checked').value;
      await post(appPath(app, '/models'), { model: { id: id.value.trim(), name: name.value.trim(), model_type_id: type } });
      close();
      const { query } = parseRoute();
      go(link('apps', app, 'models', id.value.trim(), 'train') + (query.toString() ? `?${query}` : ''));
    });
  });
}

// ---------------------------------------------------------------- training configuration

/** Parameters shown in their own fields rather than the template's list. */
const OWN_FIELDS = new Set(['dataset_id', 'dataset_version_id', 'template', 'invalid_data_tolerance_percent']);

function paramControl(spec, value) {
  const name = `param-${spec.name}`;
  let control;
  if (spec.type === 'bool') control = h('input', { type: 'checkbox', name, checked: value === true });
  else if (spec.type === 'choice') control = h('select', { name }, spec.options.map((o) => h('option', { value: o, selected: String(value) === o }, o)));
  else control = h('input', { type: 'number', name, min: String(spec.min), max: String(spec.max), step: spec.type === 'int' ? '1' : 'any', value: String(value), required: true });
  control.dataset.param = spec.name;
  control.dataset.kind = spec.type;
  return control;
}

function paramValue(control) {
  if (control.dataset.kind === 'bool') return control.checked;
  if (control.dataset.kind === 'int') return parseInt(control.value, 10);
  if (control.dataset.kind === 'float') return parseFloat(control.value);
  return control.value;
}

function rangeText(spec) {
  if (spec.type === 'int' || spec.type === 'float') return `${spec.min} – ${spec.max}`;
  if (spec.type === 'choice') return spec.options.join(' | ');
  return 'yes / no';
}

async function trainPage(root, app, modelId) {
  const { query } = parseRoute();
  const [{ model }, { model_types: types }, { datasets }] = await Promise.all([
    get(appPath(app, `/models/${encodeURIComponent(modelId)}`)), get(appPath(app, '/models/types')), get(appPath(app, '/datasets?per_page=1000'))]);
  const type = types.find((t) => t.id === model.model_type_id) || types[0];
  const templates = [...type.templates].sort((a, b) => Number(b.recommended) - Number(a.recommended));
  append(root, h('h1', {}, 'Train ', h('a', { href: link('apps', app, 'models', modelId) }, model.name || model.id)));
  if (!datasets.length) {
    append(root, h('div', { class: 'notice' }, 'Training needs a dataset version. ', h('a', { href: link('apps', app, 'datasets') }, 'Create a dataset'), ' first.'));
    return;
  }
  const dataset = h('select', { name: 'dataset_id', required: true }, h('option', { value: '' }, 'Choose a dataset'), datasets.map((d) => h('option', { value: d.id, selected: d.id === query.get('dataset') }, d.id)));
  const version = h('select', { name: 'dataset_version_id', required: true, disabled: true }, h('option', { value: '' }, 'Choose a dataset first'));
  const conceptBox = h('div', { class: 'cap', id: 'train-concepts' }, h('span', { class: 'muted' }, 'Choose a dataset version first'));
  const tolerance = h('input', { type: 'number', name: 'invalid_data_tolerance_percent', min: '0', max: '100', step: 'any', value: '5' });
  const template = h('select', { name: 'template' }, templates.map((t) => h('option', { value: t.id }, t.id + (t.recommended ? ' (recommended)' : ''))));
  const templateInfo = h('p', { class: 'muted' });
  const params = h('div', { class: 'grid2', id: 'hyperparameters' });
  const estimate = h('div', { class: 'notice', id: 'estimate', role: 'status', 'aria-live': 'polite' }, 'Choose a dataset version to see the estimated duration.');
  const trainButton = h('button', { type: 'submit', class: 'primary', id: 'train-button' }, 'Train');
  let versions = [];

  const templateSpec = () => templates.find((t) => t.id === template.value);
  const showTemplate = () => {
    const t = templateSpec();
    templateInfo.textContent = `${t.description} Architecture ${t.architecture}; pretrained weights: ${t.pretrained_weights.join(', ')}.`;
    clear(params);
    for (const spec of t.params) {
      if (OWN_FIELDS.has(spec.name)) { if (spec.name === 'invalid_data_tolerance_percent') tolerance.value = String(spec.default); continue; }
      append(params, field(spec.name, paramControl(spec, spec.default), `${spec.description} (${rangeText(spec)}; default ${JSON.stringify(spec.default)})`));
    }
  };
  const showVersions = async () => {
    clear(version);
    if (!dataset.value) { version.disabled = true; append(version, h('option', { value: '' }, 'Choose a dataset first')); return; }
    versions = (await get(appPath(app, `/datasets/${encodeURIComponent(dataset.value)}/versions?per_page=1000`))).dataset_versions;
    version.disabled = !versions.length;
    if (!versions.length) append(version, h('option', { value: '' }, 'This dataset has no version yet'));
    append(version, versions.map((v, i) => h('option', { value: v.id, selected: query.get('version') ? v.id === query.get('version') : i === 0 },
      `${v.id} — ${fmt.int(v.metrics && v.metrics.inputs_count)} inputs, ${fmt.date(v.created_at)}`)));
    showConcepts();
  };
  const showConcepts = () => {
    clear(conceptBox);
    const v = versions.find((x) => x.id === version.value);
    if (!v) { append(conceptBox, h('span', { class: 'muted' }, 'Choose a dataset version first')); return; }
    for (const c of v.metrics.concepts) {
      const box = h('input', { type: 'checkbox', name: 'concept', value: c.id, checked: c.positive_count > 0 });
      append(conceptBox, h('label', { class: 'chip' }, box, ` ${c.id} (${c.positive_count})`));
    }
  };
  const request = () => {
    const p = { template: template.value, dataset_id: dataset.value, dataset_version_id: version.value, invalid_data_tolerance_percent: Number(tolerance.value) };
    for (const control of params.querySelectorAll('[data-param]')) p[control.dataset.param] = paramValue(control);
    const concepts = [...conceptBox.querySelectorAll('input[name="concept"]:checked')].map((b) => ({ id: b.value }));
    return { model_versions: [{ train_info: { params: p }, output_info: { data: { concepts }, output_config: { concepts_mutually_exclusive: p.concepts_mutually_exclusive === true } } }] };
  };
  let estimateSeq = 0;
  const updateEstimate = debounce(async () => {
    if (!version.value) return;
    const seq = ++estimateSeq;
    clear(estimate); append(estimate, spinner('Estimating the duration (the first time for a configuration, a short calibration run on the server)…'));
    try {
      const body = await post(appPath(app, `/models/${encodeURIComponent(modelId)}/versions/time_estimate`), request());
      if (seq !== estimateSeq) return;
      const e = body.training_time_estimates[0];
      const b = e.breakdown || {};
      clear(estimate);
      append(estimate, h('b', {}, 'Estimated duration: ', h('span', { id: 'estimate-seconds', dataset: { seconds: String(e.seconds) } }, fmt.duration(e.seconds))),
        h('div', { class: 'muted' }, `${fmt.int(b.steps)} steps at ${fmt.num(b.train_images_per_second, 1)} training images/s on this machine (${b.throughput_source || 'measured'}).`));
    } catch (error) {
      if (seq !== estimateSeq) return;
      clear(estimate); append(estimate, errorBox(error));
    }
  }, 700);

  template.addEventListener('change', () => { showTemplate(); updateEstimate(); });
  dataset.addEventListener('change', async () => { await showVersions(); updateEstimate(); });
  version.addEventListener('change', () => { showConcepts(); updateEstimate(); });

  const form = asyncForm({ id: 'train-form' }, [
    h('div', { class: 'panel' }, h('h2', {}, 'Data'), h('div', { class: 'grid2' }, field('Dataset', dataset), field('Dataset version', version),
      field('Invalid data tolerance (%)', tolerance, 'Share of unreadable inputs that may be skipped before the run stops')),
    h('fieldset', {}, h('legend', {}, 'Concepts'), conceptBox)),
    h('div', { class: 'panel' }, h('h2', {}, 'Template'), field('Template', template), templateInfo, h('h3', {}, 'Hyperparameters'), params),
    estimate, h('div', { class: 'toolbar' }, trainButton, h('a', { class: 'button', href: link('apps', app, 'models', modelId) }, 'Cancel')),
  ], async () => {
    const body = await post(appPath(app, `/models/${encodeURIComponent(modelId)}/versions`), request());
    toast(`Training version ${body.model_version.id} queued`);
    go(link('apps', app, 'models', modelId, 'versions', body.model_version.id));
  });
  form.addEventListener('input', (event) => { if (event.target.closest('#hyperparameters') || event.target === tolerance || event.target.name === 'concept') updateEstimate(); });
  append(root, form);
  showTemplate();
  if (dataset.value) { await showVersions(); updateEstimate(); }
}

// ---------------------------------------------------------------- charts (SVG)

const SVG_NS = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) el.setAttribute(k, v);
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

/** A tick label short enough for the axis: 0.00002 → 2e-5. */
function tickLabel(t) {
  if (t !== 0 && Math.abs(t) < 0.001) return t.toExponential(0);
  return String(Number(t.toPrecision(6)));
}

function niceTicks(min, max, count = 5) {
  if (!(max > min)) return [min];
  const step0 = (max - min) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((m) => m >= step0) || step0;
  const ticks = [];
  for (let t = Math.ceil(min / step) * step; t <= max + 1e-9; t += step) ticks.push(Number(t.toFixed(10)));
  return ticks;
}

/**
 * A line chart: series = [{label, points: [[x, y]...], color, dashed}]. Options: xLabel, yLabel,
 * x/y domains ([min, max], default from the data), square (for ROC/PR), marker ({x, y} to dot).
 */
function lineChart(title, series, options = {}) {
  const W = 420, H = options.square ? 360 : 240, L = 48, R = 12, T = 10, B = 36;
  const all = series.flatMap((x) => x.points);
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const [x0, x1] = options.x || [Math.min(0, ...xs), Math.max(1, ...xs)];
  let [y0, y1] = options.y || [Math.min(...ys, 0), Math.max(...ys, 1e-6)];
  if (!(y1 > y0)) y1 = y0 + 1;
  const px = (x) => L + (W - L - R) * ((x - x0) / ((x1 - x0) || 1));
  const py = (y) => T + (H - T - B) * (1 - (y - y0) / ((y1 - y0) || 1));
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${title}: ${series.map((x) => x.label).join(', ')}` });
  for (const t of niceTicks(y0, y1, 4)) {
    svg.append(s('line', { x1: L, x2: W - R, y1: py(t), y2: py(t), stroke: '#e6e9ef' }),
      s('text', { x: L - 6, y: py(t) + 4, 'text-anchor': 'end', 'font-size': 11, fill: '#5c6577' }, tickLabel(t)));
  }
  for (const t of niceTicks(x0, x1, 5)) {
    svg.append(s('text', { x: px(t), y: H - B + 16, 'text-anchor': 'middle', 'font-size': 11, fill: '#5c6577' }, tickLabel(t)));
  }
  svg.append(s('line', { x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: '#9aa3b5' }), s('line', { x1: L, x2: L, y1: T, y2: H - B, stroke: '#9aa3b5' }));
  if (options.xLabel) svg.append(s('text', { x: (L + W - R) / 2, y: H - 4, 'text-anchor': 'middle', 'font-size': 12, fill: '#1d2330' }, options.xLabel));
  if (options.yLabel) svg.append(s('text', { x: 12, y: (T + H - B) / 2, 'text-anchor': 'middle', 'font-size': 12, fill: '#1d2330', transform: `rotate(-90 12 ${(T + H - B) / 2})` }, options.yLabel));
  if (options.diagonal) svg.append(s('line', { x1: px(x0), y1: py(y0), x2: px(x1), y2: py(y1), stroke: '#c5cbd6', 'stroke-dasharray': '4 4' }));
  series.forEach((line, i) => {
    const color = line.color || COLORS[i % COLORS.length];
    if (!line.points.length) return;
    const d = line.points.map((p, j) => `${j ? 'L' : 'M'}${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join('');
    svg.append(s('path', { d, fill: 'none', stroke: color, 'stroke-width': 2, 'stroke-dasharray': line.dashed ? '5 4' : null }));
    if (line.points.length === 1 || line.dots) for (const p of line.points) svg.append(s('circle', { cx: px(p[0]), cy: py(p[1]), r: 3, fill: color }));
  });
  for (const m of options.markers || []) svg.append(s('circle', { cx: px(m.x), cy: py(m.y), r: 5, fill: m.color || '#000', stroke: '#fff', 'stroke-width': 2 }));
  return h('figure', { class: 'chart', dataset: { chart: options.id || title } }, h('h3', {}, title), svg,
    h('figcaption', { class: 'legend' }, series.map((line, i) => h('span', {}, h('i', { class: 'swatch', dataset: { color: line.color || COLORS[i % COLORS.length] } }), line.label))));
}

/** Paints legend swatches (colours set through the CSSOM, which the page's CSP allows). */
function paintSwatches(root) {
  root.querySelectorAll('i.swatch').forEach((i) => { i.style.background = i.dataset.color; });
  return root;
}

// ---------------------------------------------------------------- model, versions, log

const versionPath = (app, modelId, versionId, rest = '') => appPath(app, `/models/${encodeURIComponent(modelId)}/versions/${encodeURIComponent(versionId)}${rest}`);
const isFinal = (v) => FINAL_CODES.has(v.status && v.status.code);

function progressCell(v) {
  const p = v.progress || {};
  if (v.status.code === 21101) {
    return h('div', {}, h('div', { class: 'progress', role: 'progressbar', 'aria-valuenow': String(Math.round(p.percent_completed || 0)), 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-label': 'Training progress' }, barFill((p.percent_completed || 0) / 100)),
      h('div', { class: 'muted' }, `${fmt.num(p.percent_completed, 0)}% · ETA ${fmt.duration(p.time_remaining)}`));
  }
  const t = v.training_time || {};
  return t.actual_seconds ? fmt.duration(t.actual_seconds) : (t.estimated_seconds ? `~${fmt.duration(t.estimated_seconds)}` : '–');
}

function accuracyOf(v) {
  const summary = v.metrics && v.metrics.summary;
  if (summary && summary.top1_accuracy !== undefined && summary.top1_accuracy !== null) return summary.top1_accuracy;
  const history = v.progress && v.progress.history;
  const last = history && history.length ? history[history.length - 1] : null;
  return last ? last.validation_accuracy : null;
}

async function cancelVersion(app, modelId, versionId) {
  await post(versionPath(app, modelId, versionId, '/cancel'), {});
  toast(`Canceling ${versionId}…`);
}

async function deleteVersion(app, modelId, versionId) {
  if (!confirm(`Delete version ${versionId}? A running training stops and its files are removed.`)) return false;
  await del(versionPath(app, modelId, versionId));
  toast(`Deleted ${versionId}`);
  return true;
}

async function modelPage(root, app, modelId) {
  const { model } = await get(appPath(app, `/models/${encodeURIComponent(modelId)}`));
  append(root, h('h1', {}, model.name || model.id, copyButton(model.id, 'Copy model id'),
    h('a', { class: 'button primary', href: link('apps', app, 'models', modelId, 'train'), id: 'train-new' }, 'Train a new version'),
    h('a', { class: 'button', href: link('apps', app, 'predict') + `?model=${encodeURIComponent(modelId)}` }, 'Predict')),
    h('p', { class: 'muted' }, `${model.model_type_id} · created ${fmt.date(model.created_at)}`));
  const tbody = h('tbody', {});
  append(root, h('h2', {}, 'Versions'), h('div', { class: 'table-wrap' }, h('table', { id: 'versions' },
    h('thead', {}, h('tr', {}, h('th', {}, 'Version'), h('th', {}, 'Status'), h('th', { class: 'hide-narrow' }, 'Created'), h('th', {}, 'Duration'), h('th', { class: 'num' }, 'Accuracy'), h('th', {}, 'Actions'))), tbody)));
  const board = h('div', { id: 'model-leaderboard' });
  append(root, h('h2', {}, 'Leaderboard'), board);
  const refresh = async () => {
    const { model_versions: versions } = await get(appPath(app, `/models/${encodeURIComponent(modelId)}/versions?per_page=1000`));
    clear(tbody);
    if (!versions.length) append(tbody, h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No versions yet: train one.')));
    for (const v of versions) {
      const final = isFinal(v);
      append(tbody, h('tr', { dataset: { versionId: v.id, code: String(v.status.code) } },
        h('td', {}, h('a', { href: link('apps', app, 'models', modelId, 'versions', v.id), class: 'mono' }, v.id), ' ', copyButton(v.id)),
        h('td', {}, statusBadge(v.status)), h('td', { class: 'hide-narrow' }, fmt.date(v.created_at)), h('td', {}, progressCell(v)),
        h('td', { class: 'num' }, fmt.pct(accuracyOf(v))),
        h('td', {}, h('div', { class: 'toolbar' },
          h('a', { class: 'button small', href: link('apps', app, 'models', modelId, 'versions', v.id) }, 'Details'),
          h('button', { type: 'button', class: 'small', onclick: () => logDrawer(app, modelId, v.id) }, 'View log'),
          h('a', { class: 'button small', href: `/v2/users/${USER}${versionPath(app, modelId, v.id, '/log')}?format=text`, download: `${modelId}-${v.id}.log` }, 'Download log'),
          v.status.code === 21100 ? h('a', { class: 'button small', href: link('apps', app, 'models', modelId, 'versions', v.id, 'evaluation') }, 'Evaluate') : null,
          final ? null : h('button', { type: 'button', class: 'small danger', onclick: async () => { await cancelVersion(app, modelId, v.id); refresh(); } }, 'Cancel training'),
          h('button', { type: 'button', class: 'small danger', onclick: async () => { if (await deleteVersion(app, modelId, v.id)) refresh(); } }, 'Delete')))));
    }
    return versions.some((v) => !isFinal(v));
  };
  await refresh();
  every(2000, async () => { await refresh(); return true; });
  leaderboard(board, appPath(app, `/models/${encodeURIComponent(modelId)}/leaderboard`), app);
}

/** The log in a side drawer, streamed with server-sent events while the run goes on. */
function logDrawer(app, modelId, versionId) {
  document.querySelectorAll('.drawer').forEach((d) => d.remove());
  const opener = document.activeElement;
  const base = `/v2/users/${USER}${versionPath(app, modelId, versionId, '/log')}`;
  const pre = h('pre', { id: 'log-lines', tabindex: '0', 'aria-label': 'Training log' });
  const state = h('span', { class: 'muted', id: 'log-state' }, 'connecting…');
  const source = new EventSource(`${base}/stream`);
  const close = () => { source.close(); drawer.remove(); document.removeEventListener('keydown', onKey); if (opener && opener.focus) opener.focus(); };
  const onKey = (e) => { if (e.key === 'Escape') close(); };
  const closeButton = h('button', { type: 'button', onclick: close, 'aria-label': 'Close the log' }, 'Close');
  const drawer = h('aside', { class: 'drawer', role: 'dialog', 'aria-label': `Training log of ${versionId}` },
    h('header', {}, h('h2', {}, `Log · ${versionId}`), state,
      h('a', { class: 'button small', href: `${base}?format=text`, download: `${modelId}-${versionId}.log`, id: 'log-download' }, 'Download'),
      h('a', { class: 'button small', href: `${base}?format=jsonl`, download: `${modelId}-${versionId}.jsonl` }, 'JSON lines'), closeButton), pre);
  source.addEventListener('log', (event) => {
    const entry = JSON.parse(event.data);
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 20;
    append(pre, h('span', { class: `log-${entry.level}` }, `${entry.time.slice(11, 19)} ${entry.level.padEnd(5)} ${entry.message}\n`));
    if (atBottom) pre.scrollTop = pre.scrollHeight;
    state.textContent = 'live';
  });
  source.addEventListener('done', () => { state.textContent = 'finished'; source.close(); });
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) state.textContent = 'disconnected'; };
  document.addEventListener('keydown', onKey);
  onLeave(close);
  document.body.append(drawer);
  closeButton.focus();
}

/** Follows a version's log by long polling; calls `onEntries` with each batch. */
function followLog(app, modelId, versionId, onEntries) {
  let after = 0;
  let stopped = false;
  onLeave(() => { stopped = true; });
  (async () => {
    while (!stopped) {
      try {
        const body = await get(`${versionPath(app, modelId, versionId, '/log')}?after=${after}&limit=1000&wait_seconds=20`);
        if (stopped) return;
        if (body.log_entries.length) onEntries(body.log_entries);
        after = body.next_after;
        if (body.done && !body.log_entries.length) return;
      } catch (error) {
        console.warn(error);
        await new Promise((r) => setTimeout(r, 3000));
      }
    }
  })();
}

async function versionPage(root, app, modelId, versionId) {
  const header = h('h1', {}, h('a', { href: link('apps', app, 'models', modelId) }, modelId), ' / ', h('code', {}, versionId), copyButton(versionId));
  const status = h('div', { id: 'version-status' });
  const actions = h('div', { class: 'toolbar' });
  const failure = h('div', {});
  const charts = h('div', { class: 'charts', id: 'training-charts' });
  const details = h('div', {});
  append(root, header, status, actions, failure, h('h2', {}, 'Training curves'), charts, details);

  // Curves from the log: a loss point per step, validation metrics per epoch.
  const steps = [], epochs = [];
  const drawCharts = () => {
    clear(charts);
    const loss = [{ label: 'training loss (per step)', points: steps.map((e) => [e.step, e.loss]) }];
    const epochLoss = epochs.filter((e) => e.validation_loss !== null && e.validation_loss !== undefined);
    if (epochLoss.length) loss.push({ label: 'validation loss (per epoch)', points: epochLoss.map((e) => [e.step, e.validation_loss]), dots: true, dashed: true });
    append(charts, lineChart('Loss', loss, { xLabel: 'step', yLabel: 'loss', id: 'loss', x: [0, Math.max(1, ...steps.map((e) => e.step))] }));
    const acc = epochs.filter((e) => e.validation_accuracy !== null && e.validation_accuracy !== undefined);
    append(charts, lineChart('Validation accuracy', [{ label: 'top-1 accuracy', points: acc.map((e) => [e.epoch, e.validation_accuracy]), dots: true }],
      { xLabel: 'epoch', yLabel: 'accuracy', y: [0, 1], x: [0, Math.max(1, ...acc.map((e) => e.epoch))], id: 'accuracy' }));
    if (steps.length) append(charts, lineChart('Learning rate', [{ label: 'learning rate', points: steps.map((e) => [e.step, e.learning_rate]) }], { xLabel: 'step', id: 'lr', x: [0, Math.max(1, ...steps.map((e) => e.step))] }));
    paintSwatches(charts);
  };
  const redraw = debounce(drawCharts, 300);
  let lastStep = 0;
  followLog(app, modelId, versionId, (entries) => {
    for (const entry of entries) {
      const d = entry.data || {};
      if (entry.event === 'step' && typeof d.loss === 'number') { steps.push({ step: d.step, loss: d.loss, learning_rate: d.learning_rate }); lastStep = d.step; }
      if (entry.event === 'epoch') epochs.push({ epoch: (d.epoch || 0) + 1, step: lastStep, validation_loss: d.validation_loss, validation_accuracy: d.validation_accuracy, train_loss: d.train_loss });
    }
    redraw();
  });
  drawCharts();

  const refresh = async () => {
    const { model_version: v } = await get(versionPath(app, modelId, versionId));
    const p = v.progress || {};
    const t = v.training_time || {};
    clear(status);
    append(status, h('div', { class: 'stats' },
      h('div', { class: 'stat' }, h('b', {}, statusBadge(v.status)), h('span', {}, v.status.details || 'status')),
      v.status.code === 21101 ? h('div', { class: 'stat' }, h('b', {}, `${fmt.num(p.percent_completed, 0)}%`), h('span', {}, `epoch ${p.epoch || '–'}, step ${p.step || 0} of ${p.total_steps || '–'}`)) : null,
      v.status.code === 21101 ? h('div', { class: 'stat' }, h('b', { id: 'eta' }, fmt.duration(p.time_remaining)), h('span', {}, 'remaining')) : null,
      h('div', { class: 'stat' }, h('b', {}, fmt.pct(accuracyOf(v) ?? (epochs.length ? epochs[epochs.length - 1].validation_accuracy : null))), h('span', {}, 'validation accuracy')),
      h('div', { class: 'stat' }, h('b', {}, t.actual_seconds ? fmt.duration(t.actual_seconds) : '–'), h('span', {}, `took (estimated ${fmt.duration(t.estimated_seconds)})`))),
      v.status.code === 21101 || v.status.code === 21103 ? h('div', { class: 'progress', role: 'progressbar', 'aria-label': 'Training progress', 'aria-valuenow': String(Math.round(p.percent_completed || 0)), 'aria-valuemin': '0', 'aria-valuemax': '100' }, barFill((p.percent_completed || 0) / 100)) : null);
    clear(actions);
    append(actions,
      h('button', { type: 'button', id: 'view-log', onclick: () => logDrawer(app, modelId, versionId) }, 'View training log'),
      h('a', { class: 'button', href: `/v2/users/${USER}${versionPath(app, modelId, versionId, '/log')}?format=text`, download: `${modelId}-${versionId}.log` }, 'Download log'),
      v.status.code === 21100 ? h('a', { class: 'button primary', id: 'open-evaluation', href: link('apps', app, 'models', modelId, 'versions', versionId, 'evaluation') }, 'Evaluation') : null,
      v.status.code === 21100 ? h('a', { class: 'button', href: link('apps', app, 'predict') + `?model=${encodeURIComponent(modelId)}&version=${encodeURIComponent(versionId)}` }, 'Predict') : null,
      v.status.code === 21100 ? h('button', { type: 'button', onclick: () => exportVersion(app, modelId, versionId, actions) }, 'Export ONNX') : null,
      isFinal(v) ? null : h('button', { type: 'button', class: 'danger', id: 'cancel-training', onclick: async () => { await cancelVersion(app, modelId, versionId); refresh(); } }, 'Cancel training'),
      h('button', { type: 'button', class: 'danger', onclick: async () => { if (await deleteVersion(app, modelId, versionId)) go(link('apps', app, 'models', modelId)); } }, 'Delete'));
    clear(failure);
    if (v.failure) {
      append(failure, h('div', { class: 'error-box', id: 'failure' }, h('b', {}, `Failed while ${v.failure.stage}: `), v.failure.reason,
        v.failure.hint ? h('p', {}, 'Hint: ', v.failure.hint) : null,
        v.failure.last_log_lines && v.failure.last_log_lines.length ? h('pre', {}, v.failure.last_log_lines.join('\n')) : null));
    }
    if (v.invalid_inputs && v.invalid_inputs.length) {
      append(failure, h('details', { class: 'panel' }, h('summary', {}, `${v.invalid_inputs.length} invalid input(s) skipped or refused`),
        h('ul', {}, v.invalid_inputs.map((i) => h('li', {}, h('code', {}, i.input_id), ': ', i.reason)))));
    }
    clear(details);
    const params = v.train_info.params || {};
    append(details, h('h2', {}, 'Configuration'), h('div', { class: 'table-wrap' }, h('table', { id: 'version-params' }, h('tbody', {},
      h('tr', {}, h('th', {}, 'concepts'), h('td', {}, (v.output_info.data.concepts || []).map((c) => c.id).join(', '))),
      Object.entries(params).map(([k, value]) => h('tr', {}, h('th', {}, k), h('td', { class: 'mono' }, typeof value === 'object' ? JSON.stringify(value) : String(value))))))));
    if (v.progress && v.progress.history && !epochs.length) {
      for (const e of v.progress.history) epochs.push({ epoch: e.epoch + 1, step: e.step || 0, validation_loss: e.validation_loss, validation_accuracy: e.validation_accuracy });
      drawCharts();
    }
    return !isFinal(v);
  };
  if (await refresh()) every(2000, refresh);
}

async function exportVersion(app, modelId, versionId, where) {
  const note = h('span', { class: 'muted' }, spinner('Exporting to ONNX and checking parity…'));
  where.append(note);
  try {
    const body = await post(versionPath(app, modelId, versionId, '/exports'), {});
    const e = body.export;
    clear(note);
    append(note, h('a', { class: 'button', href: `/v2/users/${USER}${versionPath(app, modelId, versionId, '/exports/model.onnx')}`, download: `${modelId}-${versionId}.onnx` }, 'Download model.onnx'),
      e.parity ? ` top-1 agreement ${fmt.pct(e.parity.top1_agreement)}, largest logit difference ${fmt.num(e.parity.max_abs_logit_difference ?? e.parity.max_abs_difference, 6)}` : '');
  } catch (error) { clear(note); append(note, errorBox(error)); }
}

// ---------------------------------------------------------------- evaluation

/** Precision and recall of a concept at threshold t, read off its stored precision-recall curve. */
function atThreshold(concept, t) {
  let best = null;
  for (const point of concept.pr_curve || []) {
    if (point.threshold >= t && (best === null || point.threshold < best.threshold)) best = point;
  }
  const precision = best ? best.precision : 0;
  const recall = best ? best.recall : 0;
  const f1 = precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0;
  return { precision, recall, f1, point: best };
}

async function evaluationPage(root, app, modelId, versionId, query) {
  const [{ model_version: v }, { eval_metrics: evaluations }, { datasets }] = await Promise.all([
    get(versionPath(app, modelId, versionId)), get(versionPath(app, modelId, versionId, '/evaluations?per_page=100')), get(appPath(app, '/datasets?per_page=1000'))]);
  append(root, h('h1', {}, 'Evaluation of ', h('a', { href: link('apps', app, 'models', modelId) }, modelId), ' / ',
    h('a', { href: link('apps', app, 'models', modelId, 'versions', versionId) }, h('code', {}, versionId))));
  // The sets this version was evaluated on: its training run's held-out split, then explicit ones.
  const sets = [];
  if (v.metrics) sets.push({ key: '', label: `Held-out validation split of ${v.train_info.params.dataset_id} ${v.train_info.params.dataset_version_id} (training run)`, metrics: v.metrics, app });
  for (const e of evaluations) {
    const gt = e.ground_truth_dataset || {};
    const where = gt.id ? `${gt.app_id && gt.app_id !== app ? gt.app_id + '/' : ''}${gt.id} ${gt.version ? gt.version.id : ''}` : 'held-out split';
    sets.push({ key: e.id, label: `${where} · ${e.split || 'all'} · ${fmt.date(e.created_at)}`, evaluation: e, app: gt.app_id || app });
  }
  const chosen = query.get('evaluation') || (sets[0] ? sets[0].key : '');
  const picker = h('select', { id: 'evaluation-set', 'aria-label': 'Evaluation set' }, sets.map((x) => h('option', { value: x.key, selected: x.key === chosen }, x.label)));
  picker.addEventListener('change', () => go(link('apps', app, 'models', modelId, 'versions', versionId, 'evaluation') + (picker.value ? `?evaluation=${encodeURIComponent(picker.value)}` : '')));
  const target = h('select', { name: 'eval_dataset', 'aria-label': 'Dataset to evaluate on' }, h('option', { value: '' }, 'the held-out validation split'),
    datasets.map((d) => h('option', { value: d.id }, `all of dataset ${d.id} (latest version)`)));
  const evalState = h('span', { class: 'muted', id: 'evaluate-state', role: 'status' });
  append(root, h('div', { class: 'toolbar' }, sets.length ? picker : h('span', { class: 'muted' }, 'No evaluation yet.'),
    asyncForm({ id: 'evaluate-form', class: 'toolbar' }, [h('label', {}, 'Evaluate on ', target), h('button', { type: 'submit', class: 'primary', id: 'evaluate-button' }, 'Evaluate'), evalState], async () => {
      const request = {};
      if (target.value) {
        const { dataset_versions: dv } = await get(appPath(app, `/datasets/${encodeURIComponent(target.value)}/versions?per_page=1`));
        if (!dv.length) throw new Error(`Dataset ${target.value} has no version yet.`);
        request.eval_metrics = [{ ground_truth_dataset: { app_id: app, id: target.value, version: { id: dv[0].id } }, split: 'all' }];
      }
      const body = await post(versionPath(app, modelId, versionId, '/evaluations'), request);
      const evaluation = body.eval_metrics || (body.eval_metrics_list || [])[0];
      const id = (evaluation && evaluation.id) || (body.eval_metrics && body.eval_metrics[0] && body.eval_metrics[0].id);
      clear(evalState); append(evalState, spinner('Evaluating…'));
      every(1500, async () => {
        const { eval_metrics: e } = await get(versionPath(app, modelId, versionId, `/evaluations/${encodeURIComponent(id)}`));
        if (e.status.code === 21301) { go(link('apps', app, 'models', modelId, 'versions', versionId, 'evaluation') + `?evaluation=${encodeURIComponent(id)}`); return false; }
        if (e.status.code === 21309) { clear(evalState); append(evalState, errorBox({ title: 'Evaluation failed', message: e.status.details })); return false; }
        return true;
      });
    })));
  const set = sets.find((x) => x.key === chosen);
  if (!set) return;
  let metrics = set.metrics;
  if (!metrics && set.evaluation) {
    const { eval_metrics: e } = await get(versionPath(app, modelId, versionId, `/evaluations/${encodeURIComponent(set.key)}`));
    if (e.status.code !== 21301) { append(root, h('div', { class: 'notice' }, statusBadge(e.status), ' ', e.status.details || '')); return; }
    metrics = e.metrics;
  }
  renderEvaluation(root, app, modelId, versionId, v, metrics, set);
  const board = h('div', { id: 'evaluation-leaderboard' });
  append(root, h('h2', {}, 'Leaderboard'), board);
  leaderboard(board, appPath(app, `/models/${encodeURIComponent(modelId)}/leaderboard`), app, versionId);
}

function renderEvaluation(root, app, modelId, versionId, version, metrics, set) {
  const sm = metrics.summary;
  append(root, h('div', { class: 'stats', id: 'evaluation-summary' },
    [['top-1 accuracy', fmt.pct(sm.top1_accuracy)], ['macro F1', fmt.num(sm.macro_f1)], ['macro ROC AUC', fmt.num(sm.macro_roc_auc)],
      ['macro avg. precision', fmt.num(sm.macro_average_precision)], ['inputs', fmt.int(sm.inputs)], ['labeled', fmt.int(sm.labeled_inputs)]]
      .map(([label, value]) => h('div', { class: 'stat' }, h('b', {}, value), h('span', {}, label)))));

  // Threshold slider: precision, recall and F1 of every concept follow it.
  const saved = (version.thresholds && version.thresholds.concepts) || {};
  const start = Object.values(saved)[0] ?? sm.threshold ?? 0.5;
  const slider = h('input', { type: 'range', id: 'threshold', min: '0', max: '1', step: '0.01', value: String(start), 'aria-describedby': 'threshold-value' });
  const shown = h('output', { id: 'threshold-value', for: 'threshold' }, Number(start).toFixed(2));
  const tbody = h('tbody', {});
  const curves = h('div', { class: 'charts' });
  const drawTable = () => {
    const t = Number(slider.value);
    shown.textContent = t.toFixed(2);
    clear(tbody);
    for (const c of metrics.per_concept) {
      const r = atThreshold(c, t);
      append(tbody, h('tr', { dataset: { concept: c.concept } }, h('td', {}, c.concept), h('td', { class: 'num' }, fmt.int(c.positives)),
        h('td', { class: 'num', dataset: { metric: 'precision' } }, fmt.num(r.precision)), h('td', { class: 'num', dataset: { metric: 'recall' } }, fmt.num(r.recall)),
        h('td', { class: 'num' }, fmt.num(r.f1)), h('td', { class: 'num' }, fmt.num(c.roc_auc)), h('td', { class: 'num' }, fmt.num(c.average_precision)),
        h('td', { class: 'num hide-narrow' }, saved[c.concept] !== undefined ? fmt.num(saved[c.concept], 2) : '–')));
    }
    clear(curves);
    const markers = metrics.per_concept.map((c, i) => { const r = atThreshold(c, t); return { x: r.recall, y: r.precision, color: COLORS[i % COLORS.length] }; });
    append(curves,
      lineChart('Precision–recall', metrics.per_concept.map((c) => ({ label: `${c.concept} (AP ${fmt.num(c.average_precision, 2)})`, points: (c.pr_curve || []).map((p) => [p.recall, p.precision]) })),
        { xLabel: 'recall', yLabel: 'precision', x: [0, 1], y: [0, 1], square: true, markers, id: 'pr' }),
      lineChart('ROC', metrics.per_concept.map((c) => ({ label: `${c.concept} (AUC ${fmt.num(c.roc_auc, 2)})`, points: (c.roc_curve || []).map((p) => [p.fpr, p.tpr]) })),
        { xLabel: 'false positive rate', yLabel: 'true positive rate', x: [0, 1], y: [0, 1], square: true, diagonal: true, id: 'roc' }));
    paintSwatches(curves);
  };
  slider.addEventListener('input', drawTable);
  const saveState = h('span', { class: 'muted', role: 'status' });
  const saveThresholds = async (request) => {
    const body = await post(versionPath(app, modelId, versionId, '/thresholds'), request);
    Object.assign(saved, body.model_version.thresholds.concepts);
    saveState.textContent = `Saved: predictions now report above_threshold (${body.model_version.thresholds.strategy}).`;
    drawTable();
  };
  append(root, h('h2', {}, 'Per concept'),
    h('div', { class: 'panel toolbar' }, h('label', { for: 'threshold' }, 'Threshold'), slider, shown,
      h('button', { type: 'button', id: 'save-threshold', onclick: () => saveThresholds({ strategy: 'manual', concepts: Object.fromEntries(metrics.per_concept.map((c) => [c.concept, Number(slider.value)])), evaluation_id: set.key }) }, 'Use this threshold'),
      h('button', { type: 'button', onclick: () => saveThresholds({ strategy: 'best_f1', evaluation_id: set.key }) }, 'Best F1 per concept'), saveState),
    h('div', { class: 'table-wrap' }, h('table', { id: 'per-concept' }, h('thead', {}, h('tr', {}, h('th', {}, 'Concept'), h('th', { class: 'num' }, 'Positives'),
      h('th', { class: 'num' }, 'Precision'), h('th', { class: 'num' }, 'Recall'), h('th', { class: 'num' }, 'F1'), h('th', { class: 'num' }, 'ROC AUC'), h('th', { class: 'num' }, 'Avg. precision'), h('th', { class: 'num hide-narrow' }, 'Saved threshold'))), tbody)),
    h('h2', {}, 'Curves'), curves);
  drawTable();

  // Confusion matrix: a click on a cell shows its inputs.
  const cm = metrics.confusion_matrix;
  const cellInputs = new Map(cm.cells.map((c) => [`${c.true_index},${c.predicted_index}`, c.inputs]));
  const drill = h('div', { id: 'cell-inputs' });
  const rows = metrics.concepts.map((concept, i) => {
    const total = cm.counts[i].reduce((a, b) => a + b, 0);
    return h('tr', {}, h('th', { class: 'rowhead', scope: 'row' }, concept), cm.counts[i].map((count, j) => {
      const share = total ? count / total : 0;
      const button = h('button', { type: 'button', 'aria-label': `true ${concept}, predicted ${metrics.concepts[j]}: ${count}`, disabled: !count, onclick: () => {
        const inputs = (cellInputs.get(`${i},${j}`) || []).map((k) => metrics.per_input[k]);
        clear(drill);
        append(drill, h('h3', {}, `True ${concept}, predicted ${metrics.concepts[j]}: ${inputs.length} input(s)`),
          h('div', { class: 'thumbs' }, inputs.map((r) => h('figure', { class: 'thumb', dataset: { inputId: r.input_id } },
            h('img', { src: mediaUrl(set.app, r.input_id), alt: `Input ${r.input_id}`, loading: 'lazy' }),
            h('figcaption', { class: 'cap' }, h('span', { class: 'id' }, r.input_id), (r.top_concepts || []).slice(0, 2).map((c) => h('span', { class: 'chip' }, `${c.concept} ${fmt.num(c.probability, 2)}`)))))));
        drill.scrollIntoView({ behavior: 'smooth', block: 'nearest' });
      } }, String(count));
      // Shade by the row's share: the diagonal of a good model is dark.
      button.style.background = `rgba(59, 91, 219, ${(0.08 + 0.85 * share).toFixed(3)})`;
      button.style.color = share > 0.5 ? '#fff' : '#1d2330';
      return h('td', { class: 'cell' }, button);
    }));
  });
  // Multi-label matrices predict at the threshold, so a row's inputs may have no concept predicted.
  const unpredicted = cm.predicted_by !== 'argmax' && (cm.unpredicted || []).some((n) => n > 0);
  if (unpredicted) rows.forEach((row, i) => append(row, h('td', { class: 'num muted' }, String(cm.unpredicted[i]))));
  append(root, h('h2', {}, 'Confusion matrix'), h('p', { class: 'muted' }, `Rows: true concept; columns: predicted (${cm.predicted_by === 'argmax' ? 'highest probability' : 'at the threshold'}). Click a cell to see its inputs.`),
    h('div', { class: 'table-wrap' }, h('table', { class: 'cm', id: 'confusion-matrix' }, h('thead', {}, h('tr', {}, h('th', {}, 'true \\ predicted'), metrics.concepts.map((c) => h('th', { scope: 'col' }, c)), unpredicted ? h('th', { scope: 'col' }, 'none above threshold') : null)), h('tbody', {}, rows))), drill);
}

async function leaderboard(where, path, app, highlight) {
  clear(where);
  try {
    const { leaderboards } = await get(path);
    if (!leaderboards.length) { append(where, h('p', { class: 'muted' }, 'No evaluated versions yet.')); return; }
    for (const board of leaderboards) {
      const gt = board.ground_truth_dataset;
      append(where, h('h3', {}, `${gt.app_id && gt.app_id !== app ? gt.app_id + '/' : ''}${gt.id} ${gt.version.id} · ${board.split} · ranked by ${board.metric}`),
        h('div', { class: 'table-wrap' }, h('table', { class: 'leaderboard' }, h('thead', {}, h('tr', {}, h('th', {}, '#'), h('th', {}, 'Model'), h('th', {}, 'Version'), h('th', { class: 'num' }, board.metric), h('th', { class: 'num' }, 'macro F1'), h('th', {}, 'Template'), h('th', { class: 'hide-narrow' }, 'Trained on'))),
          h('tbody', {}, board.entries.map((e) => h('tr', { class: e.model_version_id === highlight ? 'current' : null },
            h('td', {}, String(e.rank)), h('td', {}, h('a', { href: link('apps', app, 'models', e.model_id) }, e.model_id)),
            h('td', {}, h('a', { href: link('apps', app, 'models', e.model_id, 'versions', e.model_version_id, 'evaluation') + (e.evaluation_id ? `?evaluation=${encodeURIComponent(e.evaluation_id)}` : ''), class: 'mono' }, e.model_version_id)),
            h('td', { class: 'num' }, fmt.num(e.value)), h('td', { class: 'num' }, fmt.num(e.summary && e.summary.macro_f1)),
            h('td', {}, e.lineage && e.lineage.template), h('td', { class: 'hide-narrow' }, e.lineage && e.lineage.training_dataset ? `${e.lineage.training_dataset.id} ${e.lineage.training_dataset.version.id}` : '')))))));
    }
  } catch (error) { append(where, errorBox(error)); }
}

async function leaderboardPage(root, app) {
  append(root, h('h1', {}, 'Leaderboard'), h('p', { class: 'muted' }, 'Every evaluated model version of this app, one board per evaluation set (only comparable numbers share a board).'));
  const board = h('div', { id: 'app-leaderboard' });
  append(root, board);
  await leaderboard(board, appPath(app, '/leaderboard'), app);
}

// ---------------------------------------------------------------- predict playground

async function modelChoices(app) {
  const { models } = await get(appPath(app, '/models?per_page=1000'));
  return models;
}

function imagePicker(onImage) {
  const file = h('input', { type: 'file', accept: 'image/*', id: 'predict-file', 'aria-label': 'Choose an image' });
  const url = h('input', { type: 'url', placeholder: 'https://… image URL', 'aria-label': 'Image URL', size: 30 });
  const drop = h('div', { class: 'drop', id: 'predict-drop' }, 'Drop an image here');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', async (e) => {
    e.preventDefault(); drop.classList.remove('over');
    const f = [...e.dataTransfer.files].find((x) => x.type.startsWith('image/'));
    if (f) onImage({ base64: await fileBase64(f) }, URL.createObjectURL(f));
  });
  file.addEventListener('change', async () => { if (file.files[0]) onImage({ base64: await fileBase64(file.files[0]) }, URL.createObjectURL(file.files[0])); });
  const useUrl = h('button', { type: 'button', onclick: () => { if (url.value) onImage({ url: url.value }, url.value); } }, 'Use URL');
  return h('div', {}, drop, h('div', { class: 'toolbar' }, file, url, useUrl));
}

function conceptBars(concepts) {
  return h('div', { class: 'bars', id: 'predictions' }, concepts.map((c) => h('div', { class: 'bar' + (c.above_threshold === false ? ' dim' : ''), dataset: { concept: c.id } },
    h('span', {}, c.id), h('div', { class: 'track', role: 'img', 'aria-label': `${c.id}: ${fmt.pct(c.value)}` }, barFill(c.value)),
    h('span', { class: 'num' }, fmt.pct(c.value)))));
}

async function predictPage(root, app, query) {
  const models = await modelChoices(app);
  append(root, h('h1', {}, 'Predict'));
  if (!models.length) { append(root, h('div', { class: 'notice' }, 'No models yet: ', h('a', { href: link('apps', app, 'models') }, 'train one'), ' first.')); return; }
  const model = h('select', { id: 'predict-model', 'aria-label': 'Model' }, models.map((m) => h('option', { value: m.id, selected: m.id === query.get('model') }, m.name || m.id)));
  const version = h('select', { id: 'predict-version', 'aria-label': 'Version' });
  const showVersions = async () => {
    const { model_versions: versions } = await get(appPath(app, `/models/${encodeURIComponent(model.value)}/versions?per_page=1000`));
    clear(version);
    append(version, h('option', { value: '' }, 'latest trained version'), versions.filter((v) => v.status.code === 21100).map((v) => h('option', { value: v.id, selected: v.id === query.get('version') }, v.id)));
  };
  model.addEventListener('change', showVersions);
  await showVersions();
  const preview = h('img', { alt: 'The image to classify', class: 'hidden', id: 'predict-preview', width: '280' });
  const result = h('div', { id: 'predict-result', role: 'status', 'aria-live': 'polite' });
  const run = async (image, previewUrl) => {
    preview.src = previewUrl; preview.classList.remove('hidden');
    clear(result); append(result, spinner('Predicting…'));
    const path = version.value ? versionPath(app, model.value, version.value, '/outputs') : appPath(app, `/models/${encodeURIComponent(model.value)}/outputs`);
    try {
      const body = await post(path, { inputs: [{ data: { image } }] }, { allow: [207] });
      const output = body.outputs[0];
      clear(result);
      if (output.status.code !== 10000) { append(result, errorBox({ title: output.status.description, message: output.status.details })); return; }
      append(result, h('p', { class: 'muted' }, `Version ${output.model && output.model.model_version ? output.model.model_version.id : ''}`), conceptBars(output.data.concepts));
    } catch (error) { clear(result); append(result, errorBox(error)); }
  };
  append(root, h('div', { class: 'panel' }, h('div', { class: 'toolbar' }, field('Model', model), field('Version', version)), imagePicker(run)),
    h('div', { class: 'panel' }, h('div', { class: 'toolbar' }, preview, h('div', { class: 'grow' }, result))));
}

// ---------------------------------------------------------------- workflows

async function workflowsPage(root, app) {
  append(root, h('h1', {}, 'Workflows', h('a', { class: 'button primary', href: link('apps', app, 'workflows', 'new'), id: 'new-workflow' }, 'New workflow')));
  const { workflows } = await get(appPath(app, '/workflows?per_page=1000'));
  append(root, h('div', { class: 'table-wrap' }, h('table', { id: 'workflows' }, h('thead', {}, h('tr', {}, h('th', {}, 'Workflow'), h('th', {}, 'Nodes'), h('th', { class: 'hide-narrow' }, 'Created'))),
    h('tbody', {}, workflows.length ? workflows.map((w) => h('tr', {}, h('td', {}, h('a', { href: link('apps', app, 'workflows', w.id) }, w.id)),
      h('td', {}, w.nodes.map((n) => n.model ? n.model.id : `${n.operator.type}(${(n.operator.concepts || []).map((c) => c.id).join(', ')})`).join(' → ')),
      h('td', { class: 'hide-narrow' }, fmt.date(w.created_at)))) : h('tr', {}, h('td', { colspan: 3, class: 'muted' }, 'No workflows yet.'))))));
}

async function workflowBuilderPage(root, app) {
  const models = await modelChoices(app);
  append(root, h('h1', {}, 'New workflow'), h('p', { class: 'muted' }, 'Nodes run in order on each input. A model node classifies the image; a concept filter passes an input on only when an earlier node found the concepts, so later nodes run only where it passed.'));
  const id = h('input', { name: 'workflow_id', required: true, placeholder: 'my-workflow' });
  const description = h('input', { name: 'workflow_description', placeholder: 'optional' });
  const list = h('ol', { class: 'nodes', id: 'workflow-nodes' });
  let counter = 0;
  const nodeIds = () => [...list.querySelectorAll('input[data-role="node-id"]')].map((i) => i.value);
  const refreshInputs = () => {
    list.querySelectorAll('li').forEach((li, index) => {
      const select = li.querySelector('select[data-role="node-input"]');
      const earlier = nodeIds().slice(0, index);
      const current = select.value;
      clear(select);
      append(select, h('option', { value: '' }, '(the input image)'), earlier.map((n) => h('option', { value: n, selected: n === current }, n)));
    });
  };
  const addNode = (kind) => {
    counter += 1;
    const nodeId = h('input', { value: kind === 'model' ? `model-${counter}` : `filter-${counter}`, required: true, size: 12, dataset: { role: 'node-id' }, onchange: refreshInputs });
    const input = h('select', { dataset: { role: 'node-input' } });
    const body = kind === 'model'
      ? field('Model', h('select', { dataset: { role: 'model' } }, models.map((m) => h('option', { value: m.id }, m.id))))
      : [field('Concepts (comma-separated)', h('input', { required: true, dataset: { role: 'concepts' }, placeholder: 'cat' })),
        field('Minimum probability', h('input', { type: 'number', min: '0', max: '1', step: '0.01', value: '0.5', dataset: { role: 'threshold' } }))];
    const li = h('li', { dataset: { kind } }, field('Node id', nodeId), body, field('Runs on', input),
      h('button', { type: 'button', 'aria-label': 'Move up', onclick: () => { if (li.previousElementSibling) li.previousElementSibling.before(li); refreshInputs(); } }, '↑'),
      h('button', { type: 'button', 'aria-label': 'Move down', onclick: () => { if (li.nextElementSibling) li.nextElementSibling.after(li); refreshInputs(); } }, '↓'),
      h('button', { type: 'button', class: 'danger', 'aria-label': 'Remove node', onclick: () => { li.remove(); refreshInputs(); } }, 'Remove'));
    list.append(li);
    refreshInputs();
    if (list.children.length > 1) { const sel = li.querySelector('select[data-role="node-input"]'); sel.value = nodeIds()[list.children.length - 2]; }
  };
  if (models.length) addNode('model');
  append(root, asyncForm({ id: 'workflow-form' }, [h('div', { class: 'grid2' }, field('Workflow id', id), field('Description', description)), list,
    h('div', { class: 'toolbar' }, h('button', { type: 'button', id: 'add-model-node', onclick: () => addNode('model'), disabled: !models.length }, '+ Model node'), h('button', { type: 'button', id: 'add-filter-node', onclick: () => addNode('filter') }, '+ Concept filter'),
      h('span', { class: 'grow' }), h('button', { type: 'submit', class: 'primary' }, 'Save workflow'))], async () => {
    const nodes = [...list.querySelectorAll('li')].map((li) => {
      const node = { id: li.querySelector('[data-role="node-id"]').value.trim() };
      const from = li.querySelector('[data-role="node-input"]').value;
      if (from) node.node_inputs = [{ node_id: from }];
      if (li.dataset.kind === 'model') node.model = { id: li.querySelector('[data-role="model"]').value };
      else {
        const threshold = Number(li.querySelector('[data-role="threshold"]').value);
        node.operator = { type: 'concept_filter', concepts: parseConcepts(li.querySelector('[data-role="concepts"]').value).map((c) => ({ id: c, value: threshold })) };
      }
      return node;
    });
    await post(appPath(app, '/workflows'), { workflows: [{ id: id.value.trim(), description: description.value, nodes }] });
    toast(`Saved workflow ${id.value.trim()}`);
    go(link('apps', app, 'workflows', id.value.trim()));
  }));
}

async function workflowPage(root, app, workflowId) {
  const { workflow } = await get(appPath(app, `/workflows/${encodeURIComponent(workflowId)}`));
  append(root, h('h1', {}, 'Workflow ', h('code', {}, workflow.id),
    h('button', { type: 'button', class: 'danger', onclick: async () => { if (!confirm(`Delete workflow ${workflow.id}?`)) return; await del(appPath(app, `/workflows/${encodeURIComponent(workflow.id)}`)); go(link('apps', app, 'workflows')); } }, 'Delete')),
    workflow.description ? h('p', { class: 'muted' }, workflow.description) : null,
    h('ol', { class: 'nodes' }, workflow.nodes.map((n) => h('li', {}, h('span', {}, h('b', {}, n.id), ': ',
      n.model ? `model ${n.model.id}${n.model.model_version ? ' ' + n.model.model_version.id : ''}` : `concept filter on ${(n.operator.concepts || []).map((c) => `${c.id} ≥ ${c.value ?? 0.5}`).join(', ')}`,
      n.node_inputs && n.node_inputs.length ? ` (runs on ${n.node_inputs.map((x) => x.node_id).join(', ')})` : ' (runs on the input image)')))));
  const preview = h('img', { alt: 'The input image', class: 'hidden', width: '240' });
  const result = h('div', { id: 'workflow-result', role: 'status', 'aria-live': 'polite' });
  const run = async (image, previewUrl) => {
    preview.src = previewUrl; preview.classList.remove('hidden');
    clear(result); append(result, spinner('Running…'));
    try {
      const body = await post(appPath(app, `/workflows/${encodeURIComponent(workflowId)}/results`), { inputs: [{ data: { image } }] }, { allow: [207] });
      clear(result);
      for (const output of body.results[0].outputs) {
        append(result, h('div', { class: 'panel', dataset: { node: output.node_id } }, h('h3', {}, output.node_id, ' ', statusBadge(output.status)),
          output.status.code === 10000 ? conceptBars(output.data.concepts || []) : h('p', { class: 'muted' }, output.status.details || output.status.description)));
      }
    } catch (error) { clear(result); append(result, errorBox(error)); }
  };
  append(root, h('h2', {}, 'Run'), h('div', { class: 'panel' }, imagePicker(run)), h('div', { class: 'toolbar' }, preview, h('div', { class: 'grow' }, result)));
}

// ---------------------------------------------------------------- start

// Whatever escapes a page's own error handling still reaches the user (and the tests).
window.addEventListener('error', (event) => toast(`Error: ${event.message}`, true));
window.addEventListener('unhandledrejection', (event) => toast(`Error: ${event.reason && event.reason.message ? event.reason.message : event.reason}`, true));

function start() {
  // `#key=<token>` (printed by `deeptune serve` and `deeptune demo`) signs in; the fragment never
  // reaches the server or its logs.
  const match = location.hash.match(/^#key=([^&]+)/);
  if (match) { auth.set(decodeURIComponent(match[1])); history.replaceState(null, '', location.pathname + '#/apps'); }
  else if (auth.token) auth.set(auth.token); // refresh the cookie (the browser may have dropped it)
  document.getElementById('signout').addEventListener('click', () => { auth.clear(); go('#/signin'); });
  window.addEventListener('hashchange', render);
  render();
}

start();
