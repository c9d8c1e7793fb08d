import { describe, it } from "node:test";
import assert from "node:assert/strict";
import type { DeltaDiscoveryRequest, DeltaDiscoveryResponse } from "../../src/xds/messages.js";
import {
  decodeAddress,
  decodeAuthorization,
  decodeDeltaDiscoveryRequest,
  decodeDeltaDiscoveryResponse,
  decodeIstioCertificateRequest,
  decodeIstioCertificateResponse,
  decodeServedNodes,
  encodeAddress,
  encodeAuthorization,
  encodeDeltaDiscoveryRequest,
  encodeDeltaDiscoveryResponse,
  encodeIstioCertificateRequest,
  encodeIstioCertificateResponse,
  encodeServedNodes,
  packAny,
  ProtoCodecError,
  TypeUrlMismatchError,
  unpackAny,
} from "../../src/xds/proto.js";
import {
  AppProtocol,
  AuthzAction,
  AuthzScope,
  NetworkMode,
  TunnelProtocol,
  TYPE_URL,
  WorkloadStatus,
  WorkloadType,
} from "../../src/xds/types.js";
import type { Address, Authorization, Service, Workload } from "../../src/xds/types.js";

// ---- the protobuf wire format, by hand --------------------------------------------------------
// https://protobuf.dev/programming-guides/encoding/: a field is a varint key (number << 3 | wire
// type) then its payload; wire type 0 = varint, 1 = 64-bit, 2 = length-delimited.

function varint(n: number): number[] {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}

const key = (field: number, wireType: 0 | 1 | 2): number[] => varint(field * 8 + wireType);
const vint = (field: number, n: number): number[] => [...key(field, 0), ...varint(n)];
const len = (field: number, ...parts: number[][]): number[] => {
  const payload = parts.flat();
  return [...key(field, 2), ...varint(payload.length), ...payload];
};
const str = (field: number, s: string): number[] => len(field, [...Buffer.from(s, "utf8")]);
const dbl = (field: number, x: number): number[] => {
  const b = Buffer.alloc(8);
  b.writeDoubleLE(x);
  return [...key(field, 1), ...b];
};

const hex = (bytes: Uint8Array | number[]): string => Buffer.from(bytes).toString("hex");

// ---- fixtures -----------------------------------------------------------------------------------

const ip = (...octets: number[]): Uint8Array => new Uint8Array(octets);

/** A workload with every field types.ts knows, none at its proto3 default (those are not sent). */
function fullWorkload(): Workload {
  return {
    uid: "Kubernetes//Pod/default/reviews-v1-5b7c9d8f4-x2x9k",
    name: "reviews-v1-5b7c9d8f4-x2x9k",
    namespace: "default",
    addresses: [ip(10, 244, 1, 17), ip(0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11)],
    hostname: "reviews.example",
    network: "net1",
    tunnelProtocol: TunnelProtocol.HBONE,
    trustDomain: "cluster.local",
    serviceAccount: "bookinfo-reviews",
    waypoint: { address: { network: "net1", address: ip(10, 96, 0, 9), length: 0 }, hboneMtlsPort: 15008 },
    node: "worker1",
    canonicalName: "reviews",
    canonicalRevision: "v1",
    workloadType: WorkloadType.POD,
    workloadName: "reviews-v1",
    services: {
      "default/reviews.default.svc.cluster.local": {
        ports: [{ servicePort: 9080, targetPort: 9080, appProtocol: AppProtocol.HTTP2 }],
      },
      "default/all.default.svc.cluster.local": { ports: [{ servicePort: 80 }] },
    },
    authorizationPolicies: ["default/allow-reviews"],
    status: WorkloadStatus.UNHEALTHY,
    clusterId: "Kubernetes",
    networkMode: NetworkMode.HOST_NETWORK,
    capacity: { value: 3 },
  };
}

