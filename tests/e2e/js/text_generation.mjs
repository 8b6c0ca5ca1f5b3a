// textGeneration / textGenerationStream. Spec: {url, stream, args}.
// With an endpoint URL, v4 sends both to {url}/v1/completions (OpenAI legacy completions); the stream
// yields the raw completion chunks ({choices: [{text}]}), not TGI's native token events.
import { client, recordingFetch, run } from "./common.mjs";

await run(async ({ url, stream, args }) => {
  const requests = [];
  const options = { fetch: recordingFetch(requests) };
  const hf = client(url);
  if (!stream) {
    return { result: await hf.textGeneration(args, options), requests };
  }
  const chunks = [];
  for await (const chunk of hf.textGenerationStream(args, options)) {
    chunks.push(chunk);
  }
  return { chunks, requests };
});
