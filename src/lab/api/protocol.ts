import { z } from "zod";
import { ClusterState } from "../../cluster/memory.js";
import type {
  ClusterEvent,
  ClusterNamespace,
  ClusterNode,
  ClusterPod,
  ClusterPolicy,
  ClusterService,
  ClusterSnapshot,
  ClusterTopology,
} from "../../cluster/types.js";
import type { ApiIssue, ObjectKind } from "./schema.js";
import {
  applySchemas,
  check,
  namespaceSchema,
  nodeSchema,
  OBJECT_KINDS,
  podSchema,
  policySchema,
  serviceSchema,
  topologySchema,
} from "./schema.js";

// The lab API: newline-delimited JSON over a unix stream socket, the lab's stand-in for the
// Kubernetes API server. Every line a client sends is a request with an `id`; every answer
// carries it. A connection may send any number of requests; a `watch` turns it into a stream:
// one snapshot, then every change as an event, in order, until either side closes.

/** A request line longer than this is refused (a manifest of thousands of pods is far below it). */
export const MAX_REQUEST_CHARS = 32 * 1024 * 1024;
/** A server line longer than this is refused by clients (a snapshot of a large lab is far below it). */
export const MAX_MESSAGE_CHARS = 512 * 1024 * 1024;

export type RequestId = string | number;

export interface ObjectRef {
  readonly kind: ObjectKind;
  /** For pods, services and policies; nodes and namespaces have none. */
  readonly namespace?: string;
  readonly name: string;
}

/** An object to create or update; pods may lack a uid and services their clusterIPs (see schema.ts). */
export type ApplyObject =
  | { readonly kind: "namespace"; readonly object: z.input<typeof applySchemas.namespace> }
  | { readonly kind: "node"; readonly object: z.input<typeof applySchemas.node> }
  | { readonly kind: "service"; readonly object: z.input<typeof applySchemas.service> }
  | { readonly kind: "policy"; readonly object: z.input<typeof applySchemas.policy> }
  | { readonly kind: "pod"; readonly object: z.input<typeof applySchemas.pod> };

/** A cluster object (src/cluster/types.ts) as an apply request, which takes plain, mutable JSON. */
export function applyRequest(kind: ApplyObject["kind"], object: object): ApplyObject {
  return { kind, object: JSON.parse(JSON.stringify(object)) as never } as ApplyObject;
}

/** An ApplyObject after validation: defaults filled in, addresses canonical. */
export type CheckedObject =
  | { readonly kind: "namespace"; readonly object: z.output<typeof applySchemas.namespace> }
  | { readonly kind: "node"; readonly object: z.output<typeof applySchemas.node> }
  | { readonly kind: "service"; readonly object: z.output<typeof applySchemas.service> }
  | { readonly kind: "policy"; readonly object: z.output<typeof applySchemas.policy> }
  | { readonly kind: "pod"; readonly object: z.output<typeof applySchemas.pod> };

export type LabRequest =
  | { readonly id: RequestId; readonly op: "watch" }
  | { readonly id: RequestId; readonly op: "get" }
  | { readonly id: RequestId; readonly op: "apply"; readonly objects: readonly ApplyObject[] }
  | {
      readonly id: RequestId;
      readonly op: "delete";
      readonly refs: readonly ObjectRef[];
      /** Refs to objects that do not exist are skipped instead of failing the request. */
      readonly ignoreMissing?: boolean;
    }
  | { readonly id: RequestId; readonly op: "set-topology"; readonly topology: ClusterTopology };

export type LabOp = LabRequest["op"];
const OPS = ["watch", "get", "apply", "delete", "set-topology"] as const;

/** The cluster as JSON: what snapshots, `get` and cluster.json carry. Arrays sorted by key. */
export interface StateBody {
  readonly nodes: readonly ClusterNode[];
  readonly namespaces: readonly ClusterNamespace[];
  readonly pods: readonly ClusterPod[];
  readonly services: readonly ClusterService[];
  readonly policies: readonly ClusterPolicy[];
  readonly topology?: ClusterTopology;
}

