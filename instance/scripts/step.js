// One step's sweep: dismiss dialogs, optionally switch on Temporary chat and mark the messages already on the
// page as seen (before Run), and read what the step needs. Uses helpers.js.
async ([d, s, options]) => {
  const dismissed = sweepDialogs(d);
  let temporary = null;
  const toggle = firstOf(s.temporary);
  if (toggle) {
    const pressed = () => toggle.getAttribute("aria-pressed") === "true"
      || toggle.getAttribute("aria-checked") === "true" || toggle.classList.contains("active");
    if (options.temporary && !pressed() && enabled(toggle)) toggle.click();
    temporary = pressed();
  }
  const messages = q(s.messages).filter(shown);
  if (options.markSeen) messages.concat(q(s.toasts)).forEach((el) => el.setAttribute("data-fleet-seen", ""));
  const box = q(s.prompt_box);
  return {
    url: location.href, dismissed, temporary, ...settings(s),
    messages: messages.map(textOf).filter(Boolean),
    turns: q(s.chat_turn).length, model_turns: q(s.model_turn).length,
    upload: {
      chips: q(s.upload_chip).length, media: q(s.upload_media).length,
      blobs: box.reduce((n, b) => n + q('img[src^="blob:"]', b).length, 0), tokens: textOf(firstOf(s.token_count)),
    },
  };
}
