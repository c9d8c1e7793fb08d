import { encodeAddress } from "../../xds/proto.js";
import type { Service, Workload } from "../../xds/types.js";

// The index encodes one istio.workload.Address per pod and per service of the cluster, 110,000 at
// start. Through protobufjs each costs a writer, an operation object per field and a pooled
// buffer; most of the first build went into making and collecting them. This writer produces the
// same bytes into one reused buffer. What it does not handle — message fields the index never sets
// (waypoints, network gateway, application tunnel, locality, load balancing, extensions, capacity),
// unknown fields, non-ASCII text, numbers outside 0..2^31-1, map keys out of order — it leaves to
// protobufjs, so the bytes are protobufjs's in every case: fields in field-number order; a singular
// field only when set and not its proto3 zero value ("", 0, false, empty bytes) unless it has
// explicit presence; every element of a repeated field; map entries in key order.

/** Wire-format tags, `field << 3 | wire type` (0 varint, 2 length-delimited). */
const LEN = 2;
const tag = (field: number, wireType: number): number => (field << 3) | wireType;

const ADDRESS_WORKLOAD = tag(1, LEN);
const ADDRESS_SERVICE = tag(2, LEN);

/** istio.workload.Workload. */
const W = {
  name: tag(1, LEN),
  namespace: tag(2, LEN),
  addresses: tag(3, LEN),
  network: tag(4, LEN),
  tunnelProtocol: tag(5, 0),
  trustDomain: tag(6, LEN),
  serviceAccount: tag(7, LEN),
  node: tag(9, LEN),
  canonicalName: tag(10, LEN),
  canonicalRevision: tag(11, LEN),
  workloadType: tag(12, 0),
  workloadName: tag(13, LEN),
  nativeTunnel: tag(14, 0),
  authorizationPolicies: tag(16, LEN),
  status: tag(17, 0),
  clusterId: tag(18, LEN),
  uid: tag(20, LEN),
  hostname: tag(21, LEN),
  services: tag(22, LEN),
  networkMode: tag(25, 0),
} as const;

/** istio.workload.Service. */
const S = {
  name: tag(1, LEN),
  namespace: tag(2, LEN),
  hostname: tag(3, LEN),
  addresses: tag(4, LEN),
  ports: tag(5, LEN),
  subjectAltNames: tag(6, LEN),
  ipFamilies: tag(9, 0),
  canonical: tag(11, 0),
  ingressUseWaypoint: tag(12, 0),
  visibility: tag(14, 0),
} as const;

/** A map entry's key and value; PortList.ports. */
const ENTRY_KEY = tag(1, LEN);
const ENTRY_VALUE = tag(2, LEN);
const PORT_LIST_PORTS = tag(1, LEN);
/** istio.workload.Port. */
const PORT_SERVICE_PORT = tag(1, 0);
const PORT_TARGET_PORT = tag(2, 0);
const PORT_APP_PROTOCOL = tag(3, 0);
/** istio.workload.NetworkAddress; `length` has explicit presence (proto3 `optional`). */
const NA_NETWORK = tag(1, LEN);
const NA_ADDRESS = tag(2, LEN);
const NA_LENGTH = tag(3, 0);

/** Room before the message for Address's tag and the message's length (a varint of ≤ 5 bytes). */
const HEAD = 6;

const present = (v: unknown): boolean => v !== undefined && v !== null;

const isSmallUint = (v: unknown): v is number =>
  typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= 0x7fffffff;

const varintSize = (v: number): number =>
  v < 0x80 ? 1 : v < 0x4000 ? 2 : v < 0x200000 ? 3 : v < 0x10000000 ? 4 : 5;

/** Size of a varint field (tag and value): 0 when absent or zero, -1 when not handled here. */
const uintFieldSize = (v: unknown): number =>
  v === undefined || v === null || v === 0 ? 0 : isSmallUint(v) ? 1 + varintSize(v) : -1;

/** Size of an encoded istio.workload.Port, or -1 when this writer does not handle it. */
function portSize(port: unknown): number {
  if (typeof port !== "object" || port === null) return -1;
  const p = port as Record<string, unknown>;
  if (present(p.$unknowns)) return -1;
  const a = uintFieldSize(p.servicePort);
  const b = uintFieldSize(p.targetPort);
  const c = uintFieldSize(p.appProtocol);
  return a < 0 || b < 0 || c < 0 ? -1 : a + b + c;
}

/** Size of a length-delimited field of `n` bytes (tag of one byte). */
const delimitedSize = (n: number): number => 1 + varintSize(n) + n;

/** Writes istio.workload.Address messages; one per index, its buffer reused from call to call. */
export class AddressEncoder {
  private buf = new Uint8Array(4096);
  private pos = 0;

  /**
   * `encodeAddress({ workload })`'s bytes. A view of this encoder's buffer (or of protobufjs's
   * pool): valid until the next call, to be copied by whoever keeps it.
   */
  workload(workload: Workload): Uint8Array {
    this.pos = HEAD;
    return (this.workloadFields(workload) && this.finish(ADDRESS_WORKLOAD)) || encodeAddress({ workload });
  }