export interface AppliedObject {
  readonly kind: ObjectKind;
  readonly namespace?: string;
  readonly name: string;
  readonly action: "created" | "configured" | "unchanged";
  /** As stored: with the uid of a pod and the clusterIPs of a service the server chose. */
  readonly object: ClusterNode | ClusterNamespace | ClusterPod | ClusterService | ClusterPolicy;
}

export interface DeletedObject extends ObjectRef {
  /** Deleted because its namespace or node was. */
  readonly cascade?: true;
}

export type ApplyResult = { readonly revision: number; readonly applied: readonly AppliedObject[] };
export type DeleteResult = { readonly revision: number; readonly deleted: readonly DeletedObject[] };
export type GetResult = { readonly revision: number; readonly state: StateBody };
export type TopologyResult = { readonly revision: number; readonly changed: boolean };

export type Failure = { readonly ok: false; readonly error: string; readonly issues: readonly ApiIssue[] };
/** What a change or query comes to: its result, or every reason it was refused (nothing changed then). */
export type Outcome<R> = ({ readonly ok: true } & R) | Failure;

export type ServerMessage =
  | {
      readonly id: RequestId;
      readonly type: "snapshot";
      readonly revision: number;
      readonly state: StateBody;
    }
  | {
      readonly id: RequestId;
      readonly type: "event";
      readonly revision: number;
      readonly event: ClusterEvent;
    }
  | ({ readonly id: RequestId | null; readonly type: "result" } & (
      ({ readonly ok: true } & (ApplyResult | DeleteResult | GetResult | TopologyResult)) | Failure
    ));

// ---- State body ------------------------------------------------------------------------------

const byKey =
  <T>(key: (o: T) => string) =>
  (a: T, b: T) =>
    key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0;
const nsName = (o: { namespace: string; name: string }): string => `${o.namespace}/${o.name}`;

export function stateBody(s: ClusterSnapshot): StateBody {
  return {
    nodes: [...s.nodes.values()].sort(byKey((n) => n.name)),
    namespaces: [...s.namespaces.values()].sort(byKey((n) => n.name)),
    pods: [...s.pods.values()].sort(byKey(nsName)),
    services: [...s.services.values()].sort(byKey(nsName)),
    policies: [...s.policies.values()].sort(byKey(nsName)),
    ...(s.topology ? { topology: s.topology } : {}),
  };
}

export function stateFromBody(body: StateBody): ClusterState {
  const state = new ClusterState();
  if (body.topology) state.apply({ kind: "topology", type: "upsert", object: body.topology });
  for (const object of body.namespaces) state.apply({ kind: "namespace", type: "upsert", object });
  for (const object of body.nodes) state.apply({ kind: "node", type: "upsert", object });
  for (const object of body.services) state.apply({ kind: "service", type: "upsert", object });
  for (const object of body.policies) state.apply({ kind: "policy", type: "upsert", object });
  for (const object of body.pods) state.apply({ kind: "pod", type: "upsert", object });
  return state;
}

const list = <T extends z.ZodType>(item: T) => z.array(item).default([]);

export const stateBodySchema = z.strictObject({
  nodes: list(nodeSchema),
  namespaces: list(namespaceSchema),
  pods: list(podSchema),
  services: list(serviceSchema),
  policies: list(policySchema),
  topology: topologySchema.optional(),
});

// ---- Framing ---------------------------------------------------------------------------------

export class LineTooLongError extends Error {
  constructor(readonly limit: number) {
    super(`a line longer than ${limit} characters`);
    this.name = "LineTooLongError";
  }
}

/** Splits a stream of text into lines without rescanning what it already holds. */
export class LineBuffer {
  private parts: string[] = [];
  private length = 0;

  constructor(private readonly maxChars: number) {}

  /** The lines `chunk` completes; throws LineTooLongError when an unfinished line passes the limit. */
  push(chunk: string): string[] {
    const lines: string[] = [];
    let start = 0;
    for (let end = chunk.indexOf("\n"); end >= 0; end = chunk.indexOf("\n", start)) {
      this.parts.push(chunk.slice(start, end));
      lines.push(this.parts.join(""));
      this.parts = [];
      this.length = 0;
      start = end + 1;
    }
    if (start < chunk.length) {
      this.parts.push(chunk.slice(start));
      this.length += chunk.length - start;
      if (this.length > this.maxChars) throw new LineTooLongError(this.maxChars);
    }
    for (const line of lines) if (line.length > this.maxChars) throw new LineTooLongError(this.maxChars);
    return lines;
  }