function fullService(): Service {
  return {
    name: "reviews",
    namespace: "default",
    hostname: "reviews.default.svc.cluster.local",
    addresses: [{ network: "net1", address: ip(10, 96, 0, 7) }],
    ports: [{ servicePort: 9080, targetPort: 9080, appProtocol: AppProtocol.HTTP11 }],
    subjectAltNames: ["spiffe://cluster.local/ns/default/sa/bookinfo-reviews"],
    waypoint: {
      hostname: { namespace: "default", hostname: "waypoint.default.svc.cluster.local" },
      hboneMtlsPort: 15008,
    },
    loadBalancing: { routingPreference: [1, 2, 4], mode: 2, healthPolicy: 1 },
    ipFamilies: 3,
    canonical: true,
  };
}

function fullAuthorization(): Authorization {
  return {
    name: "deny-ports",
    namespace: "default",
    scope: AuthzScope.WORKLOAD_SELECTOR,
    action: AuthzAction.DENY,
    rules: [
      {
        clauses: [
          {
            matches: [
              {
                namespaces: [{ exact: "" }, { suffix: "-prod" }],
                notNamespaces: [{ presence: {} }],
                serviceAccounts: [{ namespace: "default", serviceAccount: "sleep" }],
                notServiceAccounts: [{ namespace: "kube-system", serviceAccount: "default" }],
                principals: [{ prefix: "spiffe://cluster.local/" }],
                notPrincipals: [{ exact: "spiffe://evil" }],
                sourceIps: [{ address: ip(10, 0, 0, 0), length: 8 }],
                notSourceIps: [{ address: ip(10, 1, 0, 0), length: 16 }],
                destinationIps: [{ address: ip(192, 168, 0, 1), length: 32 }],
                notDestinationIps: [{ address: ip(192, 168, 0, 2), length: 32 }],
                destinationPorts: [80, 443, 65535],
                notDestinationPorts: [22],
              },
            ],
          },
        ],
      },
    ],
    dryRun: true,
  };
}

// ---- field numbers against hand-built bytes ---------------------------------------------------

