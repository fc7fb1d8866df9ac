// scp-pep security staff view (EXT-6-1, INT-8-1). Read-only.
//
// Token handling: the admin token comes from the input field or from `#token=…` in the URL
// fragment (never sent to the server by the browser); the fragment is removed from the address
// bar at once. The token is kept in memory and in sessionStorage (this tab only, gone when the
// tab closes), never in persistent storage or a cookie, and sent only as an Authorization header to
// this origin.
//
// Record fields are partner-influenced: they are written with textContent only, never as HTML.
'use strict';

(function () {
  const MAX_ROWS = 200;
  const REFRESH_MS = 30000;
  const RETRY_MS = 3000;
  const KEY = 'scp-pep-staff-token';

  let token = null;
  let tenant = '';
  let generation = 0; // bumped on every (re)start; stale loops stop
  let streamAbort = null;
  let refreshTimer = null;
  let rows = 0;
  let dropped = 0;

  const $ = (id) => document.getElementById(id);

  function setStatus(text, isError) {
    const s = $('status');
    s.textContent = text;
    s.className = isError ? 'error' : '';
  }

  function headers() {
    return { authorization: 'Bearer ' + token };
  }

  function query(extra) {
    const p = new URLSearchParams();
    if (tenant) p.set('tenant', tenant);
    for (const [k, v] of Object.entries(extra || {})) p.set(k, v);
    const s = p.toString();
    return s ? '?' + s : '';
  }

  function fetchOpts(signal) {
    return {
      headers: headers(),
      cache: 'no-store',
      credentials: 'omit',
      referrerPolicy: 'no-referrer',
      signal: signal,
    };
  }

  // The error body {"error": {"code", "message", "field"}} as one line.
  async function errorText(resp) {
    try {
      const e = (await resp.json()).error;
      return resp.status + ' ' + e.code + ': ' + e.message;
    } catch (_) {
      return 'HTTP ' + resp.status;
    }
  }

  function cell(tr, text, cls) {
    const td = document.createElement('td');
    td.textContent = text === undefined || text === null || text === '' ? '–' : String(text);
    if (cls) td.className = cls;
    tr.appendChild(td);
  }

  function fmtTime(ms) {
    const d = new Date(Number(ms));
    return isNaN(d.getTime()) ? '–' : d.toISOString().replace('T', ' ').replace('Z', '');
  }

  function addRow(r) {
    const tr = document.createElement('tr');
    // Only the two known values choose a class; anything else gets none.
    if (r.outcome === 'deny' || r.outcome === 'allow') tr.className = r.outcome;
    cell(tr, fmtTime(r.time_unix_ms));
    cell(tr, r.outcome, 'outcome');
    cell(tr, r.code);
    cell(tr, r.tenant_id);
    cell(tr, r.integration_id);
    cell(tr, r.path);
    cell(tr, r.method);
    cell(tr, r.decision_id, 'decision-id');
    const body = $('tail').tBodies[0];
    body.insertBefore(tr, body.firstChild);
    while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
    rows += 1;
    $('tail-count').textContent = '(' + rows + ' received, newest ' + body.rows.length + ' shown)';
  }

  function handleFrame(frame) {
    let event = 'message';
    let data = '';
    for (const line of frame.split('\n')) {
      if (line.startsWith(':')) continue;
      if (line.startsWith('event:')) event = line.slice(6).trim();
      else if (line.startsWith('data:')) data += line.slice(5).trim();
    }
    if (!data) return;
    let obj;
    try {
      obj = JSON.parse(data);
    } catch (_) {
      return;
    }
    if (event === 'decision') addRow(obj);
    else if (event === 'dropped') {
      dropped += Number(obj.dropped) || 0;
      $('dropped').textContent = dropped + ' records dropped (this page was too slow)';
    }
  }

  async function follow(gen) {
    while (gen === generation) {
      const ctrl = new AbortController();
      streamAbort = ctrl;
      let resp;
      try {
        resp = await fetch('/v1/audit/decisions/stream' + query(), fetchOpts(ctrl.signal));
      } catch (_) {
        if (gen !== generation) return;
        setStatus('Live tail: connection failed; retrying…', true);
        await sleep(RETRY_MS);
        continue;
      }
      if (!resp.ok) {
        const text = await errorText(resp);
        setStatus('Live tail refused: ' + text, true);
        if (resp.status === 401 || resp.status === 403 || resp.status === 400) return;
        await sleep(RETRY_MS);
        continue;
      }
      setStatus('Live: following decisions' + (tenant ? ' of ' + tenant : '') + '.', false);
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = '';
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += decoder.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            handleFrame(buf.slice(0, i));
            buf = buf.slice(i + 2);
          }
          if (buf.length > 1 << 20) buf = ''; // a frame is never this long
        }
      } catch (_) {
        // aborted or cut: reconnect below unless stopped
      }
      if (gen !== generation) return;
      setStatus('Live tail ended; reconnecting…', true);
      await sleep(RETRY_MS);
    }
  }

  function fillCounts(tableId, items, keyName) {
    const body = $(tableId).tBodies[0];
    const fresh = [];
    for (const it of items || []) {
      const tr = document.createElement('tr');
      const key = it[keyName];
      cell(tr, key === null || key === undefined ? '(none)' : key);
      cell(tr, it.count, 'num');
      fresh.push(tr);
    }
    body.replaceChildren(...fresh);
  }

  async function refreshDenials(gen) {
    if (gen !== generation) return;
    try {
      const resp = await fetch('/v1/audit/denials' + query({ window_s: '3600' }), fetchOpts());
      if (gen !== generation) return;
      if (!resp.ok) {
        setStatus('Denial counts refused: ' + (await errorText(resp)), true);
        return;
      }
      const d = await resp.json();
      if (gen !== generation) return;
      $('denials-total').textContent = String(d.denials);
      $('denials-window').textContent = '(' + d.from + ' – ' + d.to + ', tenant ' + d.tenant + ')';
      $('denials-truncated').textContent = d.truncated ? 'more than counted: newest only' : '';
      fillCounts('by-code', d.by_code, 'code');
      fillCounts('by-integration', d.by_integration, 'integration_id');
    } catch (_) {
      setStatus('Denial counts: connection failed', true);
    }
  }

  function sleep(ms) {
    return new Promise((r) => setTimeout(r, ms));
  }

  function stop() {
    generation += 1;
    if (streamAbort) streamAbort.abort();
    streamAbort = null;
    if (refreshTimer) clearInterval(refreshTimer);
    refreshTimer = null;
  }

  function start() {
    stop();
    if (!token) return;
    const gen = generation;
    setStatus('Connecting…', false);
    follow(gen);
    refreshDenials(gen);
    refreshTimer = setInterval(() => refreshDenials(gen), REFRESH_MS);
  }

  function init() {
    tenant = '';
    const frag = new URLSearchParams(location.hash.slice(1));
    if (location.hash) {
      // The fragment never reached the server; drop it from the address bar and history too.
      history.replaceState(null, '', location.pathname + location.search);
    }
    if (frag.get('tenant')) {
      tenant = frag.get('tenant').trim();
      $('tenant').value = tenant;
    }
    const t = (frag.get('token') || sessionStorage.getItem(KEY) || '').trim();
    if (t) {
      token = t;
      sessionStorage.setItem(KEY, t);
    }
    $('login').addEventListener('submit', (e) => {
      e.preventDefault();
      const t = $('token').value.trim();
      $('token').value = '';
      if (t) {
        token = t;
        sessionStorage.setItem(KEY, t);
      }
      tenant = $('tenant').value.trim();
      if (!token) {
        setStatus('No token.', true);
        return;
      }
      start();
    });
    $('forget').addEventListener('click', () => {
      stop();
      token = null;
      sessionStorage.removeItem(KEY);
      setStatus('Token forgotten.', false);
    });
    start();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
