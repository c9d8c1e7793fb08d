import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { AddressEncoder } from "../../src/controlplane/index/address-encoder.js";
import { decodeAddress, encodeAddress } from "../../src/xds/proto.js";
import { TunnelProtocol, WorkloadStatus, WorkloadType } from "../../src/xds/types.js";
import type { Service, Workload } from "../../src/xds/types.js";

// The index's hand-written Address writer must produce protobufjs's bytes exactly, for everything
// it handles and for everything it hands back to protobufjs.

/** A small deterministic generator (mulberry32), so a failure names a reproducible case. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function generators(seed: number) {
  const r = rng(seed);
  const int = (n: number): number => Math.floor(r() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)] as T;
  const maybe = <T>(v: T): T | undefined => (r() < 0.5 ? v : undefined);
  const word = (): string => pick(["", "a", "web", "db-7f9c", "x".repeat(200), "ns-ü", "default", "v1.2"]);
  const port = () => ({
    servicePort: pick([0, 80, 443, 8080, 65535]),
    ...(r() < 0.7 ? { targetPort: pick([0, 80, 9090, 70000]) } : {}),
    ...(r() < 0.3 ? { appProtocol: int(6) } : {}),
  });
  const addr = (): Uint8Array =>
    r() < 0.8
      ? Uint8Array.from([10, int(256), int(256), int(256)])
      : Uint8Array.from({ length: 16 }, () => int(256));
  const workload = (): Workload => {
    const services: Record<string, { ports: ReturnType<typeof port>[] }> = {};
    for (let i = int(3); i > 0; i--)
      services[`${word()}/svc${int(100)}.ns.svc.cluster.local`] = {
        ports: Array.from({ length: int(3) }, port),
      };
    const w: Record<string, unknown> = {
      uid: `Kubernetes//Pod/${word()}/${word()}`,
      name: word(),
      namespace: word(),
      addresses: Array.from({ length: int(3) }, addr),
      tunnelProtocol: pick([TunnelProtocol.NONE, TunnelProtocol.HBONE]),
      trustDomain: maybe("cluster.local"),
      serviceAccount: maybe(word()),
      node: maybe(word()),
      canonicalName: maybe(word()),
      canonicalRevision: maybe(word()),
      workloadType: maybe(pick([WorkloadType.DEPLOYMENT, WorkloadType.POD, WorkloadType.JOB])),
      workloadName: maybe(word()),
      services,
      authorizationPolicies: r() < 0.3 ? [word(), word()] : undefined,
      status: pick([WorkloadStatus.HEALTHY, WorkloadStatus.UNHEALTHY]),
      clusterId: maybe("Kubernetes"),
      networkMode: maybe(int(2)),
      network: maybe(word()),
      hostname: maybe(word()),
    };
    if (r() < 0.1) w.waypoint = { address: { network: "", address: addr() }, hboneMtlsPort: 15008 };
    if (r() < 0.1) w.capacity = { value: int(5) };
    for (const k of Object.keys(w)) if (w[k] === undefined) delete w[k];
    return w as unknown as Workload;
  };
  const service = (): Service => {
    const s: Record<string, unknown> = {
      name: word(),
      namespace: word(),
      hostname: `${word()}.svc`,
      addresses: Array.from({ length: int(3) }, () => ({
        network: pick(["", "net1"]),
        address: addr(),
        ...(r() < 0.2 ? { length: int(33) } : {}),
      })),
      ports: Array.from({ length: int(4) }, port),
      subjectAltNames: r() < 0.3 ? [word()] : undefined,
      ipFamilies: maybe(int(4)),
      canonical: maybe(r() < 0.5),
    };
    for (const k of Object.keys(s)) if (s[k] === undefined) delete s[k];
    return s as unknown as Service;
  };
  return { workload, service };
}

describe("AddressEncoder", () => {
  it("writes protobufjs's bytes for 5,000 generated workloads and services", () => {
    const encoder = new AddressEncoder();
    for (let seed = 1; seed <= 2_500; seed++) {
      const gen = generators(seed);
      const w = gen.workload();
      assert.deepEqual(
        Buffer.from(encoder.workload(w)),
        Buffer.from(encodeAddress({ workload: w })),
        `workload, seed ${seed}`,
      );
      const s = gen.service();
      assert.deepEqual(
        Buffer.from(encoder.service(s)),
        Buffer.from(encodeAddress({ service: s })),
        `service, seed ${seed}`,
      );
    }
  });

  it("hands back what it does not write (map keys out of order, huge numbers) with the same result", () => {
    const encoder = new AddressEncoder();
    const w: Workload = {
      uid: "u",
      name: "n",
      namespace: "ns",
      addresses: [],
      services: { "z/b": { ports: [{ servicePort: 1 }] }, "a/a": { ports: [{ servicePort: 2 }] } },
      status: 2 ** 40,
    };
    assert.deepEqual(Buffer.from(encoder.workload(w)), Buffer.from(encodeAddress({ workload: w })));
    assert.equal(decodeAddress(encoder.workload(w)).workload?.name, "n");
  });
});
