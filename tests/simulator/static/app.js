// The simulated AI Studio chat page: plain browser JS, markup comes from the <template>s in new_chat.html.
"use strict";

const STANDARD_RATIOS = ["1:1", "9:16", "16:9", "3:4", "4:3", "3:2", "2:3", "5:4", "4:5", "21:9"];
const GENERATE_URL = "/_/MakerSuiteService/GenerateContent";
const TEXTS = {
  quota: "You've exceeded your quota for this model. Please try again later.",
  rateLimited: "Failed to generate content. Please try again.",
  internal: "An internal error has occurred",
  region: "Failed to list models",
  notice: "Tip: press Ctrl+Enter to run a prompt.",
  staleError: "An internal error has occurred",
  unavailable: (model) => `The model ${model} is not available to your account.`,
};

const config = JSON.parse(document.getElementById("sim-config").textContent);
const page = {
  ratio: "Auto",
  uploads: [], // {name, mime, dataUrl, data_b64} of the chips in the prompt box
  uploadedOnce: false, // the copyright dialog only follows the first upload of the page
  awaitingCopyright: false, // an upload waits for the copyright acknowledgement: Run stays disabled
  request: null, // AbortController of the run in progress; null when idle
  menu: null, // overlay layer of the open menu or select panel
  model: config.model,
  size: null, // output size; null when the model offers no size choice
  temporary: false, // Temporary chat: the run is not autosaved to Drive
  chatId: "chat-" + Math.random().toString(36).slice(2),
  history: [], // the chat's earlier turns, {role, text, images (base64)}: the real page sends them with every Run
  eventsFired: new Set(), // event_dialogs fire once per page
  tokens: 0,
};

function modelInfo(id) {
  return config.models.find((model) => model.id === id) || { id, title: id, images: true, ratios: STANDARD_RATIOS, sizes: [] };
}

const $ = (selector, root = document) => root.querySelector(selector);

// ---------- markup ----------

function fromTemplate(name) {
  return document.getElementById("tpl-" + name).content.firstElementChild.cloneNode(true);
}

// A template in the configured markup variant; "current" when there is no legacy one.
function variant(name) {
  const legacy = config.markup === "legacy" && document.getElementById(`tpl-${name}-legacy`);
  return fromTemplate(`${name}-${legacy ? "legacy" : "current"}`);
}

// Puts a role's element into the page, unless the config removed that role (to test "ui_changed").
function mountRole(role, mountId) {
  if (config.missing_roles.includes(role)) return null;
  const element = variant(role);
  document.getElementById(mountId).appendChild(element);
  return element.matches("button, textarea, mat-select") ? element : $("button, textarea", element);
}

const promptTextarea = () => $("#textarea-mount textarea");
const runButton = () => $("#run-button-mount button");
const fileInput = () => $("input[data-test-upload-file-input]");

// ---------- overlays (menus, select panels, dialogs) ----------

// A layer in the overlay container; its backdrop covers the whole page and takes the clicks.
function openLayer(content, { dark = false, onBackdropClick = null } = {}) {
  const layer = document.createElement("div");
  layer.className = "overlay-layer";
  const backdrop = document.createElement("div");
  backdrop.className = "cdk-overlay-backdrop " + (dark ? "cdk-overlay-dark-backdrop" : "cdk-overlay-transparent-backdrop");
  if (onBackdropClick) backdrop.addEventListener("click", onBackdropClick);
  const pane = document.createElement("div");
  pane.className = "cdk-overlay-pane" + (dark ? " dialog-pane" : "");
  pane.appendChild(content);
  layer.append(backdrop, pane);
  $("#overlay-container").appendChild(layer);
  return { layer, pane };
}

// Menus open next to their anchor: above it near the bottom of the window, below it otherwise.
function openMenu(anchor, content) {
  closeMenu();
  const { layer, pane } = openLayer(content, { onBackdropClick: closeMenu });
  const rect = anchor.getBoundingClientRect();
  pane.style.left = `${Math.max(8, Math.min(rect.left, window.innerWidth - 220))}px`;
  if (rect.top > window.innerHeight / 2) pane.style.bottom = `${window.innerHeight - rect.top + 4}px`;
  else pane.style.top = `${rect.bottom + 4}px`;
  pane.style.minWidth = `${rect.width}px`;
  page.menu = layer;
}

