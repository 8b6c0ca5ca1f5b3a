// Shared by the scripts that tests/e2e/clients/test_js_client.py runs with `node SCRIPT '<json spec>'`.
// Each script prints one JSON line: {"ok": true, ...result} or {"ok": false, "error": {...}}.
import { InferenceClient } from "@huggingface/inference";

export function client(url) {
  // What a user of a self-hosted TGI writes: no token, the server URL as the endpoint.
  return new InferenceClient().endpoint(url);
}

export function errorInfo(e) {
  return {
    name: e?.name ?? null,
    message: e?.message ?? String(e),
    status: e?.httpResponse?.status ?? null,
    body: e?.httpResponse?.body ?? null,
    url: e?.httpRequest?.url ?? null,
  };
}

export async function run(fn) {
  let out;
  try {
    out = { ok: true, ...(await fn(JSON.parse(process.argv[2]))) };
  } catch (e) {
    out = { ok: false, error: errorInfo(e) };
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

// Records the URL and JSON body of every request the client makes, then lets it through.
export function recordingFetch(log) {
  return async (url, init) => {
    log.push({ url: String(url), method: init?.method ?? "GET", body: init?.body ? JSON.parse(init.body) : null });
    return fetch(url, init);
  };
}
