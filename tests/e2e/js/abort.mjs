// Two long streams (chat and text generation) cancelled with AbortController after their first chunk;
// then, still in this process, two short requests must be admitted at once (both slots free again).
// Spec: {url, maxTokens, messages, prompt}.
import { client, run } from "./common.mjs";

const SHORT = JSON.stringify({ inputs: "Hello world", parameters: { max_new_tokens: 3 } });

async function status(url) {
  const response = await fetch(url + "/generate", {
    method: "POST", body: SHORT, headers: { "Content-Type": "application/json" },
  });
  await response.text();
  return response.status;
}

await run(async ({ url, maxTokens, messages, prompt }) => {
  const hf = client(url);
  const controllers = [new AbortController(), new AbortController()];
  const streams = [
    hf.chatCompletionStream({ messages, max_tokens: maxTokens, temperature: 0 }, { signal: controllers[0].signal }),
    hf.textGenerationStream({ inputs: prompt, parameters: { max_new_tokens: maxTokens, temperature: 0 } },
      { signal: controllers[1].signal }),
  ];
  const first = [];
  for (const s of streams) {
    first.push((await s.next()).value);
  }
  const thirdStatus = await status(url);

  for (const c of controllers) c.abort();
  const afterAbort = [];
  for (const s of streams) {
    let outcome = "finished";
    try {
      // Chunks already received may still come out; then the aborted read throws.
      for (let i = 0; i < 10000; i++) {
        if ((await s.next()).done) break;
      }
    } catch (e) {
      outcome = e.name;
    }
    afterAbort.push(outcome);
  }

  const deadline = Date.now() + 5000;
  let codes;
  let tries = 0;
  for (;;) {
    tries++;
    codes = await Promise.all([status(url), status(url)]);
    if (codes.every((c) => c === 200) || Date.now() > deadline) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return { first, thirdStatus, afterAbort, codes, tries };
});
