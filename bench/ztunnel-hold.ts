// Opens many connections and holds them, for the ztunnel benchmark's memory figure; run inside a
// client pod's namespace:
//
//   node ztunnel-hold.js --host IP --port N --count 1000 [--parallel 50] [--timeout-ms 120000]
//
// Each connection sends "hold\n" and waits for its echo (so it is established end to end, through
// any proxies), at most `parallel` being opened at once. Then it prints "held {json}" and waits;
// a line "close" on stdin (or stdin ending) ends every connection with a FIN, and once all have
// closed it prints "closed" and exits 0. It exits 1 if the whole run exceeds the timeout.
import net from "node:net";

const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const host = arg("host");
const port = Number(arg("port"));
const count = Number(arg("count") ?? 1000);
const parallel = Number(arg("parallel") ?? 50);
const timeoutMs = Number(arg("timeout-ms") ?? 120_000);
if (!host || !Number.isInteger(port) || !Number.isInteger(count) || !Number.isInteger(parallel)) {
  process.stderr.write("hold: --host IP --port N [--count N] [--parallel N] are required\n");
  process.exit(2);
}

const GREETING = "hold\n";
const sockets: net.Socket[] = [];
let held = 0;
let failed = 0;
let firstError: string | undefined;
let started = 0;

setTimeout(() => {
  process.stderr.write(`hold: not done after ${timeoutMs} ms (held ${held}, failed ${failed})\n`);
  process.exit(1);
}, timeoutMs).unref();

function openOne(done: () => void): void {
  started += 1;
  const socket = net.connect({ host, port });
  sockets.push(socket);
  let echoed = 0;
  let settled = false;
  const settle = (ok: boolean, why?: string): void => {
    if (settled) return;
    settled = true;
    if (ok) held += 1;
    else {
      failed += 1;
      firstError ??= why;
    }
    done();
  };
  socket.on("connect", () => socket.write(GREETING));
  socket.on("data", (d: Buffer) => {
    echoed += d.length;
    if (echoed >= GREETING.length) settle(true);
  });
  socket.on("error", (e) => settle(false, e.message));
  socket.on("close", () => settle(false, "closed before the echo"));
}

await new Promise<void>((resolve) => {
  let running = 0;
  const more = (): void => {
    while (running < parallel && started < count) {
      running += 1;
      openOne(() => {
        running -= 1;
        if (held + failed === count) resolve();
        else more();
      });
    }
  };
  more();
});
process.stdout.write(`held ${JSON.stringify({ held, failed, ...(firstError ? { firstError } : {}) })}\n`);

let closing = false;
const closeAll = (): void => {
  if (closing) return;
  closing = true;
  const open = sockets.filter((s) => !s.destroyed);
  const allClosed = (): void => {
    process.stdout.write("closed\n");
    process.exit(0);
  };
  if (open.length === 0) allClosed();
  let left = open.length;
  const one = (): void => {
    left -= 1;
    if (left === 0) allClosed();
  };
  for (const s of open) {
    s.once("close", one);
    s.end();
  }
};
process.stdin.setEncoding("utf8");
process.stdin.on("data", (d: string) => {
  if (d.includes("close")) closeAll();
});
process.stdin.on("end", closeAll);
