//! The JavaScript the runtime runs in pages. Actions go through the DOM
//! (`element.click()`, value setters + input/change events,
//! `form.requestSubmit()`), not synthetic mouse events, which can hang in
//! background pages (PITFALLS.md).

/// The expression that calls one of these functions with `args` (already
/// JavaScript: a JSON value, or a comma-separated list).
pub fn call(function: &str, args: impl std::fmt::Display) -> String {
    format!("({function})({args})")
}

/// `(maxText, maxElements) => observation`: title, URL, visible text and the
/// numbered interactive elements. Keeps the elements in
/// `window.__adpElements` so a later action can address them by index.
pub const OBSERVE: &str = r#"(maxText, maxEls) => {
  // Strings are cut before any other work on them (a page's title or href
  // may be megabytes long); the Rust side cuts every field again.
  const clean = (s, n) => {
    s = String(s || '');
    if (s.length > 4 * n + 64) s = s.slice(0, 4 * n + 64);
    s = s.replace(/\s+/g, ' ').trim();
    return s.length > n ? s.slice(0, n) + '…' : s;
  };
  const visible = (el) => {
    if (!el.getClientRects().length) return false;
    const st = getComputedStyle(el);
    return st.visibility !== 'hidden' && st.display !== 'none';
  };
  const body = document.body;
  let text = body ? String(body.innerText || '') : '';
  const rawLen = text.length;
  const cut = rawLen > 4 * maxText + 1024;
  if (cut) text = text.slice(0, 4 * maxText + 1024);
  text = text.split('\n').map(l => l.replace(/[ \t\u00a0]+/g, ' ').trim()).filter(l => l).join('\n');
  const sel = 'a[href], button, input, select, textarea, [role=button], [role=link], '
    + '[role=searchbox], [role=textbox], [role=combobox], [contenteditable=""], [contenteditable="true"]';
  const out = [];
  const els = [];
  let total = 0;
  for (const el of document.querySelectorAll(sel)) {
    if (el.tagName === 'INPUT' && el.type === 'hidden') continue;
    if (!visible(el)) continue;
    total++;
    if (els.length >= maxEls) continue;
    const tag = el.tagName.toLowerCase();
    const role = el.getAttribute('role');
    let kind;
    if (tag === 'a' || role === 'link') kind = 'link';
    else if (tag === 'button' || role === 'button') kind = 'button';
    else if (tag === 'input' && ['submit', 'button', 'reset', 'image'].includes(el.type)) kind = 'button';
    else if (tag === 'select') kind = 'select';
    else if (tag === 'textarea') kind = 'textarea';
    else kind = 'input';
    const label = (el.labels && el.labels.length) ? clean(el.labels[0].innerText, 80) : '';
    const e = { kind };
    if (kind === 'link' || kind === 'button') {
      const img = el.querySelector && el.querySelector('img[alt]');
      e.text = clean(el.innerText || el.value || el.getAttribute('aria-label') || el.title || (img && img.alt), 100);
      if (kind === 'link' && el.href) e.href = clean(el.href, 300);
    } else {
      if (el.name) e.name = clean(el.name, 80);
      if (tag === 'input') e.type = clean(el.type, 20);
      if (el.placeholder) e.placeholder = clean(el.placeholder, 80);
      const aria = el.getAttribute('aria-label');
      if (label || aria) e.label = label || clean(aria, 80);
      if (el.id) e.id = clean(el.id, 80);
      if (kind === 'select') {
        e.options = Array.from(el.options).slice(0, 30).map(o => clean(o.text, 60) || clean(o.value, 60));
        const s = el.options[el.selectedIndex];
        if (s) e.value = clean(s.text, 60) || s.value;
      } else if (el.isContentEditable) {
        e.value = clean(el.innerText, 80);
      } else if (el.type === 'checkbox' || el.type === 'radio') {
        e.checked = !!el.checked;
      } else if (el.value) {
        e.value = clean(el.type === 'password' ? '********' : el.value, 80);
      }
    }
    if (el.disabled) e.disabled = true;
    out.push(e);
    els.push(el);
  }
  Object.defineProperty(window, '__adpElements', { value: els, configurable: true, writable: true, enumerable: false });
  return {
    title: clean(document.title, 300),
    url: clean(location.href, 2000),
    text: text.length > maxText ? text.slice(0, maxText) : text,
    text_len: cut ? rawLen : text.length,
    elements: out,
    elements_total: total,
    viewport: {
      width: window.innerWidth, height: window.innerHeight,
      scroll_x: window.scrollX, scroll_y: window.scrollY, page_height: 0,
    },
  };
}"#;

