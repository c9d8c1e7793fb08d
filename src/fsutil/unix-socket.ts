import { lstat, rm } from "node:fs/promises";
import { createConnection } from "node:net";

// A unix socket path a server is about to bind: free, or holding the socket of a server that died
// (removed), or in use / not a socket at all (refused, and left alone).

export interface SocketPathRefusals {
  notSocket(): Error;
  live(): Error;
  /** The probe could not tell whether a server answers; `why` says what happened instead. */
  unknown(why: string): Error;
}

/** Make `socketPath` free for a new server, or throw the caller's error saying why it is not. */
export async function clearStaleSocket(socketPath: string, refuse: SocketPathRefusals): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = (await lstat(socketPath)).isSocket();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err;
  }
  if (!isSocket) throw refuse.notSocket();
  const probe = await probeSocket(socketPath);
  if (probe === "live") throw refuse.live();
  if (probe !== "dead") throw refuse.unknown(probe);
  await rm(socketPath, { force: true });
}

/** "live" if something accepts a connection, "dead" if nobody listens behind the file, else why not known. */
function probeSocket(socketPath: string): Promise<string> {
  return new Promise((resolve) => {
    const sock = createConnection(socketPath);
    const done = (outcome: string): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(outcome);
    };
    const timer = setTimeout(() => done("no answer within 1 s"), 1000);
    sock.on("connect", () => done("live"));
    sock.on("error", (err: NodeJS.ErrnoException) =>
      done(err.code === "ECONNREFUSED" ? "dead" : (err.code ?? err.message)),
    );
  });
}
