// What both pages do with the service: POST a PNG to /v1/translate and show the PNG it answers in `result`
// (an <img>); resolves to the milliseconds it took, rejects with "status: error" from the JSON error.
async function translateInto(result, body) {
  const t0 = performance.now();
  const resp = await fetch("/v1/translate", { method: "POST", headers: { "Content-Type": "image/png" }, body });
  if (!resp.ok) {
    const err = await resp.json().catch(() => ({ error: resp.statusText }));
    throw new Error(`${resp.status}: ${err.error}`);
  }
  const out = await resp.blob();
  if (result.src) URL.revokeObjectURL(result.src);
  result.src = URL.createObjectURL(out);
  return Math.round(performance.now() - t0);
}
