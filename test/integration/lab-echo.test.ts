import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { request } from "node:http";
import { connect } from "node:net";
import type { Socket } from "node:net";
import { fileURLToPath } from "node:url";
import { formatEndpoint, startEchoServer } from "../../src/lab/echo.js";
import type { EchoServer } from "../../src/lab/echo.js";

// The lab's workload program on loopback: the greeting line, the echo, half-close, the HTTP
// answers, close() with connections still open, and the command's clean stop on SIGTERM.

const WAIT_MS = 10_000;
const servers: EchoServer[] = [];
const children: ChildProcess[] = [];

after(async () => {
  for (const c of children) if (c.exitCode === null && c.pid !== undefined) process.kill(c.pid, "SIGKILL");
  await Promise.all(servers.map((s) => s.close()));
});

async function server(podName = "echo-test"): Promise<EchoServer> {
  const s = await startEchoServer({ tcpPort: 0, httpPort: 0, podName, host: "127.0.0.1" });
  servers.push(s);
  return s;
}

function withTimeout<T>(what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), WAIT_MS);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

interface Conversation {
  readonly socket: Socket;
  /** Everything received so far. */
  received(): Buffer;
  /** Resolves when what has arrived satisfies `done`. */
  waitFor(done: (received: Buffer) => boolean): Promise<void>;
  /** Resolves with all bytes when the server ends its side. */
  ended(): Promise<Buffer>;
}

function talk(port: number): Promise<Conversation> {
  return new Promise((resolve, reject) => {
    // allowHalfOpen: the client keeps reading after it has ended its own side.
    const socket = connect({ host: "127.0.0.1", port, allowHalfOpen: true });
    const chunks: Buffer[] = [];
    const waiters: { done: (b: Buffer) => boolean; resolve: () => void }[] = [];
    socket.on("data", (b: Buffer) => {
      chunks.push(b);
      const all = Buffer.concat(chunks);
      for (const w of waiters.splice(0)) {
        if (w.done(all)) w.resolve();
        else waiters.push(w);
      }
    });
    const ended = new Promise<Buffer>((res, rej) => {
      socket.on("end", () => res(Buffer.concat(chunks)));
      socket.on("error", rej);
    });
    ended.catch(() => undefined);
    socket.once("error", reject);
    socket.once("connect", () =>
      resolve({
        socket,
        received: () => Buffer.concat(chunks),
        waitFor: (done) =>
          withTimeout(
            "data from the server",
            new Promise<void>((res) =>
              done(Buffer.concat(chunks)) ? res() : waiters.push({ done, resolve: res }),
            ),
          ),
        ended: () => withTimeout("the server to end the connection", ended),
      }),
    );
  });
}

function firstLine(buf: Buffer): { line: string; rest: Buffer } {
  const nl = buf.indexOf(0x0a);
  assert.ok(nl >= 0, "the greeting ends in a newline");
  return { line: buf.subarray(0, nl).toString("utf8"), rest: buf.subarray(nl + 1) };
}

function get(
  port: number,
  path: string,
  method = "GET",
): Promise<{ status: number; body: string; local: string; type: string }> {
  return withTimeout(
    `HTTP ${method} ${path}`,
    new Promise((resolve, reject) => {
      const req = request({ host: "127.0.0.1", port, path, method, agent: false }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({
            status: res.statusCode ?? 0,
            body: Buffer.concat(chunks).toString("utf8"),
            local: formatEndpoint(req.socket?.localAddress, req.socket?.localPort),
            type: String(res.headers["content-type"] ?? ""),
          }),
        );
      });
      req.on("error", reject);
      req.end();
    }),
  );
}