  /** `encodeAddress({ service })`'s bytes; valid until the next call, as `workload`'s. */
  service(service: Service): Uint8Array {
    this.pos = HEAD;
    return (this.serviceFields(service) && this.finish(ADDRESS_SERVICE)) || encodeAddress({ service });
  }

  /** The fields in field-number order; false when something is left to protobufjs. */
  private workloadFields(w: Workload): boolean {
    const fields = w as unknown as Record<string, unknown>;
    return (
      !present(w.waypoint) &&
      !present(fields.networkGateway) &&
      !present(fields.applicationTunnel) &&
      !present(fields.locality) &&
      !present(fields.extensions) &&
      !present(w.capacity) &&
      !present(fields.$unknowns) &&
      this.string(W.name, w.name) &&
      this.string(W.namespace, w.namespace) &&
      this.byteStrings(W.addresses, w.addresses) &&
      this.string(W.network, w.network) &&
      this.uint(W.tunnelProtocol, w.tunnelProtocol) &&
      this.string(W.trustDomain, w.trustDomain) &&
      this.string(W.serviceAccount, w.serviceAccount) &&
      this.string(W.node, w.node) &&
      this.string(W.canonicalName, w.canonicalName) &&
      this.string(W.canonicalRevision, w.canonicalRevision) &&
      this.uint(W.workloadType, w.workloadType) &&
      this.string(W.workloadName, w.workloadName) &&
      this.bool(W.nativeTunnel, fields.nativeTunnel) &&
      this.strings(W.authorizationPolicies, w.authorizationPolicies) &&
      this.uint(W.status, w.status) &&
      this.string(W.clusterId, w.clusterId) &&
      this.string(W.uid, w.uid) &&
      this.string(W.hostname, w.hostname) &&
      this.servicePorts(w.services) &&
      this.uint(W.networkMode, w.networkMode)
    );
  }

  private serviceFields(s: Service): boolean {
    const fields = s as unknown as Record<string, unknown>;
    return (
      !present(s.waypoint) &&
      !present(s.loadBalancing) &&
      !present(fields.extensions) &&
      !present(fields.weightedWaypoints) &&
      !present(fields.$unknowns) &&
      this.string(S.name, s.name) &&
      this.string(S.namespace, s.namespace) &&
      this.string(S.hostname, s.hostname) &&
      this.networkAddresses(S.addresses, s.addresses) &&
      this.ports(S.ports, s.ports) &&
      this.strings(S.subjectAltNames, s.subjectAltNames) &&
      this.uint(S.ipFamilies, s.ipFamilies) &&
      this.bool(S.canonical, s.canonical) &&
      this.bool(S.ingressUseWaypoint, fields.ingressUseWaypoint) &&
      this.uint(S.visibility, fields.visibility)
    );
  }

  /** Prefix the message written since HEAD with Address's `tag` and its length; the whole. */
  private finish(addressTag: number): Uint8Array {
    const length = this.pos - HEAD;
    const start = HEAD - 1 - varintSize(length);
    this.buf[start] = addressTag;
    this.writeVarintAt(start + 1, length);
    return this.buf.subarray(start, this.pos);
  }

  /** A singular string field: absent when unset or "" (proto3's zero value). */
  private string(tag: number, value: unknown): boolean {
    return value === undefined || value === null || value === "" || this.element(tag, value);
  }

  /** A string written even when "": an element of a repeated field. */
  private element(tag: number, value: unknown): boolean {
    if (typeof value !== "string") return false;
    this.reserve(value.length + 7);
    this.varint(tag);
    this.varint(value.length);
    return this.ascii(value);
  }

  private strings(tag: number, values: unknown): boolean {
    if (values === undefined || values === null) return true;
    if (!Array.isArray(values)) return false;
    for (const v of values) if (!this.element(tag, v)) return false;
    return true;
  }

  /** A singular uint32 or enum field: absent when 0. */
  private uint(tag: number, value: unknown): boolean {
    if (value === undefined || value === null || value === 0) return true;
    if (!isSmallUint(value)) return false;
    this.reserve(7);
    this.varint(tag);
    this.varint(value);
    return true;
  }

  /** A singular bool field: absent when false (written as protobufjs does for any other value). */
  private bool(tag: number, value: unknown): boolean {
    if (value === undefined || value === null || value === false) return true;
    this.reserve(3);
    this.varint(tag);
    this.buf[this.pos++] = value ? 1 : 0;
    return true;
  }

  /** A repeated bytes field: every element written, empty ones too. */
  private byteStrings(tag: number, values: unknown): boolean {
    if (values === undefined || values === null) return true;
    if (!Array.isArray(values)) return false;
    for (const a of values) {
      if (!(a instanceof Uint8Array)) return false;
      this.reserve(a.length + 7);
      this.varint(tag);
      this.varint(a.length);
      this.bytes(a);
    }
    return true;
  }

