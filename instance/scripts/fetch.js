// Reads generated images' bytes inside the page: blob: URLs only resolve there. Drafts in thoughts are left out.
async ([sel, turnsBefore]) => {
  const turns = Array.from(document.querySelectorAll(sel.model_turn)).slice(turnsBefore);
  const out = [];
  for (const turn of turns) {
    for (const img of turn.querySelectorAll(sel.generated_image)) {
      if (sel.thought && img.closest(sel.thought)) continue;
      const src = img.currentSrc || img.src;
      if (src.startsWith("data:")) { out.push(src.slice(src.indexOf(",") + 1)); continue; }
      const blob = await (await fetch(src, {credentials: "include"})).blob();
      const url = await new Promise((resolve, reject) => {
        const reader = new FileReader();
        reader.onload = () => resolve(reader.result);
        reader.onerror = () => reject(reader.error);
        reader.readAsDataURL(blob);
      });
      out.push(url.slice(url.indexOf(",") + 1));
    }
  }
  return out;
}
