// chatCompletion / chatCompletionStream. Spec: {url, stream, args}.
import { client, recordingFetch, run } from "./common.mjs";

await run(async ({ url, stream, args }) => {
  const requests = [];
  const options = { fetch: recordingFetch(requests) };
  const hf = client(url);
  if (!stream) {
    return { result: await hf.chatCompletion(args, options), requests };
  }
  const chunks = [];
  for await (const chunk of hf.chatCompletionStream(args, options)) {
    chunks.push(chunk);
  }
  return { chunks, requests };
});
