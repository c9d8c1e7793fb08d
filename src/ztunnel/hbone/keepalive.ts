// HTTP/2 PING keepalive: a connection whose peer vanished without a FIN or RST (a rebooted node, a
// dropped NAT entry) would otherwise hold its streams, and a pooled client connection would take new
// streams that go nowhere, until TCP gives up many minutes later.
import type { Http2Session } from "node:http2";
import type { HboneSettings } from "./settings.js";

export class KeepaliveTimeoutError extends Error {
  constructor(readonly waitedMs: number) {
    super(`no PING acknowledgement within ${waitedMs} ms; dropping the connection`);
    this.name = "KeepaliveTimeoutError";
  }
}

/**
 * Pings `session` every `pingIntervalMs` (one PING outstanding at a time) and destroys it with a
 * KeepaliveTimeoutError when a PING stays unanswered for `pingTimeoutMs`. Stops when the session closes.
 */
export function keepAlive(
  session: Http2Session,
  settings: Pick<HboneSettings, "pingIntervalMs" | "pingTimeoutMs">,
): void {
  let deadline: NodeJS.Timeout | undefined;
  const tick = (): void => {
    if (deadline !== undefined || session.closed || session.destroyed || session.connecting) return;
    const timer = setTimeout(() => {
      session.destroy(new KeepaliveTimeoutError(settings.pingTimeoutMs));
    }, settings.pingTimeoutMs);
    timer.unref();
    deadline = timer;
    // The callback runs on the acknowledgement or when the session goes away; either way the
    // PING is no longer outstanding.
    const sent = session.ping(() => {
      if (deadline === timer) deadline = undefined;
      clearTimeout(timer);
    });
    if (!sent) {
      clearTimeout(timer);
      deadline = undefined;
    }
  };
  const interval = setInterval(tick, settings.pingIntervalMs);
  interval.unref();
  session.once("close", () => {
    clearInterval(interval);
    if (deadline !== undefined) clearTimeout(deadline);
  });
}
