// A client on another gRPC implementation (grpc-js, Node.js) that knows only
// the .proto files. It calls all five UserService RPCs, the health service
// and server reflection, then prints one JSON object with what it saw.
// Usage: node tests/interop/client.mjs HOST:PORT ADMIN_TOKEN
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..", "..");
const reflectionDir = path.join(root, "node_modules", "@grpc", "reflection", "build", "proto");
const options = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

function load(file, includeDirs) {
  return grpc.loadPackageDefinition(loader.loadSync(file, { ...options, includeDirs }));
}

const [address, token] = process.argv.slice(2);
const mesh = load("meshdemo/v1/user.proto", [path.join(root, "protos")]).meshdemo.v1;
const health = load(path.join(here, "health.proto"), []).grpc.health.v1;
const reflection = load("grpc/reflection/v1alpha/reflection.proto", [reflectionDir]).grpc.reflection.v1alpha;

const creds = grpc.credentials.createInsecure();
const users = new mesh.UserService(address, creds);
const meta = new grpc.Metadata();
meta.set("authorization", `Bearer ${token}`);
const deadline = () => new Date(Date.now() + 5000);

const unary = (client, method, request) =>
  new Promise((resolve, reject) =>
    client[method](request, meta, { deadline: deadline() }, (err, reply) => (err ? reject(err) : resolve(reply))),
  );

function collect(call) {
  return new Promise((resolve, reject) => {
    const items = [];
    call.on("data", (item) => items.push(item));
    call.on("error", reject);
    call.on("end", () => resolve(items));
  });
}

const stamp = Date.now();
const created = await unary(users, "CreateUser", {
  name: "Grace", email: `grace.${stamp}@example.com`, age: 45, roles: ["ROLE_ADMIN"], request_id: `js-${stamp}`,
});
const fetched = await unary(users, "GetUser", { id: created.user.id });
const listed = await collect(users.ListUsers({ page_size: 10 }, meta, { deadline: deadline() }));

const batch = await new Promise((resolve, reject) => {
  const call = users.BatchCreateUsers(meta, { deadline: deadline() }, (err, reply) => (err ? reject(err) : resolve(reply)));
  for (const i of [1, 2]) {
    call.write({ user: { name: `JS ${i}`, email: `js${i}.${stamp}@example.com`, age: 30 + i, request_id: `jsb-${stamp}-${i}` } });
  }
  call.end();
});

const chatCall = users.Chat(meta, { deadline: deadline() });
const chatDone = collect(chatCall);
chatCall.write({ message: { user_id: created.user.id, text: "hello from grpc-js" } });
chatCall.end();
const chat = await chatDone;

let notFound = null;
try {
  await unary(users, "GetUser", { id: "no-such-user" });
} catch (err) {
  notFound = err.code;
}

const healthClient = new health.Health(address, creds);
const check = await new Promise((resolve, reject) =>
  healthClient.Check({ service: "meshdemo.v1.UserService" }, { deadline: deadline() }, (err, r) => (err ? reject(err) : resolve(r))),
);

const reflectionClient = new reflection.ServerReflection(address, creds);
const reflCall = reflectionClient.ServerReflectionInfo({ deadline: deadline() });
const reflDone = collect(reflCall);
reflCall.write({ list_services: "*" });
reflCall.end();
const reflReplies = await reflDone;
const services = reflReplies.flatMap((r) => (r.list_services_response ? r.list_services_response.service.map((s) => s.name) : []));

console.log(JSON.stringify({
  created: created.user, fetched: fetched.user, listed: listed.length,
  listed_tokens: listed.every((r) => r.next_page_token.length > 0),
  batch: batch.users.length, chat: chat.map((r) => ({ text: r.message.text, has_timestamp: r.message.timestamp !== null, replica: r.replica })),
  not_found_code: notFound, health: check.status, services,
}));
for (const c of [users, healthClient, reflectionClient]) c.close();