  /** Repeated istio.workload.NetworkAddress. */
  private networkAddresses(tag: number, values: unknown): boolean {
    if (values === undefined || values === null) return true;
    if (!Array.isArray(values)) return false;
    for (const value of values) {
      if (typeof value !== "object" || value === null) return false;
      const { network, address, length, $unknowns } = value as Record<string, unknown>;
      if (present($unknowns)) return false;
      if (present(network) && typeof network !== "string") return false;
      if (present(address) && !(address instanceof Uint8Array)) return false;
      if (present(length) && !isSmallUint(length)) return false;
      const net = typeof network === "string" ? network : "";
      const addr = address instanceof Uint8Array ? address : undefined;
      // `length` is written whenever set, 0 included: it has explicit presence.
      const size =
        (net === "" ? 0 : delimitedSize(net.length)) +
        (addr === undefined || addr.length === 0 ? 0 : delimitedSize(addr.length)) +
        (isSmallUint(length) ? 1 + varintSize(length) : 0);
      this.reserve(size + 7);
      this.varint(tag);
      this.varint(size);
      if (net !== "" && !this.element(NA_NETWORK, net)) return false;
      if (addr !== undefined && addr.length > 0) {
        this.varint(NA_ADDRESS);
        this.varint(addr.length);
        this.bytes(addr);
      }
      if (isSmallUint(length)) {
        this.varint(NA_LENGTH);
        this.varint(length);
      }
    }
    return true;
  }

  /** Repeated istio.workload.Port. */
  private ports(tag: number, ports: unknown): boolean {
    if (ports === undefined || ports === null) return true;
    if (!Array.isArray(ports)) return false;
    for (const p of ports) {
      const size = portSize(p);
      if (size < 0) return false;
      this.reserve(size + 7);
      this.varint(tag);
      this.varint(size);
      this.port(p as Record<string, number | undefined>);
    }
    return true;
  }

  /** A Port's fields, already validated by portSize. */
  private port(p: Record<string, number | undefined>): void {
    this.portField(PORT_SERVICE_PORT, p.servicePort);
    this.portField(PORT_TARGET_PORT, p.targetPort);
    this.portField(PORT_APP_PROTOCOL, p.appProtocol);
  }

  private portField(tag: number, value: number | undefined | null): void {
    if (value === undefined || value === null || value === 0) return;
    this.buf[this.pos++] = tag;
    this.varint(value);
  }

  /** Workload.services, map<string, PortList>: entries in key order (else protobufjs, which sorts). */
  private servicePorts(services: unknown): boolean {
    if (services === undefined || services === null) return true;
    if (typeof services !== "object") return false;
    const record = services as Record<string, unknown>;
    let previous: string | undefined;
    for (const key in record) {
      if (previous !== undefined && previous > key) return false;
      previous = key;
      if (!this.servicePortsEntry(key, record[key])) return false;
    }
    return true;
  }

  private servicePortsEntry(key: string, list: unknown): boolean {
    if (typeof list !== "object" || list === null) return false;
    const { ports, $unknowns } = list as { ports?: unknown; $unknowns?: unknown };
    if (present($unknowns)) return false;
    let listSize = 0;
    if (ports !== undefined && ports !== null) {
      if (!Array.isArray(ports)) return false;
      for (const p of ports) {
        const size = portSize(p);
        if (size < 0) return false;
        listSize += delimitedSize(size);
      }
    }
    // Sizes count one byte per character of the key; a non-ASCII key aborts below.
    const entrySize = delimitedSize(key.length) + delimitedSize(listSize);
    this.reserve(entrySize + 7);
    this.varint(W.services);
    this.varint(entrySize);
    if (!this.element(ENTRY_KEY, key)) return false;
    this.buf[this.pos++] = ENTRY_VALUE;
    this.varint(listSize);
    return this.ports(PORT_LIST_PORTS, ports);
  }

  /** The characters of `s` as bytes; false at the first one outside ASCII (UTF-8 is then longer). */
  private ascii(s: string): boolean {
    const buf = this.buf;
    const at = this.pos;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c > 0x7f) return false;
      buf[at + i] = c;
    }
    this.pos = at + s.length;
    return true;
  }

  private bytes(b: Uint8Array): void {
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }

  private varint(v: number): void {
    this.pos = this.writeVarintAt(this.pos, v);
  }

  /** `v` (0..2^31-1) as a varint at `at`; returns the position after it. */
  private writeVarintAt(at: number, v: number): number {
    const buf = this.buf;
    while (v > 0x7f) {
      buf[at++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    buf[at++] = v;
    return at;
  }

  /** Room for `n` more bytes. */
  private reserve(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    const grown = new Uint8Array(Math.max(this.buf.length * 2, this.pos + n));
    grown.set(this.buf.subarray(0, this.pos));
    this.buf = grown;
  }
}
