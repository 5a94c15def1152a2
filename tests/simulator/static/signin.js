// Two-step Google-like sign-in: email, then password, then a form POST to /_signin.
"use strict";

const form = document.getElementById("signin-form");
const email = document.querySelector("input[type=email]");
const password = document.querySelector("input[type=password]");
const params = new URLSearchParams(location.search);

function showPasswordStep() {
  const filled = email.value.trim() !== "";
  document.getElementById("identifier-error").hidden = filled;
  if (!filled) return;
  if (form.dataset.refuse === "true") {
    // config signin_refused: Google's refusal comes right after the e-mail step
    location.assign("/v3/signin/rejected?continue=" + encodeURIComponent(document.getElementById("continue-field").value));
    return;
  }
  document.getElementById("chosen-account").textContent = email.value.trim();
  document.getElementById("identifier-step").hidden = true;
  document.getElementById("password-step").hidden = false;
  password.focus();
}

function submitPassword() {
  const filled = password.value !== "";
  document.getElementById("password-error").hidden = filled;
  if (filled) form.submit();
}

// Enter moves through the steps like the buttons (the form has no submit button).
function onEnter(action) {
  return (event) => {
    if (event.key !== "Enter") return;
    event.preventDefault();
    action();
  };
}

document.getElementById("continue-field").value = params.get("continue") || "/prompts/new_chat";
document.getElementById("server-error").hidden = !params.has("error");
document.querySelector("#identifierNext button").addEventListener("click", showPasswordStep);
document.querySelector("#passwordNext button").addEventListener("click", submitPassword);
email.addEventListener("keydown", onEnter(showPasswordStep));
password.addEventListener("keydown", onEnter(submitPassword));
form.addEventListener("submit", (event) => event.preventDefault());
