import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import protobuf from "protobufjs";
import type {
  AnyMessage,
  DeltaDiscoveryRequest,
  DeltaDiscoveryResponse,
  IstioCertificateRequest,
  IstioCertificateResponse,
  Node,
} from "./messages.js";
import type { Address, Authorization, ServedNodes } from "./types.js";

// Codecs for the messages offmesh exchanges with ztunnels and istiods, built by protobufjs reflection
// from the project's proto/ files (google/protobuf/* come from protobufjs's bundled copies).
//
// Decoded messages are plain objects (prototype Object.prototype) shaped like types.ts and
// messages.ts: every field those interfaces require is present (proto3 default when unset on the
// wire), optional fields only when set, map fields always (empty when unset). protobufjs's own
// message classes would instead answer "" / null from their prototype for unset fields, which
// contradicts the interfaces (`waypoint?: GatewayAddress` would read null) and breaks deep
// equality with literals. Each type therefore gets a constructor that returns such a plain object;
// the generated decoders fill it in.

/** The files under proto/ that define every message the codecs use; imports resolve from there. */
const PROTO_FILES = [
  "envoy/service/discovery/v3/xds.proto",
  "istio/workload/workload.proto",
  "istio/security/authorization.proto",
  "istio/v1/auth/ca.proto",
  "offmesh/v1/served_nodes.proto",
] as const;

/**
 * Fields present on every decoded message of a type even when unset on the wire: the fields the
 * TypeScript interfaces declare as required. Keys are fully qualified message names.
 */
const ALWAYS_PRESENT: Readonly<Record<string, readonly string[]>> = {
  "istio.workload.Workload": ["uid", "name", "namespace", "addresses"],
  "istio.workload.Service": ["name", "namespace", "hostname", "addresses", "ports"],
  "istio.workload.NetworkAddress": ["address"],
  "istio.workload.Port": ["servicePort"],
  "istio.workload.PortList": ["ports"],
  "istio.workload.NamespacedHostname": ["namespace", "hostname"],
  "istio.security.Authorization": ["name", "namespace", "scope", "action", "rules"],
  "istio.security.Rule": ["clauses"],
  "istio.security.Clause": ["matches"],
  "istio.security.Address": ["address", "length"],
  "istio.security.ServiceAccountMatch": ["namespace", "serviceAccount"],
  "offmesh.v1.ServedNodes": ["node", "nodes"],
  "envoy.service.discovery.v3.Node": ["id"],
  "envoy.service.discovery.v3.DeltaDiscoveryRequest": ["typeUrl"],
  "envoy.service.discovery.v3.DeltaDiscoveryResponse": ["resources", "typeUrl", "nonce", "removedResources"],
  "envoy.service.discovery.v3.Resource": ["name", "version"],
  "google.rpc.Status": ["message"],
  "google.protobuf.Any": ["typeUrl", "value"],
  "google.protobuf.ListValue": ["values"],
  "google.protobuf.UInt32Value": ["value"],
  "istio.v1.auth.IstioCertificateRequest": ["csr", "validityDuration"],
  "istio.v1.auth.IstioCertificateResponse": ["certChain"],
};

export class ProtoLoadError extends Error {
  constructor(
    /** The proto/ directory the files were read from, when one was found. */
    readonly protoDir: string | undefined,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "ProtoLoadError";
  }
}

/** A message that could not be encoded or decoded; `messageType` is its fully qualified name. */
export class ProtoCodecError extends Error {
  constructor(
    readonly messageType: string,
    readonly operation: "encode" | "decode",
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`${operation} ${messageType}: ${message}`, options);
    this.name = "ProtoCodecError";
  }
}

/** A google.protobuf.Any whose type_url is not the one the caller expected. */
export class TypeUrlMismatchError extends Error {
  constructor(
    readonly expected: string,
    readonly actual: string,
  ) {
    super(`expected an Any of ${expected}, got ${actual === "" ? "an empty type_url" : actual}`);
    this.name = "TypeUrlMismatchError";
  }
}

const XDS_PROTO_MARKER = join("proto", PROTO_FILES[0]);

/**
 * The project's proto/ directory, found by walking up from this module: it sits two levels up
 * from src/xds/ in a source checkout and three from dist/src/xds/ once compiled.
 */
export function findProtoDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let up = 0; up < 6; up++) {
    if (existsSync(join(dir, XDS_PROTO_MARKER))) return join(dir, "proto");
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  throw new ProtoLoadError(
    undefined,
    `no proto/ directory holding ${PROTO_FILES[0]} above ${fileURLToPath(import.meta.url)}`,
  );
}

