// chatCompletion and chatCompletionStream with the same args (tools, tool_choice, response_format, seed...),
// the streamed tool calls accumulated by `index` the way a JS user of the client does it.
// Spec: {url, args}. Prints {ok, result, chunks, accumulated, requests}.
import { client, recordingFetch, run } from "./common.mjs";

await run(async ({ url, args }) => {
  const requests = [];
  const options = { fetch: recordingFetch(requests) };
  const hf = client(url);
  const result = await hf.chatCompletion(args, options);
  const chunks = [];
  const accumulated = [];
  let content = "";
  for await (const chunk of hf.chatCompletionStream(args, options)) {
    chunks.push(chunk);
    const delta = chunk.choices?.[0]?.delta ?? {};
    content += delta.content ?? "";
    for (const call of delta.tool_calls ?? []) {
      accumulated[call.index] ??= { id: call.id, type: call.type, function: { name: call.function?.name, arguments: "" } };
      accumulated[call.index].function.arguments += call.function?.arguments ?? "";
    }
  }
  return { result, chunks, accumulated, content, requests };
});