function closeMenu() {
  if (page.menu) page.menu.remove();
  page.menu = null;
  document.querySelectorAll("mat-select").forEach((select) => select.setAttribute("aria-expanded", "false"));
}

// A dialog blocks the page until its [data-dismiss] button is clicked (no Escape, no backdrop click).
function showDialog(name, onClose = null) {
  const dialog = fromTemplate("dialog-" + name);
  const checkbox = $("input[type=checkbox]", dialog);
  // consent: Continue is enabled only once the box is ticked
  checkbox?.addEventListener("change", () => { $("[data-dismiss]", dialog).disabled = !checkbox.checked; });
  const { layer } = openLayer(dialog, { dark: true });
  $("[data-dismiss]", dialog).addEventListener("click", () => {
    layer.remove();
    if (onClose) onClose();
  });
}

// Load-time dialogs come one after the other, like the real page's.
function showDialogsInTurn(names) {
  if (names.length > 0) showDialog(names[0], () => showDialogsInTurn(names.slice(1)));
}

// ---------- run settings ----------

function toggleSettings() {
  const visible = getComputedStyle($("#run-settings")).display !== "none";
  document.body.dataset.settings = visible ? "closed" : "open";
}

// A choice shows (and counts) now, a moment after the panel closed, or never: Angular Material can lag.
function applyChoice(apply) {
  if (config.select_apply === "now") apply();
  else if (config.select_apply === "late") setTimeout(apply, config.select_apply_delay_ms);
}

function openSelectPanel(select, values, current, onChoose) {
  const listbox = fromTemplate("ratio_listbox");
  listbox.setAttribute("aria-label", select.getAttribute("aria-label"));
  for (const value of values) {
    const option = fromTemplate("ratio_option");
    $(".mdc-list-item__primary-text", option).textContent = value;
    option.setAttribute("aria-selected", String(value === current));
    option.addEventListener("click", () => {
      closeMenu();
      onChoose(value);
    });
    listbox.appendChild(option);
  }
  openMenu(select, listbox);
  select.setAttribute("aria-expanded", "true");
}

function openRatioPanel(select) {
  openSelectPanel(select, ["Auto", ...modelInfo(page.model).ratios], page.ratio, (ratio) => {
    applyChoice(() => {
      page.ratio = ratio;
      $(".ratio-value", select).textContent = ratio;
    });
    fireEvent("ratio");
  });
}

function openSizePanel(select) {
  openSelectPanel(select, modelInfo(page.model).sizes, page.size, (size) => {
    applyChoice(() => {
      page.size = size;
      $(".select-value", select).textContent = size;
    });
  });
}

// The settings a model offers: its ratios (else back to Auto) and its output sizes (1K by default).
function applyModelSettings() {
  const info = modelInfo(page.model);
  if (page.ratio !== "Auto" && !info.ratios.includes(page.ratio)) page.ratio = "Auto";
  const ratioValue = $("#aspect-ratio-mount .ratio-value");
  if (ratioValue) ratioValue.textContent = page.ratio;
  $("#aspect-ratio-setting").hidden = info.ratios.length === 0;
  page.size = info.sizes.length ? (info.sizes.includes("1K") ? "1K" : info.sizes[0]) : null;
  $("#image-size-setting").hidden = page.size === null;
  const sizeValue = $("#image-size-mount .select-value");
  if (sizeValue && page.size) sizeValue.textContent = page.size;
  $("#model-name").textContent = page.model;
  $("#settings-model").textContent = page.model;
  const title = $("#model-selector-mount .title");
  if (title) title.textContent = info.title;
}

// ---------- model picker ----------

function openModelPicker(trigger) {
  const listbox = fromTemplate("model_listbox");
  for (const model of config.models) {
    const option = fromTemplate("model_option");
    const refused = config.unavailable_models.includes(model.id);
    $(".model-option-title", option).textContent = model.title;
    $(".model-option-id", option).textContent = model.id;
    option.setAttribute("aria-selected", String(model.id === page.model));
    if (refused) {
      option.setAttribute("aria-disabled", "true");
      $(".model-option-note", option).textContent = "Not available to your account";
    } else {
      option.addEventListener("click", () => {
        closeMenu();
        page.model = model.id;
        applyModelSettings();
      });
    }
    listbox.appendChild(option);
  }
  openMenu(trigger, listbox);
}

