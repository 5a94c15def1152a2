// The simulated AI Studio chat page: plain browser JS, markup comes from the <template>s in new_chat.html.
"use strict";

const RATIOS = ["Auto", "1:1", "9:16", "16:9", "3:4", "4:3", "3:2", "2:3", "5:4", "4:5", "21:9"];
const GENERATE_URL = "/_/MakerSuiteService/GenerateContent";
const TEXTS = {
  quota: "You've exceeded your quota for this model. Please try again later.",
  rateLimited: "Failed to generate content. Please try again.",
  internal: "An internal error has occurred",
  region: "Failed to list models",
};

const config = JSON.parse(document.getElementById("sim-config").textContent);
const page = {
  ratio: "Auto",
  uploads: [], // {name, mime, dataUrl, data_b64} of the chips in the prompt box
  uploadedOnce: false, // the copyright dialog only follows the first upload of the page
  request: null, // AbortController of the run in progress; null when idle
  menu: null, // overlay layer of the open menu or select panel
};

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

function openRatioPanel(select) {
  const listbox = fromTemplate("ratio_listbox");
  for (const ratio of RATIOS) {
    const option = fromTemplate("ratio_option");
    $(".mdc-list-item__primary-text", option).textContent = ratio;
    option.setAttribute("aria-selected", String(ratio === page.ratio));
    option.addEventListener("click", () => {
      page.ratio = ratio;
      $(".ratio-value", select).textContent = ratio;
      closeMenu();
    });
    listbox.appendChild(option);
  }
  openMenu(select, listbox);
  select.setAttribute("aria-expanded", "true");
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
    const upload = { name: file.name, mime: file.type || "application/octet-stream", dataUrl, data_b64: dataUrl.slice(dataUrl.indexOf(",") + 1) };
    page.uploads.push(upload);
    addChip(upload);
    if (config.copyright_dialog && !page.uploadedOnce) showDialog("copyright");
    page.uploadedOnce = true;
  } catch (error) {
    showToast(TEXTS.internal);
  }
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
}

// ---------- run ----------

const hasPrompt = () => Boolean(promptTextarea() && promptTextarea().value.trim() !== "");

// Idle: "Run", enabled only with a prompt. Busy: "Stop" with a spinner, enabled so it can stop the run.
function refreshRunButton() {
  const button = runButton();
  if (!button) return;
  const busy = page.request !== null;
  const legacy = config.markup === "legacy";
  button.disabled = !busy && !hasPrompt();
  button.setAttribute("aria-label", busy ? (legacy ? "Stop generating" : "Stop") : "Run");
  $(".label", button).textContent = busy ? "Stop" : "Run";
  const spinner = $("svg", button);
  if (busy && !spinner && !legacy) button.prepend(fromTemplate("spinner"));
  if (!busy && spinner) spinner.remove();
}

function onRunClick() {
  if (page.request) page.request.abort();
  else if (hasPrompt()) startRun();
}

function requestBody(prompt, uploads) {
  const files = uploads.map(({ name, mime, data_b64 }) => ({ name, mime, data_b64 }));
  return JSON.stringify({ prompt, aspect_ratio: page.ratio, model: config.model, uploads: files });
}

async function startRun() {
  const prompt = promptTextarea().value;
  const uploads = page.uploads;
  clearPromptBox();
  clearErrors();
  appendUserTurn(prompt, uploads);
  page.request = new AbortController();
  refreshRunButton();
  try {
    const response = await fetch(GENERATE_URL, {
      method: "POST",
      credentials: "include",
      headers: { "Content-Type": "application/json" },
      body: requestBody(prompt, uploads),
      signal: page.request.signal,
    });
    const body = await response.json().catch(() => ({}));
    finishRun();
    if (response.ok) appendModelTurn(body);
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
  if (status === 401) location.assign("/ServiceLogin?continue=" + encodeURIComponent(location.href));
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

function appendUserTurn(prompt, uploads) {
  const content = appendTurn("user", "User");
  uploads.forEach((upload) => content.appendChild(imageChunk(upload.dataUrl)));
  content.appendChild(textChunk(prompt));
  scrollToEnd();
}

// Images arrive a little apart, after the spinner is gone: a driver must wait until their count settles.
function appendModelTurn(answer) {
  const content = appendTurn("model", "Model");
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
const showSnackbar = (message) => $("#overlay-container").appendChild(withMessage("snackbar", ".mdc-snackbar__label", message));
const showToast = (message) => $("#toasts").appendChild(withMessage("toast", ".content-text", message));

// Errors stay until the next run, so a driver polling every few hundred ms cannot miss them.
function clearErrors() {
  document.querySelectorAll("ms-callout, mat-snack-bar-container, .toast").forEach((element) => element.remove());
}

// ---------- start ----------

function boot() {
  $("#model-name").textContent = config.model;
  $("#settings-model").textContent = config.model;
  $("#account-name").textContent = config.account;

  const textarea = mountRole("prompt_textarea", "textarea-mount");
  const runButtonElement = mountRole("run_button", "run-button-mount");
  const addMedia = mountRole("add_media_button", "add-media-mount");
  const select = mountRole("aspect_ratio_select", "aspect-ratio-mount");

  textarea?.addEventListener("input", refreshRunButton);
  textarea?.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !page.request && hasPrompt()) {
      event.preventDefault();
      startRun();
    }
  });
  runButtonElement?.addEventListener("click", onRunClick);
  addMedia?.addEventListener("click", () => openUploadMenu(addMedia));
  select?.addEventListener("click", () => openRatioPanel(select));
  fileInput().addEventListener("change", onFileChosen);
  $("#settings-toggle").addEventListener("click", toggleSettings);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeMenu();
  });

  if (config.region_blocked) showCallout(TEXTS.region);
  if (config.dialog_delay_ms > 0) setTimeout(() => showDialogsInTurn(config.dialogs), config.dialog_delay_ms);
  else showDialogsInTurn(config.dialogs);
  refreshRunButton();
}

boot();
