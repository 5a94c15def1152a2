// AI Studio Fleet admin panel: the little the server cannot do. Uptimes that tick, the screenshot button
// and the log viewer (follow, pause, bounded). Everything that is text goes in as text, never as HTML.
(function () {
  "use strict";

  // ---- uptimes: the server renders them once, this keeps them moving between updates
  function duration(seconds) {
    const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
    const m = Math.floor(seconds % 3600 / 60), s = Math.floor(seconds % 60);
    const pad = (n) => String(n).padStart(2, "0");
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + pad(m) + "m";
    if (m) return m + "m " + pad(s) + "s";
    return s + "s";
  }
  setInterval(function () {
    const now = Date.now();
    document.querySelectorAll("[data-since]").forEach(function (el) {
      const since = Date.parse(el.dataset.since);
      if (!isNaN(since)) el.textContent = duration(Math.max(0, (now - since) / 1000));
    });
  }, 1000);

  // ---- screenshot
  function setupScreenshot() {
    const button = document.querySelector("[data-shot-refresh]");
    const img = document.querySelector("[data-shot]");
    if (!button || !img) return;
    const link = document.querySelector("[data-shot-link]");
    const note = document.querySelector("[data-shot-note]");
    button.addEventListener("click", function () {
      const url = img.dataset.src + "?t=" + Date.now();
      img.onload = function () { img.hidden = false; if (note) note.hidden = true; };
      img.onerror = function () { img.hidden = true; if (note) note.hidden = false; };
      img.src = url;
      if (link) link.href = url;
    });
  }

  // ---- logs: an EventSource on the management API's follow stream
  const MAX_LINES = 3000;
  function setupLogs() {
    const root = document.querySelector("[data-logs]");
    if (!root) return;
    const pre = root.querySelector("[data-logs-lines]");
    const follow = root.querySelector("[data-logs-follow]");
    const pauseButton = root.querySelector("[data-logs-pause]");
    const status = root.querySelector("[data-logs-status]");
    let source = null, retry = null, paused = false, held = [], pending = [], scheduled = false;

    function say(text) { status.textContent = text; }
    function flush() {
      scheduled = false;
      if (!pending.length) return;
      const text = pending.join("\n") + "\n";
      pending = [];
      pre.appendChild(document.createTextNode(text));
      while (pre.childNodes.length > 1 && pre.textContent.length > MAX_LINES * 200) pre.removeChild(pre.firstChild);
      if (follow.checked) pre.scrollTop = pre.scrollHeight;
      pre.dataset.lines = String((Number(pre.dataset.lines) || 0) + text.split("\n").length - 1);
    }
    function add(line) {
      if (paused) { held.push(line); if (held.length > MAX_LINES) held.shift(); return; }
      pending.push(line);
      if (pending.length > MAX_LINES) pending.shift();
      if (!scheduled) { scheduled = true; requestAnimationFrame(flush); }
    }
    function later(ms, text) {
      if (source) { source.close(); source = null; }
      say(text);
      clearTimeout(retry);
      retry = setTimeout(connect, ms);
    }
    function connect() {
      clearTimeout(retry);
      source = new EventSource(root.dataset.logs);
      source.onopen = function () {
        // The server starts every stream with the last lines again: show them once.
        pre.textContent = ""; pre.dataset.lines = "0"; pending = [];
        say(paused ? root.dataset.msgPaused : root.dataset.msgLive);
      };
      source.addEventListener("log", function (e) { add(e.data); });
      source.addEventListener("end", function () { later(10000, root.dataset.msgEnded); });
      source.onerror = function (e) {
        later(5000, e.data ? e.data : root.dataset.msgRetrying);
      };
    }
    pauseButton.addEventListener("click", function () {
      paused = !paused;
      pauseButton.textContent = paused ? pauseButton.dataset.labelResume : pauseButton.dataset.labelPause;
      say(paused ? root.dataset.msgPaused : root.dataset.msgLive);
      if (!paused) { held.forEach(add); held = []; }
    });
    window.addEventListener("pagehide", function () { if (source) source.close(); clearTimeout(retry); });
    connect();
  }

  // ---- playground: reference images dropped on the zone go into its file input (delegated: htmx swaps it)
  function showChosen(input) {
    const zone = input.closest("[data-drop-zone]");
    const names = zone && zone.querySelector("[data-reference-names]");
    if (names) names.textContent = Array.from(input.files).map(function (f) { return f.name; }).join(", ");
  }
  function setupPlayground() {
    document.addEventListener("dragover", function (e) {
      const zone = e.target.closest && e.target.closest("[data-drop-zone]");
      if (zone) { e.preventDefault(); zone.classList.add("dragging"); }
    });
    document.addEventListener("dragleave", function (e) {
      const zone = e.target.closest && e.target.closest("[data-drop-zone]");
      if (zone) zone.classList.remove("dragging");
    });
    document.addEventListener("drop", function (e) {
      const zone = e.target.closest && e.target.closest("[data-drop-zone]");
      if (!zone) return;
      e.preventDefault();
      zone.classList.remove("dragging");
      const input = zone.querySelector("[data-references]");
      if (input && e.dataTransfer && e.dataTransfer.files.length) { input.files = e.dataTransfer.files; showChosen(input); }
    });
    document.addEventListener("change", function (e) {
      if (e.target.matches && e.target.matches("[data-references]")) showChosen(e.target);
    });
  }

  // ---- a message's close button (a listener here: the content security policy refuses inline handlers)
  document.addEventListener("click", function (event) {
    const close = event.target.closest && event.target.closest("[data-dismiss]");
    if (close) close.parentElement.remove();
  });

  // ---- forms marked data-reset-after are emptied after a request that worked (not after "test the proxy")
  document.addEventListener("htmx:afterRequest", function (event) {
    const form = event.target.closest && event.target.closest("form[data-reset-after]");
    if (form && event.detail.successful && event.detail.elt.dataset.action !== "test-proxy") form.reset();
  });

  document.addEventListener("DOMContentLoaded", function () {
    setupScreenshot();
    setupLogs();
    setupPlayground();
  });
})();