// ---------- dialogs mid-task ----------

// The dialogs configured for a moment of the task, once per page; `then` runs when the last is dismissed.
function fireEvent(name, then = null) {
  const names = (config.event_dialogs || {})[name] || [];
  if (page.eventsFired.has(name) || names.length === 0) {
    if (then) then();
    return;
  }
  page.eventsFired.add(name);
  const next = (rest) => (rest.length ? showDialog(rest[0], () => next(rest.slice(1))) : then && then());
  next(names);
}

// ---------- uploads ----------

function openUploadMenu(button) {
  const menu = variant("upload_menu");
  $("[role=menuitem]", menu).addEventListener("click", () => {
    closeMenu();
    fileInput().click();
  });
  openMenu(button, menu);
}

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function onFileChosen() {
  const input = fileInput();
  const file = input.files[0];
  input.value = ""; // lets the same file be chosen again
  if (!file) return;
  try {
    const dataUrl = await readAsDataUrl(file);
    if (config.upload_delay_ms > 0) await new Promise((resolve) => setTimeout(resolve, config.upload_delay_ms));
    const upload = { name: file.name, mime: file.type || "application/octet-stream", dataUrl, data_b64: dataUrl.slice(dataUrl.indexOf(",") + 1) };
    page.uploads.push(upload);
    showUpload(upload);
    if (config.copyright_dialog && !page.uploadedOnce) {
      page.awaitingCopyright = true;
      const ask = () => showDialog("copyright", () => { page.awaitingCopyright = false; refreshRunButton(); });
      if (config.copyright_delay_ms > 0) setTimeout(ask, config.copyright_delay_ms);
      else ask();
    }
    refreshRunButton();
    page.uploadedOnce = true;
    fireEvent("upload");
  } catch (error) {
    showToast(TEXTS.internal);
  }
}

// What shows a finished upload in the prompt box differs between page versions (upload_signal).
function showUpload(upload) {
  const signal = config.upload_signal;
  if (signal === "chip") addChip(upload);
  else if (signal === "media_container") {
    const media = fromTemplate("prompt_media");
    $(".media-name", media).textContent = upload.name;
    $("#prompt-media-row").appendChild(media);
  } else if (signal === "blob_img") {
    const preview = fromTemplate("blob_preview");
    $("img", preview).src = blobUrl({ mime: upload.mime, data: upload.data_b64 });
    $("#prompt-media-row").appendChild(preview);
  } else if (signal === "token_count") setTokens(page.tokens + 258);
}

function setTokens(count) {
  page.tokens = count;
  $("[data-test-id=token-count]").textContent = `${count.toLocaleString("en-US")} tokens`;
}

function addChip(upload) {
  const chip = variant("media_chip");
  $("img", chip).src = upload.dataUrl;
  $(".chip-name", chip).textContent = upload.name;
  $("#media-row").appendChild(chip);
}

function clearPromptBox() {
  promptTextarea().value = "";
  page.uploads = [];
  $("#media-row").replaceChildren();
  $("#prompt-media-row").replaceChildren();
  setTokens(0);
}

// ---------- run ----------

const hasPrompt = () => Boolean(promptTextarea() && promptTextarea().value.trim() !== "");
// Run takes a prompt or an attached file.
const hasContent = () => hasPrompt() || page.uploads.length > 0;

// Idle: "Run", enabled only with a prompt. Busy: "Stop" with a spinner, enabled so it can stop the run.
function refreshRunButton() {
  const button = runButton();
  if (!button) return;
  const busy = page.request !== null;
  const legacy = config.markup === "legacy";
  button.disabled = !busy && (!hasContent() || page.awaitingCopyright);
  button.setAttribute("aria-label", busy ? (legacy ? "Stop generating" : "Stop") : "Run");
  $(".label", button).textContent = busy ? "Stop" : "Run";
  const spinner = $("svg", button);
  if (busy && !spinner && !legacy) button.prepend(fromTemplate("spinner"));
  if (!busy && spinner) spinner.remove();
}

function onRunClick() {
  if (page.request) page.request.abort();
  else if (hasContent()) startRun();
}