/// `async (action) => {ok, error?, note?, press_enter?, navigating}`:
/// performs a DOM action (click, fill, fill_and_submit, select, scroll) on
/// the page; `navigating` says whether it started a cross-document
/// navigation (Navigation API `navigate` event), so the caller knows to wait
/// for it.
pub const ACT: &str = r#"async (a, node) => {
  let nav = false;
  const watch = (e) => { if (!e.destination.sameDocument && !e.downloadRequest) nav = true; };
  if (window.navigation) window.navigation.addEventListener('navigate', watch);
  let r;
  try {
  r = await (async () => {
  const flush = () => new Promise(r => setTimeout(r, 0));
  const describe = (el) => {
    const t = (el.innerText || el.value || el.getAttribute('aria-label') || el.name || el.placeholder
      || el.textContent || '')
      .replace(/\s+/g, ' ').trim().slice(0, 80);
    return el.tagName.toLowerCase() + (t ? ' "' + t + '"' : '');
  };
  const find = () => {
    if (node !== undefined) {
      // An element resolved from its accessibility-tree id.
      if (!node || node.nodeType !== 1) return [null, 'element e' + a.node + ' is not an element'];
      if (!node.isConnected) return [null, 'element e' + a.node + ' is no longer on the page'];
      return [node, null];
    }
    if (a.selector != null) {
      let el;
      try { el = document.querySelector(a.selector); }
      catch (e) { return [null, 'invalid CSS selector ' + JSON.stringify(a.selector)]; }
      return el ? [el, null] : [null, 'no element matches selector ' + JSON.stringify(a.selector)];
    }
    const els = window.__adpElements;
    if (!els) return [null, 'this page has no numbered elements yet (they come from the observation)'];
    const el = els[a.element];
    if (!el) return [null, 'no element [' + a.element + '] in the last observation (it listed ' + els.length + ')'];
    if (!el.isConnected) return [null, 'element [' + a.element + '] is no longer on the page'];
    return [el, null];
  };
  const setValue = (el, v) => {
    const proto = el.tagName === 'TEXTAREA' ? HTMLTextAreaElement.prototype
      : el.tagName === 'SELECT' ? HTMLSelectElement.prototype : HTMLInputElement.prototype;
    const d = Object.getOwnPropertyDescriptor(proto, 'value');
    if (d && d.set) d.set.call(el, v); else el.value = v;
    el.dispatchEvent(new Event('input', { bubbles: true }));
    el.dispatchEvent(new Event('change', { bubbles: true }));
  };
  if (a.type === 'scroll') {
    const dy = (a.direction === 'up' ? -1 : 1) * Math.round(window.innerHeight * 0.8);
    window.scrollBy(0, dy);
    return { ok: true, note: 'scrolled ' + a.direction };
  }
  const [el, err] = find();
  if (err) return { ok: false, error: err };
  if (el.disabled) return { ok: false, error: describe(el) + ' is disabled' };
  el.scrollIntoView({ block: 'center', inline: 'nearest' });
  switch (a.type) {
    case 'click': {
      const link = el.closest('a');
      if (link && link.target && link.target !== '_self') link.target = '_self';
      const note = 'clicked ' + describe(el);
      // SVG (and MathML) elements have no click(): dispatch the event it
      // would (an SVG <a> follows its link on it).
      if (typeof el.click === 'function') el.click();
      else el.dispatchEvent(new MouseEvent('click', { bubbles: true, cancelable: true, composed: true, view: window }));
      await flush();
      return { ok: true, note };
    }
    case 'fill':
    case 'fill_and_submit': {
      const editable = el.isContentEditable;
      if (!editable && !(el.tagName === 'TEXTAREA' || (el.tagName === 'INPUT'
          && !['submit', 'button', 'reset', 'image', 'checkbox', 'radio', 'file'].includes(el.type)))) {
        return { ok: false, error: describe(el) + ' is not a text field' };
      }
      if (el.readOnly) return { ok: false, error: describe(el) + ' is read-only' };
      el.focus();
      if (editable) {
        el.textContent = a.text;
        el.dispatchEvent(new Event('input', { bubbles: true }));
      } else {
        setValue(el, a.text);
      }
      const what = describe(el);
      if (a.type === 'fill') return { ok: true, note: 'filled ' + what };
      const form = el.form;
      if (!form) return { ok: true, note: 'filled ' + what, press_enter: true };
      if (form.target && form.target !== '_self') form.target = '_self';
      const btn = form.querySelector('button[type=submit], input[type=submit], button:not([type])');
      try { form.requestSubmit(btn || undefined); } catch (e) { form.submit(); }
      await flush();
      return { ok: true, note: 'filled ' + what + ' and submitted its form' };
    }
    case 'select': {
      if (el.tagName !== 'SELECT') return { ok: false, error: describe(el) + ' is not a select' };
      const want = String(a.value).trim();
      const opts = Array.from(el.options);
      const o = opts.find(o => o.value === want) || opts.find(o => o.text.trim() === want)
        || opts.find(o => o.text.trim().toLowerCase() === want.toLowerCase());
      if (!o) {
        return { ok: false, error: 'no option ' + JSON.stringify(want) + ' in ' + describe(el)
          + ' (options: ' + opts.map(o => JSON.stringify(o.text.trim())).join(', ') + ')' };
      }
      setValue(el, o.value);
      await flush();
      return { ok: true, note: 'selected ' + JSON.stringify(o.text.trim()) + ' in ' + el.tagName.toLowerCase()
        + (el.name ? ' ' + el.name : '') };
    }
  }
  return { ok: false, error: 'not a page action: ' + a.type };
  })();
  } finally {
    if (window.navigation) window.navigation.removeEventListener('navigate', watch);
  }
  r.navigating = nav;
  return r;
}"#;