interface Codecs {
  readonly address: protobuf.Type;
  readonly authorization: protobuf.Type;
  readonly servedNodes: protobuf.Type;
  readonly deltaRequest: protobuf.Type;
  readonly deltaResponse: protobuf.Type;
  readonly certRequest: protobuf.Type;
  readonly certResponse: protobuf.Type;
}

let codecs: Codecs | undefined;

/** The codecs, loading and preparing the .proto files on first use. */
function loaded(): Codecs {
  codecs ??= loadCodecs(findProtoDir());
  return codecs;
}

/** Load the protos now instead of on the first encode or decode; throws ProtoLoadError. */
export function loadProtos(): void {
  loaded();
}

function loadCodecs(protoDir: string): Codecs {
  const root = new protobuf.Root();
  // Imports are written relative to proto/ ("istio/workload/workload.proto"); protobufjs consults
  // its bundled google/protobuf/* before calling this.
  root.resolvePath = (_origin: string, target: string): string => join(protoDir, target);
  try {
    root.loadSync([...PROTO_FILES], { keepCase: false });
    root.resolveAll();
  } catch (err) {
    throw new ProtoLoadError(protoDir, `loading ${PROTO_FILES.join(", ")} from ${protoDir}: ${String(err)}`, {
      cause: err,
    });
  }
  const types = allTypes(root);
  for (const type of types) camelCaseFields(type, protoDir);
  for (const type of types) detachMessageOneofs(type);
  for (const type of types) type.ctor = plainConstructor(type, protoDir);
  const lookup = (name: string): protobuf.Type => {
    try {
      return root.lookupType(name);
    } catch (err) {
      throw new ProtoLoadError(protoDir, `message ${name} is not defined under ${protoDir}`, { cause: err });
    }
  };
  return {
    address: lookup("istio.workload.Address"),
    authorization: lookup("istio.security.Authorization"),
    servedNodes: lookup("offmesh.v1.ServedNodes"),
    deltaRequest: lookup("envoy.service.discovery.v3.DeltaDiscoveryRequest"),
    deltaResponse: lookup("envoy.service.discovery.v3.DeltaDiscoveryResponse"),
    certRequest: lookup("istio.v1.auth.IstioCertificateRequest"),
    certResponse: lookup("istio.v1.auth.IstioCertificateResponse"),
  };
}

function allTypes(ns: protobuf.NamespaceBase): protobuf.Type[] {
  const out: protobuf.Type[] = [];
  for (const nested of ns.nestedArray) {
    if (nested instanceof protobuf.Type) out.push(nested);
    if (nested instanceof protobuf.Namespace || nested instanceof protobuf.Type)
      out.push(...allTypes(nested));
  }
  return out;
}

const qualifiedName = (type: protobuf.Type): string => type.fullName.replace(/^\./, "");

/**
 * Rename snake_case fields to camelCase, as the parser names every field of the .proto files under
 * proto/; protobufjs's bundled google.protobuf.Any keeps `type_url`, while Resource.resource is
 * `{typeUrl, value}` everywhere else.
 */
function camelCaseFields(type: protobuf.Type, protoDir: string): void {
  for (const field of [...type.fieldsArray]) {
    const camel = protobuf.util.camelCase(field.name);
    if (camel === field.name) continue;
    if (field.map || field.partOf !== null) {
      throw new ProtoLoadError(
        protoDir,
        `${qualifiedName(type)}.${field.name}: cannot rename a map or oneof field`,
      );
    }
    type.remove(field);
    type.add(new protobuf.Field(camel, field.id, field.type, field.rule, undefined, field.options));
  }
}

/**
 * Dissolve oneofs whose members are all messages (Address.type, GatewayAddress.destination).
 * Message fields carry presence on their own, so the wire format does not change; what goes away
 * is the decoder's write of the oneof's discriminator (`m.type = "workload"`), which would be an
 * extra enumerable property on the plain decoded objects and costs a hidden slot on each
 * (see plainConstructor) on the hottest path, one per decoded workload.
 */
function detachMessageOneofs(type: protobuf.Type): void {
  for (const oneof of [...type.oneofsArray]) {
    if (!oneof.fieldsArray.every((f) => f.resolve().resolvedType instanceof protobuf.Type)) continue;
    for (const field of [...oneof.fieldsArray]) oneof.remove(field);
    type.remove(oneof);
  }
}

