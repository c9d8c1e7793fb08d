import { createServer } from "node:http";
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "prom-client";
import { splitHostPort } from "../configfile/net.js";

// The ztunnel's three HTTP endpoints, on upstream's ports: admin (15000, localhost only:
// /config_dump, /quitquitquit), Prometheus (15020: /metrics, /stats/prometheus) and readiness
// (15021: /healthz/ready).

export interface AdminHandlers {
  configDump(): unknown;
  /** Starts a graceful shutdown; resolves when draining has begun. */
  quit(): void;
}

export interface ReadinessProbe {
  /** Undefined when ready; otherwise what is still pending, for the 500 body. */
  pending(): string[];
}

type Handler = (req: IncomingMessage, res: ServerResponse) => void | Promise<void>;

/** Serve `handler` on `addr` (host:port; port 0 picks one); resolves with the bound URL. */
export async function serveHttp(
  addr: string,
  flag: string,
  handler: Handler,
): Promise<{ server: Server; url: string }> {
  const { host, port } = splitHostPort(addr, flag);
  const server = createServer((req, res) => {
    Promise.resolve(handler(req, res)).catch((err: unknown) => {
      res.statusCode = 500;
      res.end(`error: ${(err as Error).message}\n`);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  const bound = (server.address() as AddressInfo).port;
  return { server, url: `http://${host.includes(":") ? `[${host}]` : host}:${bound}` };
}

export function adminHandler(h: AdminHandlers): Handler {
  return (req, res) => {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    if (path === "/config_dump") {
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify(h.configDump(), null, 2));
    } else if (path === "/quitquitquit") {
      if (req.method !== "POST") {
        res.statusCode = 405;
        res.end("use POST\n");
        return;
      }
      res.end("draining\n");
      h.quit();
    } else {
      res.statusCode = 404;
      res.end("not found: /config_dump, POST /quitquitquit\n");
    }
  };
}

export function metricsHandler(registry: Registry): Handler {
  return async (req, res) => {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    if (path !== "/metrics" && path !== "/stats/prometheus") {
      res.statusCode = 404;
      res.end("not found: /metrics, /stats/prometheus\n");
      return;
    }
    res.setHeader("content-type", registry.contentType);
    res.end(await registry.metrics());
  };
}

export function readinessHandler(probe: ReadinessProbe): Handler {
  return (req, res) => {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    if (path !== "/healthz/ready") {
      res.statusCode = 404;
      res.end("not found: /healthz/ready\n");
      return;
    }
    const pending = probe.pending();
    res.statusCode = pending.length === 0 ? 200 : 500;
    res.end(pending.length === 0 ? "ready\n" : `not ready: ${pending.join(", ")}\n`);
  };
}
