import { createSocket } from "node:dgram";
import { realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";

// A tiny UDP echo and its client, run as their own processes inside a pod's namespace (node's
// dgram sockets cannot be created in another namespace from this process): `lab verify` and the
// end-to-end tests start them with `ip netns exec <pod> node verify-udp.js serve|ask …`.
//
//   serve <port> <lifetime-ms>             answer each datagram with {"peer","payload"}; print
//                                          "ready <port>" once bound; exit after the lifetime
//   ask <host> <port> <payload> <wait-ms>  send (again every 250 ms) until an answer; print it
//                                          as one JSON line, or {"error"} when none came

export interface UdpAnswer {
  /** `ip:port` the echo saw the datagram come from. */
  readonly peer: string;
  readonly payload: string;
}

export const UDP_HELPER = fileURLToPath(import.meta.url);

export async function serveUdpEcho(
  port: number,
  lifetimeMs: number,
  out: (line: string) => void,
): Promise<void> {
  const sock = createSocket("udp4");
  sock.on("message", (msg, rinfo) => {
    const answer: UdpAnswer = { peer: `${rinfo.address}:${rinfo.port}`, payload: msg.toString("utf8") };
    sock.send(JSON.stringify(answer), rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve, reject) => {
    sock.once("error", reject);
    sock.bind(port, "0.0.0.0", () => {
      sock.off("error", reject);
      resolve();
    });
  });
  out(`ready ${sock.address().port}`);
  await new Promise((r) => setTimeout(r, lifetimeMs));
  sock.close();
}

export async function askUdpEcho(
  host: string,
  port: number,
  payload: string,
  waitMs: number,
): Promise<UdpAnswer | { error: string }> {
  const sock = createSocket("udp4");
  return new Promise((resolve) => {
    const finish = (r: UdpAnswer | { error: string }): void => {
      clearInterval(resend);
      clearTimeout(timer);
      sock.close();
      resolve(r);
    };
    const send = (): void => sock.send(payload, port, host);
    sock.on("message", (msg) => {
      try {
        finish(JSON.parse(msg.toString("utf8")) as UdpAnswer);
      } catch {
        finish({ error: `not an echo answer: ${JSON.stringify(msg.toString("utf8").slice(0, 80))}` });
      }
    });
    sock.on("error", (err) => finish({ error: err.message }));
    const resend = setInterval(send, 250);
    const timer = setTimeout(
      () => finish({ error: `no answer from ${host}:${port} within ${waitMs} ms` }),
      waitMs,
    );
    send();
  });
}

async function main(argv: readonly string[]): Promise<number> {
  const [op, ...args] = argv;
  const out = (line: string): void => void process.stdout.write(`${line}\n`);
  if (op === "serve" && args.length === 2) {
    await serveUdpEcho(Number(args[0]), Number(args[1]), out);
    return 0;
  }
  if (op === "ask" && args.length === 4) {
    out(JSON.stringify(await askUdpEcho(args[0] ?? "", Number(args[1]), args[2] ?? "", Number(args[3]))));
    return 0;
  }
  process.stderr.write(
    "usage: verify-udp.js serve <port> <lifetime-ms> | ask <host> <port> <payload> <wait-ms>\n",
  );
  return 2;
}

if (process.argv[1] && realpathSync(process.argv[1]) === realpathSync(UDP_HELPER)) {
  main(process.argv.slice(2)).then(
    (code) => (process.exitCode = code),
    (err: unknown) => {
      process.stderr.write(`${(err as Error).message}\n`);
      process.exitCode = 1;
    },
  );
}
