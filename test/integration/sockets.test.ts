import assert from "node:assert/strict";
import { once } from "node:events";
import { readdirSync, statSync } from "node:fs";
import net from "node:net";
import { after, before, describe, it } from "node:test";
import {
  AddressError,
  ConnectError,
  connectTcp,
  createListener,
  NetnsRestoreError,
  probeCapabilities,
  SocketHandleError,
  SocketOptionsError,
  SocketSyscallError,
  setSocketMark,
  socketFd,
  socketMark,
} from "../../src/sockets/index.js";
import type { ConnectOptions } from "../../src/sockets/index.js";
import { createNetnsSwitcher, CURRENT_THREAD_NETNS } from "../../src/sockets/netns.js";
import type { NetnsSyscalls } from "../../src/sockets/netns.js";
import { encodeSockaddr, parseIpAddress } from "../../src/sockets/sockaddr.js";
import { createNetns, rootOnly } from "../support/netns.js";
import type { TestNetns } from "../support/netns.js";
import { until } from "../support/wait.js";

// The transparent-socket layer against a real kernel. Topology (all inside test namespaces):
//
//   client (c0 10.77.1.2, fd77:1::2) ── pc │ proxy │ ps ── (s0 10.77.2.2, fd77:2::2) server
//                                         10.77.1.1   10.77.2.1
//
// Client and server route everything via the proxy. The proxy forwards nothing (ip_forward=0):
// TCP from the client is TPROXY'd to a transparent listener, and the proxy reaches the server on
// its own, spoofing the client's address. 10.77.2.9 is a server address whose packets the server
// drops (a black hole for connect timeouts).

const CLIENT4 = "10.77.1.2";
const SERVER4 = "10.77.2.2";
const BLACKHOLE4 = "10.77.2.9";
const CLIENT6 = "fd77:1::2";
const SERVER6 = "fd77:2::2";
const WAIT_MS = 10_000;

// Everything opened here is closed in `after`, so the test process can exit even when a test fails.
const servers = new Set<net.Server>();
const sockets = new Set<net.Socket>();
after(async () => {
  for (const s of sockets) s.destroy();
  await Promise.all([...servers].map((s) => new Promise((r) => s.close(r))));
});

const track = <T extends net.Socket | net.Server>(thing: T): T => {
  if (thing instanceof net.Socket) sockets.add(thing);
  else servers.add(thing);
  return thing;
};

async function listen(opts: Parameters<typeof createListener>[0]): Promise<net.Server> {
  const server = track(await createListener(opts));
  server.on("connection", (s: net.Socket) => track(s));
  return server;
}

async function connect(opts: ConnectOptions): Promise<net.Socket> {
  return track(await connectTcp(opts));
}

function portOf(server: net.Server): number {
  const address = server.address();
  assert.ok(address !== null && typeof address === "object", "server has an address");
  return address.port;
}

async function nextConnection(server: net.Server): Promise<net.Socket> {
  try {
    const [socket] = (await once(server, "connection", { signal: AbortSignal.timeout(WAIT_MS) })) as [
      net.Socket,
    ];
    return socket;
  } catch (e) {
    return assert.fail(`no connection accepted within ${WAIT_MS} ms (${String(e)})`);
  }
}

async function readText(socket: net.Socket, length: number): Promise<string> {
  let text = "";
  const timeout = AbortSignal.timeout(WAIT_MS);
  while (text.length < length) {
    const [chunk] = (await once(socket, "data", { signal: timeout })) as [Buffer];
    text += chunk.toString();
  }
  return text;
}

async function closeBoth(...pair: net.Socket[]): Promise<void> {
  await Promise.all(
    pair.map(async (s) => {
      if (!s.closed) {
        const closed = once(s, "close", { signal: AbortSignal.timeout(WAIT_MS) });
        s.destroy();
        await closed;
      }
      sockets.delete(s);
    }),
  );
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  return assert.fail("expected a rejection");
}

async function connectFailure(opts: ConnectOptions): Promise<ConnectError> {
  const e = await rejection(connectTcp(opts));
  assert.ok(e instanceof ConnectError, `expected a ConnectError, got ${String(e)}`);
  return e;
}

const openFds = (): number => readdirSync("/proc/self/fd").length;
const threadNetnsInode = (): number => statSync(CURRENT_THREAD_NETNS).ino;

