// Shared by the scripts that page_scripts.py gives the helpers: prepended once, in one scope with the script.
// `sweepDialogs` clicks what closes a known dialog: a dismiss candidate (copyright acknowledgement included),
// a button named like "Got it" inside a dialog, or, in a dialog with a consent checkbox, the box and then its
// Continue. `settings` reads what the page shows as chosen.
const q = (css, root = document) => {
  if (!css) return [];
  try { return Array.from(root.querySelectorAll(css)); } catch (error) { return []; }
};
const shown = (el) => {
  if (!el || !el.isConnected) return false;
  const box = el.getBoundingClientRect();
  return box.width > 0 && box.height > 0 && getComputedStyle(el).visibility !== "hidden";
};
const enabled = (el) => !el.disabled && el.getAttribute("aria-disabled") !== "true";
const labels = (el) => [el.getAttribute("aria-label") || "", el.textContent || ""].map((t) => t.trim().toLowerCase());
const firstOf = (candidates, root = document) => {
  for (const css of candidates) { const found = q(css, root)[0]; if (found) return found; }
  return null;
};
const textOf = (el) => (el ? el.textContent.replace(/\s+/g, " ").trim() : null);
const sweepDialogs = (d) => {
  let clicked = 0;
  for (let round = 0; round < 6; round++) {
    let target = null;
    for (const css of d.dismiss) { target = q(css).find((b) => shown(b) && enabled(b)); if (target) break; }
    for (const dialog of target ? [] : q(d.dialog).filter(shown)) {
      const boxes = q(d.checkbox, dialog);
      boxes.filter((box) => !box.checked && !box.disabled).forEach((box) => box.click());
      const names = boxes.length ? d.consent.concat(d.names) : d.names;
      target = q("button, [role=button]", dialog)
        .find((b) => shown(b) && enabled(b) && labels(b).some((t) => names.includes(t)));
      if (target) break;
    }
    if (!target) break;
    target.click();
    clicked++;
  }
  return clicked;
};
const selectValue = (candidates, valueCss) => {
  const select = firstOf(candidates);
  if (!select) return null;
  return textOf(q(valueCss, select)[0] || select);
};
const settings = (s) => ({
  model: textOf(firstOf(s.model_name)),
  ratio: selectValue(s.ratio_select, s.select_value),
  size: selectValue(s.size_select, s.select_value),
});
const runEnabled = (s) => { const run = q(s.run_button)[0]; return Boolean(run && enabled(run)); };