  /** What came after the last newline. */
  rest(): string {
    return this.parts.join("");
  }
}

export const encodeLine = (message: ServerMessage | LabRequest): string => JSON.stringify(message) + "\n";

// ---- Requests (server side) ------------------------------------------------------------------

export type ParsedRequest =
  | { readonly ok: true; readonly request: LabRequest & { readonly checked?: readonly CheckedObject[] } }
  | {
      readonly ok: false;
      readonly id: RequestId | null;
      readonly error: string;
      readonly issues: ApiIssue[];
    };

const requestId = z.union([z.string().min(1).max(256), z.number().int()], {
  error: "must be a non-empty string or a whole number",
});
const envelope = z.looseObject({
  id: requestId,
  op: z.enum(OPS, { error: `must be one of ${OPS.join(", ")}` }),
});
const refSchema = z.strictObject({
  kind: z.enum(OBJECT_KINDS, { error: `must be one of ${OBJECT_KINDS.join(", ")}` }),
  namespace: z.string({ error: "must be a string" }).min(1, "must not be empty").optional(),
  name: z.string({ error: "must be a string" }).min(1, "must not be empty"),
});
const applyEntry = z.strictObject({
  kind: z.enum(OBJECT_KINDS, { error: `must be one of ${OBJECT_KINDS.join(", ")}` }),
  object: z.looseObject({}, { error: "must be a mapping" }),
});
const bodies = {
  watch: z.strictObject({ id: requestId, op: z.literal("watch") }),
  get: z.strictObject({ id: requestId, op: z.literal("get") }),
  apply: z.strictObject({
    id: requestId,
    op: z.literal("apply"),
    objects: z.array(z.unknown(), { error: "must be a list" }),
  }),
  delete: z.strictObject({
    id: requestId,
    op: z.literal("delete"),
    refs: z.array(refSchema, { error: "must be a list" }),
    ignoreMissing: z.boolean({ error: "must be true or false" }).optional(),
  }),
  "set-topology": z.strictObject({ id: requestId, op: z.literal("set-topology"), topology: topologySchema }),
} as const;

const failed = (id: RequestId | null, issues: ApiIssue[]): ParsedRequest => ({
  ok: false,
  id,
  error: summarize(issues),
  issues,
});

/**
 * One issue per line: `objects[3].nodeName: ...` (`list` names what `index` counts: the objects
 * of an apply, the refs of a delete), or `field: ...` for the request itself.
 */
export function summarize(issues: readonly ApiIssue[], list: "objects" | "refs" = "objects"): string {
  return issues
    .map((i) => {
      const where = i.file
        ? `${i.file}${i.line !== undefined ? `:${i.line}:${i.column ?? 1}` : ""}: `
        : i.index !== undefined
          ? `${list}[${i.index}].`
          : "";
      return `${where}${i.field}: ${i.message}`;
    })
    .join("\n");
}

/**
 * Validate one request line. Apply objects are checked one by one, each issue naming the object's
 * index and the field inside it, so a client can point at the manifest line.
 */
export function parseRequest(line: string): ParsedRequest {
  let json: unknown;
  try {
    json = JSON.parse(line);
  } catch (err) {
    return failed(null, [{ field: "(request)", message: `not JSON: ${(err as Error).message}` }]);
  }
  const head = check(envelope, json);
  if (!head.ok) {
    const id = requestId.safeParse((json as { id?: unknown } | null)?.id);
    return failed(id.success ? id.data : null, head.issues);
  }
  const { id, op } = head.value;
  const body = check(bodies[op], json);
  if (!body.ok) return failed(id, body.issues);
  const request = body.value as LabRequest;
  if (request.op !== "apply") return { ok: true, request };

  const issues: ApiIssue[] = [];
  const checked: CheckedObject[] = [];
  request.objects.forEach((entry, index) => {
    const e = check(applyEntry, entry, [], index);
    if (!e.ok) return void issues.push(...e.issues);
    const o = check(applySchemas[e.value.kind], e.value.object, [], index);
    if (!o.ok) return void issues.push(...o.issues);
    checked.push({ kind: e.value.kind, object: o.value } as CheckedObject);
  });
  if (issues.length > 0) return failed(id, issues);
  return { ok: true, request: { ...request, checked } };
}

