import { connectTcp } from "../sockets/index.js";

// HTTP probes of endpoints that listen on a namespace's own loopback (agent /healthz, ztunnel
// /healthz/ready): the socket is made inside that namespace, so no route into it is needed.

export interface ProbeResult {
  readonly status?: number;
  readonly body?: string;
  readonly error?: string;
}

export async function httpGetInNetns(
  netnsPath: string,
  port: number,
  path: string,
  timeoutMs = 2_000,
): Promise<ProbeResult> {
  let socket;
  try {
    socket = await connectTcp({ host: "127.0.0.1", port, netnsPath, timeoutMs });
  } catch (err) {
    return { error: (err as Error).message };
  }
  return new Promise((resolve) => {
    let data = "";
    const timer = setTimeout(() => {
      socket.destroy();
      resolve({ error: `no answer within ${timeoutMs} ms` });
    }, timeoutMs);
    socket.setEncoding("utf8");
    socket.on("data", (d: string) => (data += d));
    socket.on("error", (err) => {
      clearTimeout(timer);
      resolve({ error: err.message });
    });
    socket.on("close", () => {
      clearTimeout(timer);
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(data);
      const body = data.slice(data.indexOf("\r\n\r\n") + 4);
      resolve(
        m
          ? { status: Number(m[1]), body }
          : { error: `not an HTTP answer: ${JSON.stringify(data.slice(0, 80))}` },
      );
    });
    socket.end(`GET ${path} HTTP/1.0\r\nHost: localhost\r\n\r\n`);
  });
}
