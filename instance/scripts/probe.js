// The page check's one round trip for every role: counts and visibility by document.querySelectorAll. A
// candidate in Playwright's own syntax (`:has-text(...)`) is not CSS; it comes back with css_error for a
// second look. Uses helpers.js (`shown`).
([roles, modelSelectors, sample]) => {
  const result = {};
  for (const [role, candidates] of Object.entries(roles)) {
    result[role] = candidates.map((selector) => {
      let found;
      try { found = document.querySelectorAll(selector); }
      catch (error) { return {selector, count: 0, visible: false, css_error: String(error.message || error)}; }
      let visible = false;
      for (let i = 0; i < found.length && i < sample && !visible; i++) visible = shown(found[i]);
      return {selector, count: found.length, visible};
    });
  }
  let model = null;
  for (const selector of modelSelectors) {
    let element = null;
    try { element = document.querySelector(selector); } catch (error) { continue; }
    const text = element && element.textContent.trim();
    if (text) { model = text; break; }
  }
  return {roles: result, model};
}
