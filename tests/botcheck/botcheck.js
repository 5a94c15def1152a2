// Reads the signals bot checks look at and posts them to /report (served by tests.botcheck).
"use strict";

// Read first, synchronously, as a sign-in script at the page's own load would (not seconds later).
const AT_LOAD = {
  outer: [window.outerWidth, window.outerHeight],
  inner: [window.innerWidth, window.innerHeight],
  screen: [screen.width, screen.height, screen.availWidth, screen.availHeight],
};

function isNative(fn) {
  return typeof fn === "function" && /\{\s*\[native code\]\s*\}\s*$/.test(Function.prototype.toString.call(fn));
}

function webdriverGetterNative() {
  const descriptor = Object.getOwnPropertyDescriptor(Navigator.prototype, "webdriver");
  return descriptor ? isNative(descriptor.get) : null;
}

async function highEntropy() {
  if (!navigator.userAgentData) return null;
  try {
    return await navigator.userAgentData.getHighEntropyValues(
      ["architecture", "bitness", "model", "platformVersion", "uaFullVersion", "fullVersionList", "wow64"]);
  } catch (error) {
    return {error: String(error)};
  }
}

async function notificationQuery() {
  try {
    return (await navigator.permissions.query({name: "notifications"})).state;
  } catch (error) {
    return "error: " + error;
  }
}

function webgl() {
  try {
    const gl = document.createElement("canvas").getContext("webgl");
    if (!gl) return {available: false};
    const info = gl.getExtension("WEBGL_debug_renderer_info");
    return {
      available: true,
      vendor: gl.getParameter(gl.VENDOR),
      renderer: gl.getParameter(gl.RENDERER),
      unmasked_vendor: info ? gl.getParameter(info.UNMASKED_VENDOR_WEBGL) : null,
      unmasked_renderer: info ? gl.getParameter(info.UNMASKED_RENDERER_WEBGL) : null,
    };
  } catch (error) {
    return {available: false, error: String(error)};
  }
}

// ICE candidates with a STUN server on this page's own port (tests.botcheck answers STUN there): a host or
// server-reflexive candidate that names an address shows what WebRTC reveals beside the proxy.
async function webrtcCandidates() {
  if (typeof RTCPeerConnection === "undefined") return {available: false, candidates: []};
  const candidates = [];
  const pc = new RTCPeerConnection({iceServers: [{urls: `stun:127.0.0.1:${location.port || 80}`}]});
  try {
    pc.createDataChannel("probe");
    const gathered = new Promise((resolve) => {
      pc.onicecandidate = (event) => (event.candidate ? candidates.push(event.candidate.candidate) : resolve());
      setTimeout(resolve, 4000);
    });
    await pc.setLocalDescription(await pc.createOffer());
    await gathered;
    return {available: true, candidates};
  } catch (error) {
    return {available: true, candidates, error: String(error)};
  } finally {
    pc.close();
  }
}

async function collect() {
  const uaData = navigator.userAgentData;
  return {
    secure_context: window.isSecureContext,
    user_agent: navigator.userAgent,
    app_version: navigator.appVersion,
    webdriver: navigator.webdriver,
    webdriver_getter_native: webdriverGetterNative(),
    ua_data: uaData ? {brands: uaData.brands, mobile: uaData.mobile, platform: uaData.platform} : null,
    ua_high_entropy: await highEntropy(),
    plugins: navigator.plugins.length,
    mime_types: navigator.mimeTypes.length,
    pdf_viewer_enabled: navigator.pdfViewerEnabled,
    window_chrome: typeof window.chrome === "object" && window.chrome !== null,
    chrome_keys: window.chrome ? Object.keys(window.chrome).sort() : [],
    chrome_runtime: !!(window.chrome && window.chrome.runtime),
    notification_permission: typeof Notification === "undefined" ? null : Notification.permission,
    notification_query: await notificationQuery(),
    outer: [window.outerWidth, window.outerHeight],
    inner: [window.innerWidth, window.innerHeight],
    screen: [screen.width, screen.height, screen.availWidth, screen.availHeight, screen.colorDepth],
    language: navigator.language,
    languages: Array.from(navigator.languages || []),
    webgl: webgl(),
    at_load: AT_LOAD,
    location: location.href,
    time_zone: Intl.DateTimeFormat().resolvedOptions().timeZone,
    timezone_offset_min: new Date().getTimezoneOffset(),
    intl_locale: Intl.DateTimeFormat().resolvedOptions().locale,
    number_locale: new Intl.NumberFormat().resolvedOptions().locale,
    webrtc: await webrtcCandidates(),
    hardware_concurrency: navigator.hardwareConcurrency,
    device_memory: navigator.deviceMemory === undefined ? null : navigator.deviceMemory,
  };
}

collect()
  .catch((error) => ({error: String(error)}))
  .then(async (report) => {
    document.getElementById("out").textContent = JSON.stringify(report, null, 2);
    await fetch("/report", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(report)});
    document.title = "Bot check: reported";
  });