describe("sockaddr encoding", () => {
  it("encodes IPv4 as sockaddr_in (host-order family, network-order port and address)", () => {
    const buf = encodeSockaddr(parseIpAddress("10.77.1.2"), 15001);
    assert.equal(buf.toString("hex"), "0200" + "3a99" + "0a4d0102" + "0000000000000000");
  });

  it("encodes IPv6 as sockaddr_in6, expanding :: and embedded IPv4, with the scope id", () => {
    const buf = encodeSockaddr(parseIpAddress("fe80::1:2%7"), 80);
    assert.equal(buf.length, 28);
    assert.equal(buf.readUInt16LE(0), 10);
    assert.equal(buf.readUInt16BE(2), 80);
    assert.equal(buf.readUInt32BE(4), 0);
    assert.equal(buf.subarray(8, 24).toString("hex"), "fe800000000000000000000000010002");
    assert.equal(buf.readUInt32LE(24), 7);
    assert.equal(
      Buffer.from(parseIpAddress("::ffff:10.1.2.3").bytes).toString("hex"),
      "00000000000000000000ffff0a010203",
    );
    assert.equal(
      Buffer.from(parseIpAddress("1:2:3:4:5:6:7::").bytes).toString("hex"),
      "00010002000300040005000600070000",
    );
    assert.equal(Buffer.from(parseIpAddress("::").bytes).toString("hex"), "0".repeat(32));
  });

  it("refuses what is not an IP literal, or a zone no interface has", () => {
    assert.throws(() => parseIpAddress("example.com"), AddressError);
    assert.throws(() => parseIpAddress("10.0.0.256"), AddressError);
    assert.throws(() => parseIpAddress("fe80::1%nosuchif"), AddressError);
    assert.throws(() => encodeSockaddr(parseIpAddress("10.0.0.1"), 70000), AddressError);
  });
});