describe("xds codec: field numbers", () => {
  it("Workload: uid 20, addresses 3, node 9, tunnel_protocol 5, services map 22", () => {
    const address: Address = {
      workload: {
        uid: "c/p1",
        name: "p1",
        namespace: "ns",
        addresses: [ip(10, 0, 0, 1)],
        tunnelProtocol: TunnelProtocol.HBONE,
        node: "n1",
        services: { "ns/s": { ports: [{ servicePort: 80, targetPort: 8080 }] } },
      },
    };
    // Written out byte by byte, fields in number order (as protobufjs and Go both write them).
    const workload = [
      "0a 02 70 31", //                name (1) "p1"
      "12 02 6e 73", //                namespace (2) "ns"
      "1a 04 0a 00 00 01", //          addresses (3) 10.0.0.1
      "28 01", //                      tunnel_protocol (5) HBONE, varint
      "4a 02 6e 31", //                node (9) "n1": key 9<<3|2 = 0x4a
      "a2 01 04 63 2f 70 31", //       uid (20) "c/p1": key 162 = varint a2 01
      "b2 01 0f", //                   services (22): key 178 = b2 01, entry of 15 bytes
      "0a 04 6e 73 2f 73", //            map key (1) "ns/s"
      "12 07 0a 05", //                  map value (2) PortList, ports (1) one Port of 5 bytes
      "08 50 10 90 3f", //                 service_port (1) 80, target_port (2) 8080 = varint 90 3f
    ].join(" ");
    const expected = `0a 2d ${workload}`.replaceAll(" ", ""); // Address.workload (1), 45 bytes
    assert.equal(hex(encodeAddress(address)), expected);
    assert.deepEqual(decodeAddress(Buffer.from(expected, "hex")), address);
  });

  it("Service in Address field 2 with a NetworkAddress and ports", () => {
    const service: Service = {
      name: "s",
      namespace: "ns",
      hostname: "s.ns",
      addresses: [{ network: "n", address: ip(10, 96, 0, 1) }],
      ports: [{ servicePort: 80, targetPort: 8080, appProtocol: AppProtocol.GRPC }],
    };
    const expected = len(
      2,
      str(1, "s"),
      str(2, "ns"),
      str(3, "s.ns"),
      len(4, str(1, "n"), len(2, [10, 96, 0, 1])),
      len(5, vint(1, 80), vint(2, 8080), vint(3, AppProtocol.GRPC)),
    );
    assert.equal(hex(encodeAddress({ service })), hex(expected));
    assert.deepEqual(decodeAddress(new Uint8Array(expected)), { service });
  });

  it("NetworkAddress.length is proto3 optional: an explicit 0 is sent and read back", () => {
    const workload: Workload = {
      uid: "u",
      name: "",
      namespace: "",
      addresses: [],
      services: {}, // decoded map fields are always present
      waypoint: { address: { address: ip(10, 0, 0, 9), length: 0 }, hboneMtlsPort: 15008 },
    };
    // waypoint (8) GatewayAddress{address (2) NetworkAddress{address (2), length (3) 0}, hbone_mtls_port (3)}
    const expected = len(1, len(8, len(2, len(2, [10, 0, 0, 9]), vint(3, 0)), vint(3, 15008)), str(20, "u"));
    assert.equal(hex(encodeAddress({ workload })), hex(expected));
    assert.deepEqual(decodeAddress(new Uint8Array(expected)), { workload });
  });

  it("Authorization with rules, clauses, matches (packed ports, service accounts 11)", () => {
    const authorization: Authorization = {
      name: "a",
      namespace: "ns",
      scope: AuthzScope.WORKLOAD_SELECTOR,
      action: AuthzAction.DENY,
      rules: [
        {
          clauses: [
            {
              matches: [
                {
                  namespaces: [{ exact: "x" }],
                  notPrincipals: [{ prefix: "p" }],
                  sourceIps: [{ address: ip(10, 0, 0, 0), length: 8 }],
                  destinationPorts: [80, 443],
                  serviceAccounts: [{ namespace: "ns", serviceAccount: "sa" }],
                },
              ],
            },
          ],
        },
      ],
      dryRun: true,
    };
    const match = [
      ...len(1, str(1, "x")), //                          namespaces: StringMatch.exact (1)
      ...len(4, str(2, "p")), //                          not_principals: StringMatch.prefix (2)
      ...len(5, len(1, [10, 0, 0, 0]), vint(2, 8)), //    source_ips: Address{address, length}
      ...len(9, varint(80), varint(443)), //              destination_ports, packed
      ...len(11, str(1, "ns"), str(2, "sa")), //          service_accounts
    ];
    const expected = [
      ...str(1, "a"),
      ...str(2, "ns"),
      ...vint(3, AuthzScope.WORKLOAD_SELECTOR),
      ...vint(4, AuthzAction.DENY),
      ...len(5, len(1, len(2, match))), //                rules (5) → clauses (1) → matches (2)
      ...vint(6, 1), //                                   dry_run
    ];
    assert.equal(hex(encodeAuthorization(authorization)), hex(expected));
    assert.deepEqual(decodeAuthorization(new Uint8Array(expected)), authorization);
  });

  it('StringMatch: exact "" is still sent (oneof presence), presence is an empty message (4)', () => {
    const authorization: Authorization = {
      name: "",
      namespace: "",
      scope: 0,
      action: 0,
      rules: [{ clauses: [{ matches: [{ principals: [{ exact: "" }], namespaces: [{ presence: {} }] }] }] }],
    };
    const match = [...len(1, len(4, [])), ...len(3, len(1, []))];
    assert.equal(hex(encodeAuthorization(authorization)), hex(len(5, len(1, len(2, match)))));
    assert.deepEqual(decodeAuthorization(new Uint8Array(len(5, len(1, len(2, match))))), authorization);
  });

  it("ServedNodes", () => {
    const expected = [...str(1, "dpu1"), ...str(2, "cpu1"), ...str(2, "dpu1"), ...str(3, "why")];
    const served = { node: "dpu1", nodes: ["cpu1", "dpu1"], reason: "why" };
    assert.equal(hex(encodeServedNodes(served)), hex(expected));
    assert.deepEqual(decodeServedNodes(new Uint8Array(expected)), served);
  });

  it("Any packing inside a DeltaDiscoveryResponse resource", () => {
    const body = encodeServedNodes({ node: "n", nodes: ["n"] });
    const response: DeltaDiscoveryResponse = {
      systemVersionInfo: "sv",
      resources: [
        { name: "r", version: "v1", resource: packAny(TYPE_URL.servedNodes, body), aliases: ["alias"] },
      ],
      typeUrl: TYPE_URL.servedNodes,
      nonce: "1",
      removedResources: ["gone"],
    };
    const any = [...str(1, TYPE_URL.servedNodes), ...len(2, [...str(1, "n"), ...str(2, "n")])];
    const resource = [...str(1, "v1"), ...len(2, any), ...str(3, "r"), ...str(4, "alias")];
    const expected = [
      ...str(1, "sv"),
      ...len(2, resource),
      ...str(4, TYPE_URL.servedNodes),
      ...str(5, "1"),
      ...str(6, "gone"),
    ];
    assert.equal(hex(encodeDeltaDiscoveryResponse(response)), hex(expected));
    const decoded = decodeDeltaDiscoveryResponse(new Uint8Array(expected));
    assert.deepEqual(decoded, response);
    const value = unpackAny(decoded.resources[0]!.resource!, TYPE_URL.servedNodes);
    assert.deepEqual(decodeServedNodes(value), { node: "n", nodes: ["n"] });
  });

  it("DeltaDiscoveryRequest: initial_resource_versions map 5 (sorted), error_detail 7", () => {
    const request: DeltaDiscoveryRequest = {
      typeUrl: "t",
      resourceNamesSubscribe: ["s1"],
      resourceNamesUnsubscribe: ["u1"],
      initialResourceVersions: { b: "2", a: "1" },
      responseNonce: "n",
      errorDetail: { message: "bad" },
    };
    const expected = [
      ...str(2, "t"),
      ...str(3, "s1"),
      ...str(4, "u1"),
      ...len(5, str(1, "a"), str(2, "1")), // map entries are messages {key = 1, value = 2}
      ...len(5, str(1, "b"), str(2, "2")),
      ...str(6, "n"),
      ...len(7, str(2, "bad")), //             google.rpc.Status.message (2); code 0 is not sent
    ];
    assert.equal(hex(encodeDeltaDiscoveryRequest(request)), hex(expected));
    assert.deepEqual(decodeDeltaDiscoveryRequest(new Uint8Array(expected)), {
      ...request,
      initialResourceVersions: { a: "1", b: "2" },
    });
  });

  it("Node metadata as a google.protobuf.Struct (keys sorted, every Value kind)", () => {
    const metadata = { e: { f: "g" }, d: [true], c: null, b: 1.5, a: "x" };
    const request: DeltaDiscoveryRequest = { node: { id: "i", cluster: "cl", metadata }, typeUrl: "t" };
    const entry = (k: string, value: number[]): number[] => len(1, str(1, k), len(2, value));
    const struct = [
      ...entry("a", str(3, "x")), //                              string_value (3)
      ...entry("b", dbl(2, 1.5)), //                              number_value (2), 64-bit
      ...entry("c", vint(1, 0)), //                               null_value (1): sent though 0
      ...entry("d", len(6, len(1, vint(4, 1)))), //               list_value (6) of bool_value (4)
      ...entry("e", len(5, entry("f", str(3, "g")))), //          struct_value (5)
    ];
    const expected = [...len(1, str(1, "i"), str(2, "cl"), len(3, struct)), ...str(2, "t")];
    assert.equal(hex(encodeDeltaDiscoveryRequest(request)), hex(expected));
    const decoded = decodeDeltaDiscoveryRequest(new Uint8Array(expected));
    assert.deepEqual(decoded, { ...request, initialResourceVersions: {} });
  });

  it("IstioCertificateRequest: csr 1, validity_duration 3 (int64), metadata 4", () => {
    const request = {
      csr: "-----BEGIN CERTIFICATE REQUEST-----",
      validityDuration: 86400,
      metadata: { ImpersonatedIdentity: "spiffe://cluster.local/ns/default/sa/sleep" },
    };
    const expected = [
      ...str(1, request.csr),
      ...vint(3, 86400),
      ...len(
        4,
        len(1, str(1, "ImpersonatedIdentity"), len(2, str(3, request.metadata.ImpersonatedIdentity))),
      ),
    ];
    assert.equal(hex(encodeIstioCertificateRequest(request)), hex(expected));
    assert.deepEqual(decodeIstioCertificateRequest(new Uint8Array(expected)), request);
    const response = { certChain: ["leaf", "root"] };
    assert.equal(hex(encodeIstioCertificateResponse(response)), hex([...str(1, "leaf"), ...str(1, "root")]));
    assert.deepEqual(decodeIstioCertificateResponse(encodeIstioCertificateResponse(response)), response);
  });
});

