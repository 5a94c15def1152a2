// Until Run is enabled (a late copyright dialog can hold it back), dismissing dialogs meanwhile. Uses helpers.js.
async ([d, s, interval, budget]) => {
  const started = performance.now();
  for (;;) {
    sweepDialogs(d);
    if (runEnabled(s)) return true;
    if (performance.now() - started > budget) return false;
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}
