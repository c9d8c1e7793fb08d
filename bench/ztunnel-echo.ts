// Echo server for the ztunnel benchmark, run inside a server pod's namespace:
//
//   node ztunnel-echo.js --port N
//
// Every byte is sent back as it arrives (TCP_NODELAY, no framing), so a 1 KB request is answered
// by a 1 KB echo. Prints "listening <port>" once bound.
import net from "node:net";

const i = process.argv.indexOf("--port");
const port = Number(i > 0 ? process.argv[i + 1] : NaN);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  process.stderr.write("echo: --port N is required\n");
  process.exit(2);
}

const server = net.createServer({ noDelay: true }, (socket) => {
  socket.on("error", () => undefined); // a client's reset is its business
  socket.pipe(socket);
});
server.on("error", (e) => {
  process.stderr.write(`echo: ${e.message}\n`);
  process.exit(3);
});
server.listen(port, "0.0.0.0", () => {
  const bound = server.address();
  process.stdout.write(`listening ${typeof bound === "object" && bound ? bound.port : port}\n`);
});