function requestBody(prompt, uploads) {
  const files = uploads.map(({ name, mime, data_b64 }) => ({ name, mime, data_b64 }));
  return JSON.stringify({
    prompt, aspect_ratio: page.ratio, model: page.model, image_size: page.size, uploads: files,
    chat_id: page.chatId, temporary: page.temporary, history: page.history,
  });
}

async function startRun() {
  const prompt = promptTextarea().value;
  const uploads = page.uploads;
  clearPromptBox();
  clearErrors();
  appendUserTurn(prompt, uploads);
  page.request = new AbortController();
  refreshRunButton();
  if (config.harmless_toast) showSnackbar(TEXTS.notice);
  // a dialog arriving at Run holds the answer back until it is dismissed (like the preference vote)
  const dismissed = new Promise((resolve) => fireEvent("run", resolve));
  try {
    const response = await fetch(GENERATE_URL, {
      method: "POST",
      credentials: "include",
      headers: { "Content-Type": "application/json" },
      body: requestBody(prompt, uploads),
      signal: page.request.signal,
    });
    const body = await response.json().catch(() => ({}));
    await dismissed;
    finishRun();
    // an error can come inside a 200 answer (a streamed answer that failed part-way)
    if (response.ok && body.error) showFailure(body.error.code, body);
    else if (response.ok) {
      page.history.push({ role: "user", text: prompt, images: uploads.map((upload) => upload.data_b64) });
      page.history.push({ role: "model", text: body.text || "", images: (body.images || []).map((image) => image.data) });
      appendModelTurn(body);
    }
    else showFailure(response.status, body);
  } catch (error) {
    finishRun();
    if (error.name !== "AbortError") showToast(TEXTS.internal);
  }
}

function finishRun() {
  page.request = null;
  refreshRunButton();
}

function showFailure(status, body) {
  const reason = (body && body.error && body.error.status) || "";
  const message = (body && body.error && body.error.message) || "";
  if (status === 401) location.assign("/ServiceLogin?continue=" + encodeURIComponent(location.href));
  else if (config.failure_display === "none") return;
  else if (reason === "RESOURCE_EXHAUSTED" && message.includes("free generations")) showWarning(message);
  else if (reason === "PERMISSION_DENIED") showWarning(message);
  else if (status === 429 && reason === "RESOURCE_EXHAUSTED") showCallout(TEXTS.quota);
  else if (status === 429) showSnackbar(TEXTS.rateLimited);
  else if (status === 403) showCallout(TEXTS.region);
  else showToast(TEXTS.internal);
}

// ---------- chat turns ----------

function appendTurn(role, author) {
  const turn = fromTemplate("chat_turn");
  $(".chat-turn-container", turn).classList.add(role);
  $(".author-label", turn).textContent = author;
  $("#empty-hint")?.remove();
  $("#chat-session").appendChild(turn);
  return $(".turn-content", turn);
}

function chunk(element) {
  const wrapper = document.createElement("ms-prompt-chunk");
  wrapper.appendChild(element);
  return wrapper;
}

function textChunk(text) {
  const element = document.createElement("ms-text-chunk");
  element.textContent = text;
  return chunk(element);
}

// The img gets "loaded-image" once it has loaded, as on the real page.
function imageChunk(src) {
  const element = document.createElement("ms-image-chunk");
  const img = document.createElement("img");
  img.alt = "";
  img.addEventListener("load", () => {
    img.classList.add("loaded-image");
    scrollToEnd();
  }, { once: true });
  img.src = src;
  element.appendChild(img);
  return chunk(element);
}

function blobUrl({ mime, data }) {
  const bytes = Uint8Array.from(atob(data), (char) => char.charCodeAt(0));
  return URL.createObjectURL(new Blob([bytes], { type: mime }));
}

function scrollToEnd() {
  const session = $("#chat-session");
  session.scrollTop = session.scrollHeight;
}

// The model's thoughts, with a draft image: part of the model turn, not of the answer.
function thoughtChunk(thoughts) {
  const element = fromTemplate("thought_chunk");
  const inner = $(".thought-content", element);
  if (thoughts.text) inner.appendChild(textChunk(thoughts.text));
  (thoughts.images || []).forEach((image) => inner.appendChild(imageChunk(blobUrl(image))));
  return element;
}

