import http from "node:http";
import { connectTcp } from "../sockets/index.js";

// HTTP requests to endpoints that listen on a namespace's own loopback (agent /healthz, ztunnel
// /healthz/ready, /config_dump, /quitquitquit): the socket is made inside that namespace, so no
// route into it is needed.

export interface ProbeResult {
  readonly status?: number;
  readonly body?: string;
  readonly error?: string;
}

export interface ProbeOptions {
  readonly method?: string;
  readonly timeoutMs?: number;
}

/** One request to 127.0.0.1:`port` inside the namespace at `netnsPath`; never rejects. */
export async function httpInNetns(
  netnsPath: string,
  port: number,
  path: string,
  opts: ProbeOptions = {},
): Promise<ProbeResult> {
  const method = opts.method ?? "GET";
  const timeoutMs = opts.timeoutMs ?? 2_000;
  let socket: Awaited<ReturnType<typeof connectTcp>>;
  try {
    socket = await connectTcp({ host: "127.0.0.1", port, netnsPath, timeoutMs });
  } catch (err) {
    return { error: (err as Error).message };
  }
  return new Promise((resolve) => {
    // No `agent` option: with one (even `false`), node dials through the agent and ignores
    // createConnection, which would connect in this process's own namespace.
    const req = http.request(
      { host: "127.0.0.1", port, path, method, createConnection: () => socket },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => (body += chunk));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
        res.on("error", (err) => resolve({ error: err.message }));
      },
    );
    req.setTimeout(timeoutMs, () =>
      req.destroy(new Error(`${method} ${path}: no answer within ${timeoutMs} ms`)),
    );
    req.on("error", (err) => {
      socket.destroy();
      resolve({ error: err.message });
    });
    req.end();
  });
}
