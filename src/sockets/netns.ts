import { NetnsRestoreError } from "./errors.js";
import { closeFd, enterNetns, openNetnsFile } from "./libc.js";

// Creating a socket in another network namespace: the JS thread enters the namespace, makes the
// socket, and comes straight back. A socket keeps the namespace it was created in for its whole
// life (bind, connect, listen, accept all use the socket's own netns), so only socket(2) needs the
// switch. Everything in between is synchronous, so no other JS code — and so no other socket —
// runs while the thread is away; libuv's and V8's other threads are unaffected (setns is per thread).

/** The syscalls a switch needs; injected so the restore logic can be exercised with failures. */
export interface NetnsSyscalls {
  /** Opens a namespace file (read-only, close-on-exec) and returns its fd. */
  open(path: string): number;
  /** setns(fd, CLONE_NEWNET) for the calling thread. */
  enter(fd: number, path: string): void;
  close(fd: number): void;
}

// /proc/thread-self (not /proc/self, which is the process leader) names the namespace of the very
// thread that is about to switch.
export const CURRENT_THREAD_NETNS = "/proc/thread-self/ns/net";

export interface NetnsSwitcher {
  /**
   * Runs `create` with the calling thread inside the namespace at `netnsPath` (or where it is, if
   * undefined) and always returns the thread to its original namespace. `create` must be
   * synchronous. If returning fails, `discard` gets what `create` made (so it is not leaked) and
   * NetnsRestoreError is thrown — then and on every later call.
   */
  run<T>(netnsPath: string | undefined, create: () => T, discard?: (made: T) => void): T;
  /** The restore failure that disabled this switcher, if any. */
  readonly broken: NetnsRestoreError | undefined;
}

export function createNetnsSwitcher(sys: NetnsSyscalls): NetnsSwitcher {
  let broken: NetnsRestoreError | undefined;

  function run<T>(netnsPath: string | undefined, create: () => T, discard?: (made: T) => void): T {
    if (broken) throw broken;
    if (netnsPath === undefined) return create();
    const original = sys.open(CURRENT_THREAD_NETNS);
    try {
      const target = sys.open(netnsPath);
      try {
        sys.enter(target, netnsPath); // all-or-nothing: on failure the thread has not moved
      } finally {
        sys.close(target);
      }
      let made: { value: T } | undefined;
      let createFailure: unknown;
      try {
        made = { value: create() };
      } catch (e) {
        createFailure = e;
      }
      try {
        sys.enter(original, CURRENT_THREAD_NETNS);
      } catch (e) {
        broken = new NetnsRestoreError(netnsPath, e);
        if (made && discard) discard(made.value);
        throw broken;
      }
      if (!made) throw createFailure;
      return made.value;
    } finally {
      sys.close(original);
    }
  }

  return {
    run,
    get broken() {
      return broken;
    },
  };
}

const libcNetns: NetnsSyscalls = { open: openNetnsFile, enter: enterNetns, close: closeFd };

/** The process-wide switcher for the JS thread; every socket this layer creates goes through it. */
export const jsThreadNetns: NetnsSwitcher = createNetnsSwitcher(libcNetns);
