// Until a select shows `value` as chosen (Angular Material can apply a choice after its overlay closed).
// Uses helpers.js.
async ([s, which, value, interval, budget]) => {
  const same = (text) => text !== null && (text === value || text.split(" ")[0] === value);
  const named = (text) => value.some((pattern) => new RegExp(pattern, "i").test(text || ""));
  const shows = () =>
    which === "model" ? named(textOf(firstOf(s.model_name))) : same(selectValue(s[which], s.select_value));
  const started = performance.now();
  for (;;) {
    if (shows()) return true;
    if (performance.now() - started > budget) return false;
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}