function appendUserTurn(prompt, uploads) {
  const content = appendTurn("user", "User");
  uploads.forEach((upload) => content.appendChild(imageChunk(upload.dataUrl)));
  content.appendChild(textChunk(prompt));
  scrollToEnd();
}

// Images arrive a little apart, after the spinner is gone: a driver must wait until their count settles.
function appendModelTurn(answer) {
  const content = appendTurn("model", "Model");
  if (answer.thoughts) content.appendChild(thoughtChunk(answer.thoughts));
  if (answer.text) content.appendChild(textChunk(answer.text));
  (answer.images || []).forEach((image, index) => {
    setTimeout(() => {
      content.appendChild(imageChunk(blobUrl(image)));
      scrollToEnd();
    }, index * config.image_stagger_ms);
  });
  scrollToEnd();
}

// ---------- errors ----------

function withMessage(templateName, selector, message) {
  const element = fromTemplate(templateName);
  $(selector, element).textContent = message;
  return element;
}

const showCallout = (message) => $("#callouts").appendChild(withMessage("error_callout", ".message", message));
const showWarning = (message) => $("#callouts").appendChild(withMessage("warning_callout", ".message", message));
const showSnackbar = (message) => $("#overlay-container").appendChild(withMessage("snackbar", ".mdc-snackbar__label", message));
const showToast = (message) => $("#toasts").appendChild(withMessage("toast", ".content-text", message));

// Errors stay until the next run, so a driver polling every few hundred ms cannot miss them.
function clearErrors() {
  // a leftover from an earlier task (stale_callout) is not cleared
  document.querySelectorAll("ms-callout:not(.stale), mat-snack-bar-container, .toast").forEach((element) => element.remove());
}

// ---------- start ----------

function mountModelSelector() {
  if (!config.model_picker || config.markup === "legacy") return;
  const selector = fromTemplate("model_selector-current");
  $("#model-selector-mount").appendChild(selector);
  const trigger = $("button", selector);
  trigger.addEventListener("click", () => openModelPicker(trigger));
}

function mountTemporaryChat() {
  if (!config.temporary_chat) return;
  const toggle = fromTemplate("temporary_chat");
  toggle.addEventListener("click", () => {
    page.temporary = !page.temporary;
    toggle.setAttribute("aria-pressed", String(page.temporary));
  });
  $("#temporary-chat-mount").appendChild(toggle);
}

// "covered": a transparent layer over Run takes pointer clicks (a real click never reaches the button).
function coverRunButton() {
  const cover = document.createElement("div");
  cover.className = "run-button-cover";
  $("#run-button-mount").appendChild(cover);
}

function boot() {
  $("#account-name").textContent = config.account;
  mountModelSelector();
  mountTemporaryChat();

  const textarea = mountRole("prompt_textarea", "textarea-mount");
  const runButtonElement = mountRole("run_button", "run-button-mount");
  const addMedia = mountRole("add_media_button", "add-media-mount");
  const select = mountRole("aspect_ratio_select", "aspect-ratio-mount");
  const sizeSelect = fromTemplate("image_size_select");
  $("#image-size-mount").appendChild(sizeSelect);
  applyModelSettings();

  textarea?.addEventListener("input", refreshRunButton);
  textarea?.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !page.request && hasPrompt() && !page.awaitingCopyright) {
      event.preventDefault();
      startRun();
    }
  });
  if (config.run_button !== "keyboard_only") runButtonElement?.addEventListener("click", onRunClick);
  if (config.run_button === "covered") coverRunButton();
  addMedia?.addEventListener("click", () => openUploadMenu(addMedia));
  select?.addEventListener("click", () => openRatioPanel(select));
  sizeSelect.addEventListener("click", () => openSizePanel(sizeSelect));
  fileInput().addEventListener("change", onFileChosen);
  $("#settings-toggle").addEventListener("click", toggleSettings);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeMenu();
  });

  if (config.region_blocked) showCallout(TEXTS.region);
  if (config.refused_model) showWarning(TEXTS.unavailable(config.refused_model));
  if (config.stale_callout) showCallout(TEXTS.staleError).classList.add("stale");
  if (config.dialog_delay_ms > 0) setTimeout(() => showDialogsInTurn(config.dialogs), config.dialog_delay_ms);
  else showDialogsInTurn(config.dialogs);
  refreshRunButton();
}

boot();