describe("lab echo: TCP", () => {
  it("greets with the pod name and both endpoints as seen by the server, then echoes", async () => {
    const s = await server("default-client");
    const c = await talk(s.tcpPort);
    c.socket.write("hello lab\n");
    await c.waitFor((b) => b.toString("utf8").endsWith("hello lab\n"));
    const { line, rest } = firstLine(c.received());
    assert.deepEqual(JSON.parse(line), {
      pod: "default-client",
      peer: formatEndpoint(c.socket.localAddress, c.socket.localPort),
      local: `127.0.0.1:${s.tcpPort}`,
    });
    assert.equal(rest.toString("utf8"), "hello lab\n");
    // Nothing ended: the server keeps the connection while the client does.
    assert.equal(c.socket.readableEnded, false);
    c.socket.end();
    await c.ended();
  });

  it("half-close: after the client ends, every byte is still echoed, then the server ends", async () => {
    const s = await server();
    const c = await talk(s.tcpPort);
    // Larger than the socket buffers, so most of the echo is still in flight when the client ends.
    const payload = Buffer.alloc(4 * 1024 * 1024);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 31 + 7) & 0xff;
    c.socket.end(payload);
    const all = await c.ended();
    const { line, rest } = firstLine(all);
    assert.equal((JSON.parse(line) as { pod: string }).pod, "echo-test");
    assert.equal(rest.length, payload.length);
    assert.ok(rest.equals(payload), "the echo is the payload, byte for byte");
  });

  it("a client that resets does not disturb the server", async () => {
    const s = await server();
    const a = await talk(s.tcpPort);
    await a.waitFor((b) => b.length > 0);
    a.socket.resetAndDestroy();
    const b = await talk(s.tcpPort);
    b.socket.end("still here");
    const { rest } = firstLine(await b.ended());
    assert.equal(rest.toString("utf8"), "still here");
  });
});

describe("lab echo: HTTP", () => {
  it("GET / answers JSON naming the pod, the peer and the local endpoint", async () => {
    const s = await server("legacy-server");
    const r = await get(s.httpPort, "/");
    assert.equal(r.status, 200);
    assert.match(r.type, /application\/json/);
    assert.deepEqual(JSON.parse(r.body), {
      pod: "legacy-server",
      peer: r.local,
      local: `127.0.0.1:${s.httpPort}`,
    });
  });

  it("GET /healthz is 200; other paths 404; other methods 405", async () => {
    const s = await server();
    assert.deepEqual(
      [(await get(s.httpPort, "/healthz")).status, (await get(s.httpPort, "/healthz?x=1")).status],
      [200, 200],
    );
    assert.equal((await get(s.httpPort, "/nothing")).status, 404);
    assert.equal((await get(s.httpPort, "/", "POST")).status, 405);
  });
});

describe("lab echo: lifecycle", () => {
  it("close() ends open connections and frees both ports", async () => {
    const s = await startEchoServer({ tcpPort: 0, httpPort: 0, podName: "p", host: "127.0.0.1" });
    const idle = await talk(s.tcpPort);
    await idle.waitFor((b) => b.length > 0);
    await get(s.httpPort, "/healthz");
    await withTimeout("close()", s.close());
    const outcome = await idle.ended().then(
      () => "ended",
      (e: NodeJS.ErrnoException) => e.code,
    );
    assert.ok(outcome === "ended" || outcome === "ECONNRESET", `the idle connection was closed (${outcome})`);
    await assert.rejects(talk(s.tcpPort), /ECONNREFUSED/);
    await assert.rejects(get(s.httpPort, "/"), /ECONNREFUSED/);
    await s.close(); // twice is fine
  });

  it("a port in use is reported with the pod and ports", async () => {
    const s = await server();
    await assert.rejects(
      startEchoServer({ tcpPort: s.tcpPort, httpPort: 0, podName: "clash", host: "127.0.0.1" }),
      /echo server of pod clash: cannot listen .*EADDRINUSE/,
    );
  });

  it("runEchoCommand serves until SIGTERM, then closes and exits cleanly", async () => {
    const echoModule = fileURLToPath(new URL("../../src/lab/echo.js", import.meta.url));
    const script =
      `const m = await import(${JSON.stringify(echoModule)});` +
      `await m.runEchoCommand({ tcpPort: 0, httpPort: 0, podName: "cmd", host: "127.0.0.1" });`;
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    children.push(child);
    let out = "";
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    const ready = await withTimeout(
      "the ready line",
      new Promise<RegExpMatchArray>((resolve) => {
        child.stdout?.on("data", (b: Buffer) => {
          out += b.toString("utf8");
          const m = /serving tcp (\d+) and http (\d+)/.exec(out);
          if (m) resolve(m);
        });
      }),
    );
    const r = await get(Number(ready[2]), "/");
    assert.equal((JSON.parse(r.body) as { pod: string }).pod, "cmd");
    const c = await talk(Number(ready[1]));
    await c.waitFor((b) => b.length > 0);
    assert.ok(child.pid !== undefined);
    process.kill(child.pid, "SIGTERM");
    assert.equal(await withTimeout("the command to exit", exited), 0);
    assert.match(out, /echo: pod cmd stopped \(SIGTERM\)/);
  });
});