describe("netns switch (restore logic, with injected syscalls)", () => {
  function fakeSyscalls(opts: { failEnter?: string; failRestore?: boolean } = {}) {
    const log: string[] = [];
    let next = 100;
    const paths = new Map<number, string>();
    const sys: NetnsSyscalls = {
      open(path) {
        const fd = next++;
        paths.set(fd, path);
        log.push(`open ${path}`);
        return fd;
      },
      enter(fd, path) {
        const restoring = paths.get(fd) === CURRENT_THREAD_NETNS;
        if ((restoring && opts.failRestore) || path === opts.failEnter) {
          log.push(`enter ${path} failed`);
          throw new Error(`setns ${path}: EPERM`);
        }
        log.push(`enter ${path}`);
      },
      close(fd) {
        log.push(`close ${paths.get(fd)}`);
      },
    };
    return { sys, log };
  }

  it("enters, creates, returns, and closes both namespace fds", () => {
    const { sys, log } = fakeSyscalls();
    const result = createNetnsSwitcher(sys).run("/ns/a", () => {
      log.push("create");
      return 42;
    });
    assert.equal(result, 42);
    assert.deepEqual(log, [
      `open ${CURRENT_THREAD_NETNS}`,
      "open /ns/a",
      "enter /ns/a",
      "close /ns/a",
      "create",
      `enter ${CURRENT_THREAD_NETNS}`,
      `close ${CURRENT_THREAD_NETNS}`,
    ]);
  });

  it("returns to the original namespace when creating fails, and rethrows that failure", () => {
    const { sys, log } = fakeSyscalls();
    assert.throws(
      () =>
        createNetnsSwitcher(sys).run("/ns/a", () => {
          throw new Error("socket: EMFILE");
        }),
      /EMFILE/,
    );
    assert.deepEqual(log.slice(-2), [`enter ${CURRENT_THREAD_NETNS}`, `close ${CURRENT_THREAD_NETNS}`]);
  });

  it("does not create anything when entering fails", () => {
    const { sys, log } = fakeSyscalls({ failEnter: "/ns/a" });
    let created = false;
    assert.throws(() => createNetnsSwitcher(sys).run("/ns/a", () => (created = true)), /EPERM/);
    assert.equal(created, false);
    assert.deepEqual(log, [
      `open ${CURRENT_THREAD_NETNS}`,
      "open /ns/a",
      "enter /ns/a failed",
      "close /ns/a",
      `close ${CURRENT_THREAD_NETNS}`,
    ]);
  });

  it("a failed return discards what was made and disables the switcher for good", () => {
    const { sys, log } = fakeSyscalls({ failRestore: true });
    const switcher = createNetnsSwitcher(sys);
    const discarded: number[] = [];
    const first = (() => {
      try {
        switcher.run(
          "/ns/a",
          () => 7,
          (made) => discarded.push(made),
        );
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    assert.ok(first instanceof NetnsRestoreError);
    assert.match(first.message, /\/ns\/a/);
    assert.deepEqual(discarded, [7]);
    assert.ok(log.includes(`close ${CURRENT_THREAD_NETNS}`), "the original namespace fd is still closed");
    assert.equal(switcher.broken, first);
    // Even a socket in the current namespace is refused: the thread is not where it should be.
    assert.throws(
      () => switcher.run(undefined, () => 1),
      (e) => e === first,
    );
  });
});

describe("transparent sockets in network namespaces", { ...rootOnly }, () => {
  let client: TestNetns;
  let proxy: TestNetns;
  let server: TestNetns;
  let tproxyListener: net.Server;

  before(async () => {
    client = createNetns("zs-client");
    proxy = createNetns("zs-proxy");
    server = createNetns("zs-server");
    proxy.sh("ip", ["link", "add", "pc", "type", "veth", "peer", "name", "c0", "netns", client.name]);
    proxy.sh("ip", ["link", "add", "ps", "type", "veth", "peer", "name", "s0", "netns", server.name]);
    const addresses: [TestNetns, string, string[]][] = [
      [proxy, "pc", ["10.77.1.1/24", "fd77:1::1/64"]],
      [proxy, "ps", ["10.77.2.1/24", "fd77:2::1/64"]],
      [client, "c0", [`${CLIENT4}/24`, `${CLIENT6}/64`]],
      [server, "s0", [`${SERVER4}/24`, `${BLACKHOLE4}/24`, `${SERVER6}/64`]],
    ];
    for (const [ns, link, cidrs] of addresses) {
      for (const cidr of cidrs) {
        ns.sh("ip", ["addr", "add", cidr, "dev", link, ...(cidr.includes(":") ? ["nodad"] : [])]);
      }
      ns.sh("ip", ["link", "set", link, "up"]);
    }
    client.sh("ip", ["route", "add", "default", "via", "10.77.1.1"]);
    client.sh("ip", ["-6", "route", "add", "default", "via", "fd77:1::1"]);
    server.sh("ip", ["route", "add", "default", "via", "10.77.2.1"]);
    server.sh("ip", ["-6", "route", "add", "default", "via", "fd77:2::1"]);
    server.sh("iptables", ["-A", "INPUT", "-d", BLACKHOLE4, "-p", "tcp", "-j", "DROP"]);

    // The proxy's transparent listener: port 0, so the TPROXY rule uses the port the kernel chose.
    tproxyListener = await listen({
      address: "127.0.0.1",
      port: 0,
      transparent: true,
      mark: 0x401,
      netnsPath: proxy.path,
    });
    const port = String(portOf(tproxyListener));
    for (const [tables, ip, onIp, localRoute] of [
      ["iptables", "-4", "127.0.0.1", "0.0.0.0/0"],
      ["ip6tables", "-6", "::1", "::/0"],
    ] as const) {
      // Client TCP → the transparent listener, packet marked 0x400 → table 100 → local delivery.
      proxy.sh(
        tables,
        ["-t", "mangle", "-A", "PREROUTING", "-i", "pc", "-p", "tcp", "-j", "TPROXY"].concat([
          "--on-port",
          port,
          "--on-ip",
          onIp,
          "--tproxy-mark",
          "0x400/0xfff",
        ]),
      );
      // Server replies to a spoofed source (a client address the proxy does not own) belong to a
      // transparent socket here: mark them 0x4d3 → table 100 → local delivery, not forwarding.
      proxy.sh(
        tables,
        ["-t", "mangle", "-A", "PREROUTING", "-i", "ps", "-p", "tcp", "-m", "socket"].concat([
          "--transparent",
          "-j",
          "MARK",
          "--set-xmark",
          "0x4d3/0xfff",
        ]),
      );
      proxy.sh("ip", [ip, "rule", "add", "fwmark", "0x400/0xfff", "lookup", "100"]);
      proxy.sh("ip", [ip, "rule", "add", "fwmark", "0x4d3/0xfff", "lookup", "100"]);
      proxy.sh("ip", [ip, "route", "add", "local", localRoute, "dev", "lo", "table", "100"]);
    }
  });

  it("can set IP_TRANSPARENT and SO_MARK (root has CAP_NET_ADMIN)", () => {
    assert.deepEqual(probeCapabilities(), { transparent: true, mark: true });
  });

  it("creates the listener in the proxy namespace and leaves the JS thread in its own", () => {
    const before = threadNetnsInode();
    assert.notEqual(statSync(proxy.path).ino, before);
    const listing = proxy.sh("ss", ["-Htln"]);
    assert.match(listing, new RegExp(`127\\.0\\.0\\.1:${portOf(tproxyListener)}\\b`));
    assert.equal(threadNetnsInode(), before);
  });

  it("a TPROXY'd connection shows the original destination as localAddress and the client as remoteAddress", async () => {
    const accepted = nextConnection(tproxyListener);
    const fromClient = await connect({ host: SERVER4, port: 8080, netnsPath: client.path });
    const atProxy = await accepted;
    assert.equal(atProxy.localAddress, SERVER4);
    assert.equal(atProxy.localPort, 8080);
    assert.equal(atProxy.remoteAddress, CLIENT4);
    assert.equal(atProxy.remotePort, fromClient.localPort);
    assert.equal(socketMark(atProxy), 0x401, "accepted sockets inherit the listener's SO_MARK");
    // The reply leaves from the foreign address and reaches the client.
    atProxy.write("from-proxy");
    assert.equal(await readText(fromClient, 10), "from-proxy");
    assert.equal(fromClient.remoteAddress, SERVER4);
    await closeBoth(fromClient, atProxy);
  });

  it("a TPROXY'd IPv6 connection shows the original destination too", async () => {
    const listener6 = await listen({ address: "::1", port: 0, transparent: true, netnsPath: proxy.path });
    // Same iptables rule shape, aimed at this listener's port, inserted before the IPv4 test's.
    const port = String(portOf(listener6));
    const rule = [
      "PREROUTING",
      "-i",
      "pc",
      "-p",
      "tcp",
      "--dport",
      "8443",
      "-j",
      "TPROXY",
      "--on-port",
      port,
    ];
    proxy.sh("ip6tables", ["-t", "mangle", "-I", ...rule, "--on-ip", "::1", "--tproxy-mark", "0x400/0xfff"]);
    const accepted = nextConnection(listener6);
    const fromClient = await connect({ host: SERVER6, port: 8443, netnsPath: client.path });
    const atProxy = await accepted;
    assert.equal(atProxy.localAddress, SERVER6);
    assert.equal(atProxy.localPort, 8443);
    assert.equal(atProxy.remoteAddress, CLIENT6);
    await closeBoth(fromClient, atProxy);
  });

  it("connectTcp spoofing the client's address reaches the server, which sees the client as its peer", async () => {
    const upstream = await listen({ address: SERVER4, port: 0, netnsPath: server.path });
    const accepted = nextConnection(upstream);
    const out = await connect({
      host: SERVER4,
      port: portOf(upstream),
      localAddress: CLIENT4,
      mark: 0x4d2,
      noDelay: true,
      netnsPath: proxy.path,
    });
    const atServer = await accepted;
    assert.equal(atServer.remoteAddress, CLIENT4);
    assert.equal(atServer.remotePort, out.localPort);
    assert.equal(out.localAddress, CLIENT4);
    assert.equal(socketMark(out), 0x4d2);
    atServer.write("pong");
    out.write("ping");
    assert.equal(await readText(atServer, 4), "ping");
    assert.equal(await readText(out, 4), "pong", "the reply to the spoofed source came back to the proxy");
    await closeBoth(out, atServer);
  });

  it("spoofs IPv6 sources as well (IPV6_TRANSPARENT, IPV6_FREEBIND)", async () => {
    const upstream = await listen({ address: SERVER6, port: 0, netnsPath: server.path });
    const accepted = nextConnection(upstream);
    const out = await connect({
      host: SERVER6,
      port: portOf(upstream),
      localAddress: CLIENT6,
      netnsPath: proxy.path,
    });
    const atServer = await accepted;
    assert.equal(atServer.remoteAddress, CLIENT6);
    atServer.write("v6");
    assert.equal(await readText(out, 2), "v6");
    await closeBoth(out, atServer);
  });

  it("relays client → TPROXY listener → spoofed upstream → server, end to end", async () => {
    const upstream = await listen({ address: SERVER4, port: 0, netnsPath: server.path });
    const upstreamPort = portOf(upstream);
    const relayDone = (async () => {
      const inbound = await nextConnection(tproxyListener);
      assert.equal(inbound.localPort, upstreamPort);
      const outbound = await connectTcp({
        host: inbound.localAddress ?? "",
        port: inbound.localPort ?? 0,
        localAddress: inbound.remoteAddress ?? "",
        netnsPath: proxy.path,
      });
      track(outbound);
      inbound.pipe(outbound).pipe(inbound);
      return [inbound, outbound] as const;
    })();
    const atServerP = nextConnection(upstream);
    const fromClient = await connect({ host: SERVER4, port: upstreamPort, netnsPath: client.path });
    const atServer = await atServerP;
    assert.equal(atServer.remoteAddress, CLIENT4, "the server sees the client, not the proxy");
    fromClient.write("hello server");
    assert.equal(await readText(atServer, 12), "hello server");
    atServer.write("hello client");
    assert.equal(await readText(fromClient, 12), "hello client");
    await closeBoth(fromClient, atServer, ...(await relayDone));
  });

  it("SO_MARK can be set and read on sockets node already owns", async () => {
    const listener = await listen({ address: "127.0.0.1", port: 0, netnsPath: proxy.path });
    const accepted = nextConnection(listener);
    const out = await connect({ host: "127.0.0.1", port: portOf(listener), netnsPath: proxy.path });
    const inbound = await accepted;
    assert.equal(socketMark(out), 0);
    setSocketMark(out, 0x402);
    assert.equal(socketMark(out), 0x402);
    setSocketMark(listener, 0x4d2);
    assert.equal(socketMark(listener), 0x4d2);
    assert.equal(socketFd(out) >= 0, true);
    assert.throws(() => setSocketMark(out, -1), SocketOptionsError);
    await closeBoth(out, inbound);
    assert.throws(() => socketFd(out), SocketHandleError);
  });

  it("reports a refused connect as ECONNREFUSED", async () => {
    const e = await connectFailure({ host: SERVER4, port: 9, netnsPath: proxy.path });
    assert.equal(e.code, "ECONNREFUSED");
    assert.equal(e.stage, "connect");
    assert.match(e.message, /10\.77\.2\.2:9/);
  });

  it("reports an unanswered connect as ETIMEDOUT after timeoutMs", async () => {
    const e = await connectFailure({ host: BLACKHOLE4, port: 80, timeoutMs: 300, netnsPath: proxy.path });
    assert.equal(e.code, "ETIMEDOUT");
    assert.match(e.message, /10\.77\.2\.9:80/);
  });

  it("reports an aborted connect as ECANCELED, before or during the handshake", async () => {
    const controller = new AbortController();
    const pending = connectFailure({
      host: BLACKHOLE4,
      port: 80,
      signal: controller.signal,
      netnsPath: proxy.path,
    });
    setTimeout(() => controller.abort(new Error("client went away")), 50);
    const e = await pending;
    assert.equal(e.code, "ECANCELED");
    assert.equal((e.cause as Error).message, "client went away");
    const early = await connectFailure({ host: SERVER4, port: 80, signal: AbortSignal.abort() });
    assert.equal(early.code, "ECANCELED");
  });

  it("reports no route as ENETUNREACH, and unusable options as EINVAL/EAFNOSUPPORT", async () => {
    // The proxy namespace has no default route; nothing is sent.
    assert.equal(
      (await connectFailure({ host: "10.99.0.1", port: 80, netnsPath: proxy.path })).code,
      "ENETUNREACH",
    );
    const badHost = await connectFailure({ host: "server.example", port: 80 });
    assert.deepEqual([badHost.code, badHost.stage], ["EINVAL", "options"]);
    const mixed = await connectFailure({
      host: SERVER4,
      port: 80,
      localAddress: CLIENT6,
      netnsPath: proxy.path,
    });
    assert.equal(mixed.code, "EAFNOSUPPORT");
    const badMark = await connectFailure({ host: SERVER4, port: 80, mark: 2 ** 32, netnsPath: proxy.path });
    assert.equal(badMark.code, "EINVAL");
    const noNetns = await connectFailure({
      host: SERVER4,
      port: 80,
      netnsPath: "/var/run/netns/omt-missing",
    });
    assert.deepEqual([noNetns.code, noNetns.stage], ["ENOENT", "netns"]);
  });

  it("refuses a listener that cannot bind, with a typed error and no leaked fd", async () => {
    const taken = await listen({ address: "127.0.0.1", port: 0, netnsPath: proxy.path });
    const fds = openFds();
    const e = await rejection(
      createListener({ address: "127.0.0.1", port: portOf(taken), netnsPath: proxy.path }),
    );
    assert.ok(e instanceof SocketSyscallError);
    assert.deepEqual([e.syscall, e.code], ["bind", "EADDRINUSE"]);
    assert.match(e.message, new RegExp(`127\\.0\\.0\\.1:${portOf(taken)}`));
    assert.equal(openFds(), fds);
  });

  it("IPv6 loopback: listener and connect on ::1", async () => {
    const listener = await listen({
      address: "::1",
      port: 0,
      reusePort: true,
      mark: 7,
      netnsPath: proxy.path,
    });
    const accepted = nextConnection(listener);
    const out = await connect({
      host: "::1",
      port: portOf(listener),
      keepAlive: true,
      netnsPath: proxy.path,
    });
    const inbound = await accepted;
    assert.equal(out.remoteAddress, "::1");
    assert.equal(inbound.localAddress, "::1");
    assert.equal(socketMark(inbound), 7);
    inbound.write("six");
    assert.equal(await readText(out, 3), "six");
    await closeBoth(out, inbound);
  });

  it("leaks no fd over 2,000 connect/accept/close cycles and 200 failing connects", async () => {
    const listener = await listen({ address: "127.0.0.1", port: 0, netnsPath: proxy.path });
    const port = portOf(listener);
    const cycle = async (): Promise<void> => {
      const accepted = nextConnection(listener);
      const out = await connectTcp({ host: "127.0.0.1", port, netnsPath: proxy.path });
      sockets.add(out);
      await closeBoth(out, await accepted);
    };
    for (let i = 0; i < 5; i++) await cycle(); // let node and libuv open what they keep open
    const baseline = openFds();
    const inode = threadNetnsInode();

    for (let i = 0; i < 2000; i++) await cycle();
    await until("fds back to the baseline after 2,000 cycles", () => openFds() === baseline);

    // A port that was just free in the proxy namespace, and is closed again: connects are refused.
    const probe = await createListener({ address: "127.0.0.1", port: 0, netnsPath: proxy.path });
    const closedPort = portOf(probe);
    await new Promise((r) => probe.close(r));
    const failures: string[] = [];
    for (let i = 0; i < 200; i++) {
      let opts: ConnectOptions = { host: "127.0.0.1", port: closedPort, netnsPath: proxy.path };
      if (i % 4 === 1) opts = { host: BLACKHOLE4, port: 80, timeoutMs: 20, netnsPath: proxy.path };
      if (i % 4 === 2) {
        const controller = new AbortController();
        setImmediate(() => controller.abort());
        opts = { host: BLACKHOLE4, port: 80, signal: controller.signal, netnsPath: proxy.path };
      }
      if (i % 4 === 3) opts = { host: SERVER4, port: 80, localAddress: CLIENT6, netnsPath: proxy.path };
      failures.push((await connectFailure(opts)).code);
    }
    assert.deepEqual(
      [...new Set(failures)].sort(),
      ["EAFNOSUPPORT", "ECANCELED", "ECONNREFUSED", "ETIMEDOUT"],
      "every kind of failure was exercised",
    );
    await until("fds back to the baseline after 200 failing connects", () => openFds() === baseline);
    assert.equal(threadNetnsInode(), inode, "the JS thread is still in its own namespace");
  });
});