// ---- round trips and decoded shapes -----------------------------------------------------------

describe("xds codec: round trips", () => {
  it("a Workload with every field", () => {
    const address: Address = { workload: fullWorkload() };
    assert.deepEqual(decodeAddress(encodeAddress(address)), address);
  });

  it("a Service with every field", () => {
    const address: Address = { service: fullService() };
    assert.deepEqual(decodeAddress(encodeAddress(address)), address);
  });

  it("an Authorization with every match kind", () => {
    const authorization = fullAuthorization();
    assert.deepEqual(decodeAuthorization(encodeAuthorization(authorization)), authorization);
  });

  it("delta requests and responses", () => {
    const request: DeltaDiscoveryRequest = {
      node: {
        id: "ztunnel~10.0.0.1~ztunnel-x.istio-system~istio-system.svc.cluster.local",
        metadata: { n: 1 },
      },
      typeUrl: TYPE_URL.address,
      resourceNamesSubscribe: ["*"],
      resourceNamesUnsubscribe: ["*"],
      initialResourceVersions: { a: "1", b: "2" },
    };
    assert.deepEqual(decodeDeltaDiscoveryRequest(encodeDeltaDiscoveryRequest(request)), request);
    const response: DeltaDiscoveryResponse = {
      resources: [
        {
          name: "w",
          version: "3",
          resource: packAny(TYPE_URL.address, encodeAddress({ workload: fullWorkload() })),
        },
      ],
      typeUrl: TYPE_URL.address,
      nonce: "n",
      removedResources: [],
    };
    const decoded = decodeDeltaDiscoveryResponse(encodeDeltaDiscoveryResponse(response));
    assert.deepEqual(decoded, response);
    assert.deepEqual(decodeAddress(decoded.resources[0]!.resource!.value), { workload: fullWorkload() });
  });

  it("decoded messages are plain objects: unset optional fields absent, required ones defaulted", () => {
    const decoded = decodeAddress(new Uint8Array(len(1, str(20, "u"))));
    assert.equal(Object.getPrototypeOf(decoded), Object.prototype);
    const workload = decoded.workload!;
    assert.equal(Object.getPrototypeOf(workload), Object.prototype);
    assert.equal(workload.waypoint, undefined, "no protobufjs prototype default (null) for messages");
    assert.equal("hostname" in workload, false);
    assert.deepEqual(workload, { uid: "u", name: "", namespace: "", addresses: [], services: {} });
    assert.deepEqual(Object.keys(decoded), ["workload"], "no oneof discriminator property");
  });

  it("decoded bytes are plain Uint8Arrays that do not share the input's memory", () => {
    const bytes = Buffer.from(encodeAddress({ workload: fullWorkload() }));
    const workload = decodeAddress(bytes).workload!;
    const first = workload.addresses[0]!;
    assert.equal(first.constructor, Uint8Array);
    bytes.fill(0);
    assert.deepEqual(first, ip(10, 244, 1, 17));
  });

  it("decoded int64 fields are numbers", () => {
    const request = { csr: "c", validityDuration: 2 ** 40, metadata: {} };
    const decoded = decodeIstioCertificateRequest(encodeIstioCertificateRequest(request));
    assert.equal(decoded.validityDuration, 2 ** 40);
    assert.deepEqual(decoded, request);
  });

  it("unknown fields (a newer istiod's) are skipped", () => {
    const bytes = new Uint8Array(len(1, str(20, "u"), vint(99, 7), str(100, "future"), dbl(101, 1)));
    const decoded = decodeAddress(bytes);
    assert.deepEqual(decoded, {
      workload: { uid: "u", name: "", namespace: "", addresses: [], services: {} },
    });
    assert.equal(hex(encodeAddress(decoded)), hex(len(1, str(20, "u"))));
  });
});

