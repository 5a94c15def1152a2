// Waits inside the page, checking every `interval` ms, until the model turn is complete, an error shows, or
// `budget` ms pass. Complete: no spinner, images loaded, and either as many images as the GenerateContent
// response carried (`expected`, when it was seen) or the same counts for `settle` ms. Images and text inside
// the model's thoughts are drafts, not the answer. Only messages that are new since Run and visible count;
// a notice that names no known failure does not end the wait. Dialogs are dismissed on every round.
// Uses helpers.js.
async ([d, sel, turnsBefore, interval, budget, expected, settle]) => {
  const all = (s) => q(s);
  const inThought = (el) => Boolean(sel.thought && el.closest(sel.thought));
  const kindOf = (message) => {
    const lowered = message.toLowerCase();
    for (const [kind, needles] of sel.texts) if (needles.some((n) => lowered.includes(n))) return kind;
    return null;
  };
  const isNew = (el) => !el.hasAttribute("data-fleet-seen") && shown(el);
  const fresh = (s) => all(s).filter(isNew).map(textOf).filter(Boolean);
  const snapshot = () => {
    const turns = all(sel.model_turn).slice(turnsBefore);
    let images = 0, drafts = 0, pending = 0;
    const texts = [];
    for (const turn of turns) {
      for (const img of turn.querySelectorAll(sel.generated_image)) {
        const loaded = img.complete && (img.currentSrc || img.src);
        if (inThought(img)) { if (loaded) drafts++; continue; }
        if (loaded) images++; else pending++;
      }
      // Text candidates may nest (a chunk inside a turn-content): take the first candidate that matches.
      for (const candidate of sel.model_text) {
        const found = Array.from(turn.querySelectorAll(candidate));
        if (!found.length) continue;
        for (const t of found) { const s = t.textContent.trim(); if (s && !inThought(t)) texts.push(s); }
        break;
      }
    }
    const notices = fresh(sel.warnings).concat(fresh(sel.toasts));
    return {url: location.href, busy: all(sel.busy).length > 0, turns: turns.length, images, drafts, pending,
            text: texts.join("\n"), callouts: fresh(sel.callouts),
            warnings: notices.filter((m) => kindOf(m) !== null), notices: notices.filter((m) => kindOf(m) === null)};
  };
  const started = performance.now();
  let previous = null, since = 0;
  for (;;) {
    sweepDialogs(d);
    const state = snapshot();
    const now = performance.now();
    const settled = state.turns > 0 && !state.busy && state.pending === 0;
    const key = JSON.stringify([state.turns, state.images, state.text]);
    if (state.callouts.length || state.warnings.length) return {...state, done: false};
    // The response counts every image it carried, the thoughts' drafts included.
    if (settled && expected !== null && state.images + state.drafts >= expected) return {...state, done: true};
    if (!settled || key !== previous) { previous = settled ? key : null; since = now; }
    else if (now - since >= settle) return {...state, done: true};
    if (now - started > budget) return {...state, done: false};
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}
