// Until the upload shows in the prompt box by any signal, dismissing dialogs (the copyright one) meanwhile.
// Uses helpers.js.
async ([d, s, before, interval, budget]) => {
  const started = performance.now();
  for (;;) {
    sweepDialogs(d);
    const box = q(s.prompt_box);
    if (q(s.upload_chip).length > before.chips) return {signal: "chip"};
    if (q(s.upload_media).length > before.media) return {signal: "media_container"};
    if (box.reduce((n, b) => n + q('img[src^="blob:"]', b).length, 0) > before.blobs) return {signal: "blob_img"};
    const tokens = textOf(firstOf(s.token_count));
    if (before.tokens !== null && tokens !== null && tokens !== before.tokens) return {signal: "token_count"};
    if (performance.now() - started > budget) return {signal: null, run_enabled: runEnabled(s)};
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}
