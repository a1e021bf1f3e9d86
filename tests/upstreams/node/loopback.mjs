// Preloaded with `node --import ./loopback.mjs <server>` (tests/gateway.rs):
// - an HTTP server that would listen on every interface (server-everything's
//   `app.listen(PORT)`) listens on 127.0.0.1 only, on the port in IDGUARD_UPSTREAM_PORT
//   (default 0: any free port), and `listening on 127.0.0.1:PORT` is printed on stdout once
//   it accepts connections (the tests read that line instead of sleeping);
// - test probe: `GET /_probe/requests` (answered here, not logged) returns
//   `{"http": [[method, url], ...]}`, every HTTP request the server received, so tests can
//   assert that idguard never let a request through;
// - with IDGUARD_EXIT_ON_STDIN_EOF=1 (the test harness) the process exits when stdin
//   closes, so it never outlives the test process.
import http from "node:http";
import net from "node:net";

const listen = net.Server.prototype.listen;
let announced = false;
net.Server.prototype.listen = function (...args) {
  const callback = args.find((a) => typeof a === "function");
  const port = Number(process.env.IDGUARD_UPSTREAM_PORT ?? 0);
  this.once("listening", () => {
    const addr = this.address();
    if (!announced && addr && typeof addr === "object") {
      announced = true;
      process.stdout.write(`listening on 127.0.0.1:${addr.port}\n`);
    }
  });
  return listen.call(this, { port, host: "127.0.0.1" }, callback);
};

const requests = [];
const emit = http.Server.prototype.emit;
http.Server.prototype.emit = function (event, ...args) {
  if (event === "request") {
    const [req, res] = args;
    if (req.method === "GET" && req.url === "/_probe/requests") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ http: requests }));
      return true;
    }
    requests.push([req.method, req.url]);
  }
  return emit.call(this, event, ...args);
};

if (process.env.IDGUARD_EXIT_ON_STDIN_EOF === "1") {
  process.stdin.on("data", () => {});
  process.stdin.on("end", () => process.exit(0));
  process.stdin.on("error", () => process.exit(0));
  process.stdin.resume();
}
