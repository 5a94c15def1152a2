// Until the run shows as started (a new turn, or the busy indicator), or `budget` ms pass.
async ([s, turnsBefore, interval, budget]) => {
  const count = (css) => { try { return document.querySelectorAll(css).length; } catch (error) { return 0; } };
  const started = performance.now();
  for (;;) {
    if (count(s.chat_turn) > turnsBefore || count(s.busy) > 0) return true;
    if (performance.now() - started > budget) return false;
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}