/** Validate the ApplyObjects a client is about to send, as the server will (see parseRequest). */
export function checkObjects(
  objects: readonly ApplyObject[],
): { ok: true; checked: CheckedObject[] } | { ok: false; issues: ApiIssue[] } {
  const parsed = parseRequest(JSON.stringify({ id: 0, op: "apply", objects }));
  if (!parsed.ok) return { ok: false, issues: parsed.issues };
  return { ok: true, checked: [...(parsed.request.checked ?? [])] };
}

// ---- Server messages (client side) -----------------------------------------------------------

const eventSchema = z.union([
  z.strictObject({ kind: z.literal("node"), type: z.enum(["upsert", "delete"]), object: nodeSchema }),
  z.strictObject({ kind: z.literal("pod"), type: z.enum(["upsert", "delete"]), object: podSchema }),
  z.strictObject({
    kind: z.literal("namespace"),
    type: z.enum(["upsert", "delete"]),
    object: namespaceSchema,
  }),
  z.strictObject({ kind: z.literal("service"), type: z.enum(["upsert", "delete"]), object: serviceSchema }),
  z.strictObject({ kind: z.literal("policy"), type: z.enum(["upsert", "delete"]), object: policySchema }),
  z.strictObject({ kind: z.literal("topology"), type: z.literal("upsert"), object: topologySchema }),
]);

const revision = z.number().int().nonnegative();
const issueSchema = z.looseObject({
  index: z.number().int().optional(),
  field: z.string(),
  message: z.string(),
  file: z.string().optional(),
  line: z.number().int().optional(),
  column: z.number().int().optional(),
});

const serverMessageSchema = z.union([
  z.strictObject({ id: requestId, type: z.literal("snapshot"), revision, state: stateBodySchema }),
  z.strictObject({ id: requestId, type: z.literal("event"), revision, event: eventSchema }),
  z.looseObject({
    id: requestId.nullable(),
    type: z.literal("result"),
    ok: z.literal(false),
    error: z.string(),
    issues: z.array(issueSchema).default([]),
  }),
  z.looseObject({ id: requestId, type: z.literal("result"), ok: z.literal(true), revision }),
]);

/** Validate one line from the server; the message, or why it is not one. */
export function parseServerMessage(
  line: string,
): { ok: true; message: ServerMessage } | { ok: false; error: string } {
  let json: unknown;
  try {
    json = JSON.parse(line);
  } catch (err) {
    return { ok: false, error: `not JSON: ${(err as Error).message}` };
  }
  const r = check(serverMessageSchema, json);
  if (!r.ok) return { ok: false, error: summarize(r.issues.slice(0, 3)) };
  return { ok: true, message: r.value as ServerMessage };
}

const appliedSchema = z.looseObject({
  kind: z.enum(OBJECT_KINDS),
  namespace: z.string().optional(),
  name: z.string(),
  action: z.enum(["created", "configured", "unchanged"]),
  object: z.looseObject({}),
});
const deletedSchema = z.looseObject({
  kind: z.enum(OBJECT_KINDS),
  namespace: z.string().optional(),
  name: z.string(),
  cascade: z.literal(true).optional(),
});

/** The shape of a successful answer to each op, checked by clients before they trust it. */
export const resultSchemas = {
  apply: z.looseObject({ revision, applied: z.array(appliedSchema) }),
  delete: z.looseObject({ revision, deleted: z.array(deletedSchema) }),
  get: z.looseObject({ revision, state: stateBodySchema }),
  "set-topology": z.looseObject({ revision, changed: z.boolean() }),
} as const;