const HIDDEN_SLOT: PropertyDescriptor = Object.freeze({
  value: undefined,
  writable: true,
  enumerable: false,
  configurable: true,
});

/**
 * A constructor for protobufjs's decoders that returns a plain object (a constructor returning an
 * object makes `new` yield that object) holding the type's always-present fields and, for the
 * remaining oneofs (scalar members, where presence matters), a non-enumerable slot for the
 * discriminator the decoder writes.
 */
function plainConstructor(type: protobuf.Type, protoDir: string): protobuf.Constructor<object> {
  const name = qualifiedName(type);
  const defaults: [string, () => unknown][] = [];
  const required = new Set(ALWAYS_PRESENT[name] ?? []);
  for (const fieldName of required) {
    const field = type.fields[fieldName];
    if (field === undefined) {
      throw new ProtoLoadError(protoDir, `${name} has no field ${fieldName}, which offmesh's types require`);
    }
    defaults.push([fieldName, defaultMaker(field.resolve(), name, protoDir)]);
  }
  // The generated decoders add map entries to the object they find in the field.
  for (const field of type.fieldsArray) {
    if (field.map && !required.has(field.name)) defaults.push([field.name, () => ({})]);
  }
  const hidden = type.oneofsArray.map((o) => o.name);
  const make = (): Record<string, unknown> => {
    const obj: Record<string, unknown> = {};
    for (const [key, value] of defaults) obj[key] = value();
    for (const key of hidden) Object.defineProperty(obj, key, HIDDEN_SLOT);
    return obj;
  };
  return function PlainMessage(): object {
    return make();
  } as unknown as protobuf.Constructor<object>;
}

function defaultMaker(field: protobuf.Field, typeName: string, protoDir: string): () => unknown {
  if (field.map) return () => ({});
  if (field.repeated) return () => [];
  if (field.resolvedType instanceof protobuf.Enum) return () => 0;
  switch (field.type) {
    case "string":
      return () => "";
    case "bytes":
      return () => new Uint8Array(0);
    case "bool":
      return () => false;
    case "double":
    case "float":
    case "int32":
    case "uint32":
    case "sint32":
    case "fixed32":
    case "sfixed32":
    case "int64":
    case "uint64":
    case "sint64":
    case "fixed64":
    case "sfixed64":
      return () => 0;
    default:
      throw new ProtoLoadError(
        protoDir,
        `${typeName}.${field.name} is a message field; only scalars and lists can be always present`,
      );
  }
}

/**
 * Reads bytes fields as copies. Decoded resources outlive the gRPC message they arrived in (a
 * ztunnel keeps workloads for hours); views would pin every such message's whole buffer.
 */
class CopyingReader extends protobuf.Reader {
  override raw(start: number, end: number): Uint8Array {
    return this.buf.slice(start, end);
  }
}

/**
 * A Uint8Array view of the same memory. protobufjs reads a Node Buffer through Buffer methods and
 * hands out Buffer slices; a plain view keeps decoded bytes plain Uint8Arrays (deep-equal to
 * literals) and reads short strings faster.
 */
function plainView(bytes: Uint8Array): Uint8Array {
  return bytes.constructor === Uint8Array
    ? bytes
    : new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length);
}

function encodeWith(type: protobuf.Type, message: object): Uint8Array {
  try {
    return plainView(type.encode(message).finish());
  } catch (err) {
    throw new ProtoCodecError(qualifiedName(type), "encode", String(err), { cause: err });
  }
}

function decodeWith(type: protobuf.Type, reader: protobuf.Reader): unknown {
  try {
    return type.decode(reader);
  } catch (err) {
    throw new ProtoCodecError(qualifiedName(type), "decode", String(err), { cause: err });
  }
}

const copying = (bytes: Uint8Array): protobuf.Reader => new CopyingReader(plainView(bytes));

/** Whether `record`'s keys iterate in sorted order already (the common case: nothing to copy). */
function keysSorted(record: object): boolean {
  let previous: string | undefined;
  for (const key in record) {
    if (previous !== undefined && previous > key) return false;
    previous = key;
  }
  return true;
}

/**
 * The record with its keys inserted in sorted order. protobufjs writes map entries in iteration
 * order; sorting makes equal maps encode to equal bytes whatever order they were built in.
 */
function sortedRecord<V>(record: Record<string, V>): Record<string, V> {
  if (keysSorted(record)) return record;
  const out: Record<string, V> = {};
  for (const key of Object.keys(record).sort()) setOwn(out, key, record[key] as V);
  return out;
}

