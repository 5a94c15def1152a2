// The live view: draws the instance's screencast on a <canvas> and sends the viewer's mouse, wheel, keys
// and text back. The WebSocket goes to the gateway, which holds the instance's token and relays.
// Coordinates go out in the instance page's CSS pixels: the frame says how wide and tall its page is.
(function () {
  "use strict";
  const root = document.querySelector("[data-liveview]");
  if (!root) return;
  const canvas = root.querySelector("[data-lv=canvas]");
  const draw = canvas.getContext("2d");
  const status = root.querySelector("[data-lv=status]");
  const fpsLabel = root.querySelector("[data-lv=fps]");
  const toggle = root.querySelector("[data-lv=toggle]");
  const textForm = root.querySelector("[data-lv=text-form]");

  let socket = null, wanted = true, retryDelay = 1000, retryTimer = null;
  let page = { width: 0, height: 0 };   // the instance page, CSS pixels
  let pending = null, drawing = false, frames = 0, lastMoveAt = 0;
  canvas.dataset.frames = "0";

  function say(text) { status.textContent = text; }

  // ---- frames
  function connect() {
    clearTimeout(retryTimer);
    if (!wanted || socket) return;
    say(root.dataset.msgConnecting);
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + root.dataset.liveview);
    socket.onopen = function () { retryDelay = 1000; say(root.dataset.msgLive); };
    socket.onmessage = function (event) {
      let message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      if (message.type === "frame") {
        pending = message;   // a slow screen skips to the newest frame
        if (!drawing) drawNext();
      } else if (message.type === "error") {
        say(message.message);
        root.dataset.error = message.message;
      }
    };
    socket.onclose = function () {
      socket = null;
      if (!wanted) return;
      if (!root.dataset.error) say(root.dataset.msgClosed);
      retryTimer = setTimeout(function () { delete root.dataset.error; connect(); }, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 10000);
    };
  }

  function drawNext() {
    const message = pending;
    pending = null;
    if (!message) { drawing = false; return; }
    drawing = true;
    const image = new Image();
    image.onload = function () {
      if (canvas.width !== image.naturalWidth || canvas.height !== image.naturalHeight) {
        canvas.width = image.naturalWidth;
        canvas.height = image.naturalHeight;
      }
      draw.drawImage(image, 0, 0);
      page = { width: message.width || image.naturalWidth, height: message.height || image.naturalHeight };
      canvas.dataset.pageWidth = String(page.width);
      canvas.dataset.pageHeight = String(page.height);
      frames += 1;
      canvas.dataset.frames = String(frames);
      drawNext();
    };
    image.onerror = drawNext;
    image.src = "data:image/jpeg;base64," + message.data;
  }

  let counted = 0;
  setInterval(function () {
    fpsLabel.textContent = socket ? (frames - counted) + " fps" : "";
    counted = frames;
  }, 1000);

  // ---- input
  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
  }
  function at(event) {
    const box = canvas.getBoundingClientRect();
    const width = page.width || canvas.width, height = page.height || canvas.height;
    return {
      x: Math.round((event.clientX - box.left) * width / box.width * 10) / 10,
      y: Math.round((event.clientY - box.top) * height / box.height * 10) / 10,
    };
  }
  const BUTTONS = ["left", "middle", "right"];
  canvas.addEventListener("pointerdown", function (event) {
    const point = at(event);
    canvas.focus({ preventScroll: true });   // keys go to the instance now; the page must not move under the pointer
    canvas.setPointerCapture(event.pointerId);
    send(Object.assign({ type: "mouse", event: "down", button: BUTTONS[event.button] || "left" }, point));
    event.preventDefault();
  });
  canvas.addEventListener("pointerup", function (event) {
    send(Object.assign({ type: "mouse", event: "up", button: BUTTONS[event.button] || "left" }, at(event)));
    event.preventDefault();
  });
  canvas.addEventListener("pointermove", function (event) {
    const now = Date.now();
    if (now - lastMoveAt < (event.buttons ? 30 : 100)) return;   // enough for hovers and drags
    lastMoveAt = now;
    send(Object.assign({ type: "mouse", event: "move" }, at(event)));
  });
  canvas.addEventListener("wheel", function (event) {
    const scale = event.deltaMode === 1 ? 40 : event.deltaMode === 2 ? 800 : 1;
    send(Object.assign({ type: "mouse", event: "wheel", delta_x: event.deltaX * scale, delta_y: event.deltaY * scale }, at(event)));
    event.preventDefault();
  }, { passive: false });
  canvas.addEventListener("contextmenu", function (event) { event.preventDefault(); });

  canvas.addEventListener("keydown", function (event) {
    if (event.isComposing) return;
    const modifier = event.ctrlKey || event.metaKey || event.altKey;
    if (modifier && event.key.toLowerCase() === "v") return;   // the paste event below carries the text
    if (event.key.length === 1 && !modifier) {
      send({ type: "text", text: event.key });
    } else {
      const parts = [];
      if (event.ctrlKey) parts.push("Control");
      if (event.metaKey) parts.push("Meta");
      if (event.altKey) parts.push("Alt");
      if (event.shiftKey && event.key.length > 1) parts.push("Shift");
      if (["Control", "Meta", "Alt", "Shift"].indexOf(event.key) >= 0) return;
      parts.push(event.key);
      send({ type: "key", event: "press", key: parts.join("+") });
    }
    event.preventDefault();
  });
  document.addEventListener("paste", function (event) {
    if (document.activeElement !== canvas) return;
    const text = (event.clipboardData || window.clipboardData).getData("text");
    if (text) send({ type: "text", text: text });
    event.preventDefault();
  });
  textForm.addEventListener("submit", function (event) {
    event.preventDefault();
    const input = textForm.elements.text;
    if (input.value) send({ type: "text", text: input.value });
    input.value = "";
  });
  root.querySelectorAll("[data-lv-key]").forEach(function (button) {
    button.addEventListener("click", function () { send({ type: "key", event: "press", key: button.dataset.lvKey }); });
  });

  // ---- pause / resume, and leaving the page
  toggle.addEventListener("click", function () {
    wanted = !wanted;
    toggle.textContent = wanted ? toggle.dataset.labelPause : toggle.dataset.labelResume;
    if (wanted) { connect(); } else { clearTimeout(retryTimer); if (socket) socket.close(); say(root.dataset.msgPaused); }
  });
  window.addEventListener("pagehide", function () { wanted = false; if (socket) socket.close(); });
  connect();
})();