describe("xds codec: determinism", () => {
  it("the services map encodes the same whatever the insertion order", () => {
    const a = fullWorkload();
    const reversed: Workload = {
      ...a,
      services: Object.fromEntries(Object.entries(a.services!).reverse()),
    };
    assert.notDeepEqual(Object.keys(a.services!), Object.keys(reversed.services!));
    assert.equal(hex(encodeAddress({ workload: a })), hex(encodeAddress({ workload: reversed })));
    assert.equal(hex(encodeAddress({ workload: a })), hex(encodeAddress({ workload: fullWorkload() })));
    assert.deepEqual(Object.keys(reversed.services!), Object.keys(a.services!).reverse(), "input left alone");
  });

  it("Struct metadata and initial_resource_versions encode the same whatever the order", () => {
    const one = encodeDeltaDiscoveryRequest({
      node: { id: "i", metadata: { a: 1, b: { c: 2, d: 3 } } },
      typeUrl: "t",
      initialResourceVersions: { x: "1", y: "2" },
    });
    const two = encodeDeltaDiscoveryRequest({
      node: { id: "i", metadata: { b: { d: 3, c: 2 }, a: 1 } },
      typeUrl: "t",
      initialResourceVersions: { y: "2", x: "1" },
    });
    assert.equal(hex(one), hex(two));
  });
});

describe("xds codec: errors", () => {
  it("malformed bytes fail with the message type", () => {
    assert.throws(
      () => decodeAddress(new Uint8Array([0x0a, 0x10, 0x01])),
      (err: unknown) =>
        err instanceof ProtoCodecError &&
        err.messageType === "istio.workload.Address" &&
        err.operation === "decode",
    );
  });

  it("metadata without a Struct form fails with its path", () => {
    assert.throws(
      () => encodeDeltaDiscoveryRequest({ node: { id: "i", metadata: { a: { b: 1n } } }, typeUrl: "t" }),
      (err: unknown) => err instanceof ProtoCodecError && err.message.includes("node.metadata.a.b"),
    );
  });

  it("unpackAny checks the type_url", () => {
    const any = packAny(TYPE_URL.authorization, new Uint8Array());
    assert.throws(() => unpackAny(any, TYPE_URL.address), TypeUrlMismatchError);
    assert.deepEqual(unpackAny(any, TYPE_URL.authorization), new Uint8Array());
  });
});
