// A browser client of jac-orc made the way users make one: TypeScript generated from proto/ by
// protoc-gen-es (src/gen, by `npm run generate`), calling over grpc-web with connect-web's
// transport from a page on another origin. It lists the templates, then deploys redis and shows
// each per-object event of the server-streaming Deploy as it arrives. When it is done, the title
// says so with what it saw, as JSON: tests/it/browser.rs reads it from headless Chromium's
// DevTools target list.
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { Orchestrator } from "./gen/jac/splice/v1/orchestrator_pb";

const params = new URLSearchParams(location.search);
const server = params.get("server") ?? "";
const token = params.get("token") ?? "";

const bearer: Interceptor = (next) => async (req) => {
  req.header.set("authorization", `Bearer ${token}`);
  return next(req);
};

const seen: { templates: string[]; events: string[]; summary: string } = { templates: [], events: [], summary: "" };

function show(id: "templates" | "events", text: string): void {
  seen[id].push(text);
  const item = document.createElement("li");
  item.textContent = text;
  document.getElementById(id)!.appendChild(item);
}

async function main(): Promise<void> {
  const transport = createGrpcWebTransport({ baseUrl: server, interceptors: [bearer] });
  const client = createClient(Orchestrator, transport);
  const listed = await client.listTemplates({});
  for (const t of listed.templates) {
    show("templates", t.module);
  }
  const events = client.deploy({ module: "redis", config: { name: "from-browser", memory: "32mb" }, wait: true });
  for await (const event of events) {
    if (event.event.case === "object") {
      show("events", event.event.value.line);
    } else if (event.event.case === "summary") {
      const d = event.event.value.deployment;
      seen.summary = `${d?.name} created=${event.event.value.created}`;
      document.getElementById("summary")!.textContent = `summary: ${seen.summary}`;
    }
  }
  document.getElementById("state")!.textContent = "done";
  document.title = `done ${JSON.stringify(seen)}`;
}

main().catch((e: unknown) => {
  const message = `error: ${e instanceof Error ? e.message : String(e)}`;
  document.getElementById("state")!.textContent = message;
  document.title = message;
});