/// `function (a)` called on an element (`Runtime.callFunctionOn` with the
/// object of an accessibility-tree id): [`ACT`] on `this`.
pub fn act_on_node() -> String {
    format!("function (a) {{ return ({ACT})(a, this); }}")
}

/// Installed before an action: notes in `window.__adpNavigating` whether
/// the page started a cross-document navigation (Navigation API `navigate`
/// event; not fired for same-document and download navigations).
pub const WATCH_NAVIGATION: &str = r#"(() => {
  window.__adpNavigating = false;
  if (window.navigation && !window.__adpNavWatch) {
    window.__adpNavWatch = (e) => {
      if (!e.destination.sameDocument && !e.downloadRequest) window.__adpNavigating = true;
    };
    window.navigation.addEventListener('navigate', window.__adpNavWatch);
  }
  return !!window.navigation;
})()"#;

/// `() => navigating` after a key press (see [`WATCH_NAVIGATION`]).
pub const NAVIGATING: &str = "!!window.__adpNavigating";

/// `(selectors, maxText) => {url, title, text, text_len, found}`: the final
/// state the task's checks look at. `text` is the visible text as in an
/// observation (lines trimmed, blank lines dropped), cut to `maxText`;
/// `found[i]` says whether an element matches `selectors[i]` (`null`: the
/// selector is invalid).
pub const FINAL_STATE: &str = r#"(selectors, maxText) => {
  const body = document.body;
  let text = body ? (body.innerText || '') : '';
  text = text.split('\n').map(l => l.replace(/[ \t\u00a0]+/g, ' ').trim()).filter(l => l).join('\n');
  const found = selectors.map(s => { try { return document.querySelector(s) !== null; } catch (e) { return null; } });
  return {
    url: location.href,
    title: document.title || '',
    text: text.length > maxText ? text.slice(0, maxText) : text,
    text_len: text.length,
    found,
  };
}"#;