/** Assign even the key "__proto__" as an own property instead of replacing the prototype. */
function setOwn<V>(obj: Record<string, V>, key: string, value: V): void {
  if (key === "__proto__") {
    Object.defineProperty(obj, key, { value, writable: true, enumerable: true, configurable: true });
  } else {
    obj[key] = value;
  }
}

// ---- workload API resources -------------------------------------------------------------------

export function encodeAddress(address: Address): Uint8Array {
  const workload = address.workload;
  if (workload?.services !== undefined && !keysSorted(workload.services)) {
    address = { ...address, workload: { ...workload, services: sortedRecord(workload.services) } };
  }
  return encodeWith(loaded().address, address);
}

/** Decodes into fresh memory: the result shares nothing with `bytes`. */
export function decodeAddress(bytes: Uint8Array): Address {
  return decodeWith(loaded().address, copying(bytes)) as Address;
}

export function encodeAuthorization(authorization: Authorization): Uint8Array {
  return encodeWith(loaded().authorization, authorization);
}

/** Decodes into fresh memory: the result shares nothing with `bytes`. */
export function decodeAuthorization(bytes: Uint8Array): Authorization {
  return decodeWith(loaded().authorization, copying(bytes)) as Authorization;
}

export function encodeServedNodes(servedNodes: ServedNodes): Uint8Array {
  return encodeWith(loaded().servedNodes, servedNodes);
}

export function decodeServedNodes(bytes: Uint8Array): ServedNodes {
  return decodeWith(loaded().servedNodes, copying(bytes)) as ServedNodes;
}

// ---- google.protobuf.Any ----------------------------------------------------------------------

export function packAny(typeUrl: string, value: Uint8Array): AnyMessage {
  return { typeUrl, value };
}

/** The encoded message inside `any`, when it is of `expectedTypeUrl`; else TypeUrlMismatchError. */
export function unpackAny(any: AnyMessage, expectedTypeUrl: string): Uint8Array {
  if (any.typeUrl !== expectedTypeUrl) throw new TypeUrlMismatchError(expectedTypeUrl, any.typeUrl);
  return any.value;
}

// ---- google.protobuf.Struct -------------------------------------------------------------------

/** google.protobuf.Value as protobufjs sees it: exactly one member of the `kind` oneof set. */
interface ProtoValue {
  nullValue?: number;
  numberValue?: number;
  stringValue?: string;
  boolValue?: boolean;
  structValue?: ProtoStruct;
  listValue?: { values: ProtoValue[] };
}

interface ProtoStruct {
  fields: Record<string, ProtoValue>;
}

const STRUCT = "google.protobuf.Struct";

/** A JSON-like record as a Struct, keys sorted. Like JSON, undefined members are left out. */
function toStruct(record: Record<string, unknown>, path: string): ProtoStruct {
  const fields: Record<string, ProtoValue> = {};
  for (const key of Object.keys(record).sort()) {
    const value = record[key];
    if (value !== undefined) setOwn(fields, key, toValue(value, `${path}.${key}`));
  }
  return { fields };
}

function toValue(value: unknown, path: string): ProtoValue {
  if (value === null) return { nullValue: 0 };
  switch (typeof value) {
    case "number":
      return { numberValue: value };
    case "string":
      return { stringValue: value };
    case "boolean":
      return { boolValue: value };
    case "object":
      if (Array.isArray(value)) {
        // JSON writes holes and undefined elements of arrays as null; so does this.
        return { listValue: { values: Array.from(value, (v, i) => toValue(v ?? null, `${path}[${i}]`)) } };
      }
      if (isPlainRecord(value)) return { structValue: toStruct(value, path) };
      throw new ProtoCodecError(
        STRUCT,
        "encode",
        `${path}: a ${value.constructor?.name ?? "null-prototype"} object is not JSON-like`,
      );
    default:
      throw new ProtoCodecError(
        STRUCT,
        "encode",
        `${path}: a ${typeof value} has no google.protobuf.Value form`,
      );
  }
}

function isPlainRecord(value: object): value is Record<string, unknown> {
  const proto: unknown = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function fromStruct(struct: ProtoStruct): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(struct.fields)) setOwn(out, key, fromValue(value));
  return out;
}

const has = (obj: object, key: string): boolean => Object.prototype.hasOwnProperty.call(obj, key);

function fromValue(value: ProtoValue): unknown {
  if (value.numberValue !== undefined) return value.numberValue;
  if (value.stringValue !== undefined) return value.stringValue;
  if (value.boolValue !== undefined) return value.boolValue;
  if (value.structValue !== undefined) return fromStruct(value.structValue);
  if (value.listValue !== undefined) return value.listValue.values.map(fromValue);
  if (has(value, "nullValue")) return null;
  // A Value with no kind set is malformed; JSON mapping has no better reading than null.
  return null;
}

/** The plain number of an int64 field, which protobufjs decodes as a Long when long.js is present. */
function int64ToNumber(value: unknown): number {
  if (typeof value === "number") return value;
  if (
    typeof value === "object" &&
    value !== null &&
    "toNumber" in value &&
    typeof value.toNumber === "function"
  ) {
    return Number(value.toNumber());
  }
  return Number(value);
}

// ---- delta ADS --------------------------------------------------------------------------------

interface ProtoNode {
  id: string;
  cluster?: string;
  metadata?: ProtoStruct;
}

function nodeToProto(node: Node): ProtoNode {
  const out: ProtoNode = { id: node.id };
  if (node.cluster !== undefined) out.cluster = node.cluster;
  if (node.metadata !== undefined) out.metadata = toStruct(node.metadata, "node.metadata");
  return out;
}

function nodeFromProto(node: ProtoNode): Node {
  if (node.metadata === undefined) return node as Node;
  return { ...node, metadata: fromStruct(node.metadata) };
}

export function encodeDeltaDiscoveryRequest(request: DeltaDiscoveryRequest): Uint8Array {
  const message: Record<string, unknown> = { ...request };
  if (request.node !== undefined) message["node"] = nodeToProto(request.node);
  if (request.initialResourceVersions !== undefined) {
    message["initialResourceVersions"] = sortedRecord(request.initialResourceVersions);
  }
  return encodeWith(loaded().deltaRequest, message);
}

export function decodeDeltaDiscoveryRequest(bytes: Uint8Array): DeltaDiscoveryRequest {
  const message = decodeWith(loaded().deltaRequest, copying(bytes)) as Omit<DeltaDiscoveryRequest, "node"> & {
    node?: ProtoNode | Node;
  };
  if (message.node !== undefined) message.node = nodeFromProto(message.node as ProtoNode);
  return message as DeltaDiscoveryRequest;
}

export function encodeDeltaDiscoveryResponse(response: DeltaDiscoveryResponse): Uint8Array {
  return encodeWith(loaded().deltaResponse, response);
}

/**
 * Decodes without copying: each `resource.value` is a view into `bytes`, meant to be decoded (the
 * resource decoders copy) before `bytes` is dropped. Copy a value to keep it as bytes.
 */
export function decodeDeltaDiscoveryResponse(bytes: Uint8Array): DeltaDiscoveryResponse {
  // Responses arrive as Buffers from grpc-js; the Buffer reader decodes their longer strings (names,
  // type URLs) natively, a quarter faster over a large response. Its bytes are Buffer slices,
  // rewrapped as plain views.
  const reader = Buffer.isBuffer(bytes)
    ? new protobuf.BufferReader(bytes)
    : new protobuf.Reader(plainView(bytes));
  const response = decodeWith(loaded().deltaResponse, reader) as DeltaDiscoveryResponse;
  for (const resource of response.resources) {
    if (resource.resource !== undefined) resource.resource.value = plainView(resource.resource.value);
  }
  return response;
}

// ---- Istio CA ---------------------------------------------------------------------------------

export function encodeIstioCertificateRequest(request: IstioCertificateRequest): Uint8Array {
  return encodeWith(loaded().certRequest, {
    csr: request.csr,
    validityDuration: request.validityDuration,
    metadata: toStruct(request.metadata, "metadata"),
  });
}

export function decodeIstioCertificateRequest(bytes: Uint8Array): IstioCertificateRequest {
  const message = decodeWith(loaded().certRequest, copying(bytes)) as {
    csr: string;
    validityDuration: unknown;
    metadata?: ProtoStruct;
  };
  return {
    csr: message.csr,
    validityDuration: int64ToNumber(message.validityDuration),
    metadata: message.metadata === undefined ? {} : fromStruct(message.metadata),
  };
}

export function encodeIstioCertificateResponse(response: IstioCertificateResponse): Uint8Array {
  return encodeWith(loaded().certResponse, response);
}

export function decodeIstioCertificateResponse(bytes: Uint8Array): IstioCertificateResponse {
  return decodeWith(loaded().certResponse, copying(bytes)) as IstioCertificateResponse;
}
