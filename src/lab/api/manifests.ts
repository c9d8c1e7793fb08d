import { isMap, isScalar, isSeq, LineCounter, parseAllDocuments } from "yaml";
import type { Node as YamlNode } from "yaml";
import { z } from "zod";
import type { ConfigIssue, Result } from "../../configfile/issues.js";
import type { ApplyObject, ObjectRef } from "./protocol.js";
import { checkObjects } from "./protocol.js";
import type { ApiIssue, ObjectKind } from "./schema.js";
import { check, formatFieldPath, parseFieldPath } from "./schema.js";

// Kubernetes-style manifests (`offmesh lab apply -f`): multi-document YAML of v1 Namespace, Node,
// Pod, Service and security.istio.io AuthorizationPolicy, turned into the lab API's objects. Every
// problem is a ConfigIssue at the line of the offending field, including those the API server
// finds later (a node that does not exist): each object remembers where its fields came from.

type Path = (string | number)[];

export const SUPPORTED_KINDS = [
  "v1 Namespace",
  "v1 Node",
  "v1 Pod",
  "v1 Service",
  "security.istio.io/v1 AuthorizationPolicy",
] as const;

/** apiVersion and kind of each supported manifest → the lab API's kind. */
const KINDS: Record<string, { apiVersions: readonly string[]; kind: ObjectKind }> = {
  Namespace: { apiVersions: ["v1"], kind: "namespace" },
  Node: { apiVersions: ["v1"], kind: "node" },
  Pod: { apiVersions: ["v1"], kind: "pod" },
  Service: { apiVersions: ["v1"], kind: "service" },
  AuthorizationPolicy: {
    apiVersions: ["security.istio.io/v1", "security.istio.io/v1beta1"],
    kind: "policy",
  },
};

/** An object read from a manifest, and how to point at the line any of its fields came from. */
export interface LocatedObject {
  readonly object: ApplyObject;
  readonly ref: ObjectRef;
  /** The issue about `field` of the object (`nodeName`, `ips[0]`), at its line in the manifest. */
  locate(field: string, message: string): ConfigIssue;
}

export interface LocatedRef {
  readonly ref: ObjectRef;
  locate(field: string, message: string): ConfigIssue;
}

/** One object's document (or `items[i]` of a List) inside the file. */
interface Item {
  readonly value: unknown;
  readonly root: unknown;
  readonly prefix: Path;
}

const MAX_SYNTAX_ERRORS = 5;

class ManifestFile {
  readonly issues: ConfigIssue[] = [];
  readonly items: Item[] = [];
  private readonly lines = new LineCounter();

  constructor(
    readonly file: string,
    text: string,
  ) {
    const docs = parseAllDocuments(text, { lineCounter: this.lines, prettyErrors: false });
    for (const doc of docs) {
      for (const err of doc.errors.slice(0, MAX_SYNTAX_ERRORS)) {
        const pos = this.lines.linePos(err.pos[0]);
        this.issues.push({
          file,
          line: pos.line,
          column: pos.col,
          field: "(yaml)",
          message: `not well-formed YAML: ${err.message.split("\n")[0] ?? err.code}`,
        });
      }
      if (doc.errors.length > 0 || doc.contents === null) continue;
      const value: unknown = doc.toJS();
      if (value === null || value === undefined) continue;
      const list = asRecord(value);
      if (list?.kind === "List" && Array.isArray(list.items)) {
        list.items.forEach((v: unknown, i) =>
          this.items.push({ value: v, root: doc.contents, prefix: ["items", i] }),
        );
      } else {
        this.items.push({ value, root: doc.contents, prefix: [] });
      }
    }
    if (this.issues.length === 0 && this.items.length === 0)
      this.issues.push({ file, field: "(file)", message: "contains no objects" });
  }

  /**
   * An issue at `path` of the item, or at the nearest enclosing field that is written in the file;
   * `atKey` points at the field's key instead of its value (for fields that should not be there).
   */
  issueAt(item: Item, path: Path, message: string, atKey = false): ConfigIssue {
    const full = [...item.prefix, ...path];
    const node = nodeAt(item.root, full, atKey);
    const offset = node?.range?.[0];
    const field = formatFieldPath(full) || "(document)";
    if (offset === undefined) return { file: this.file, field, message };
    const pos = this.lines.linePos(offset);
    return { file: this.file, line: pos.line, column: pos.col, field, message };
  }
}

/** The deepest node along `path` that exists (a missing field is reported at its parent). */
function nodeAt(root: unknown, path: Path, atKey: boolean): YamlNode | undefined {
  let node = root as YamlNode | undefined;
  for (const [i, seg] of path.entries()) {
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(seg));
      if (!pair) break;
      const value = pair.value as YamlNode | null;
      // `nodeName:` with nothing after it: the key is where the user looks.
      node = value?.range && !(atKey && i === path.length - 1) ? value : (pair.key as YamlNode);
    } else if (isSeq(node) && typeof seg === "number") {
      const item = node.items[seg] as YamlNode | undefined;
      if (!item) break;
      node = item;
    } else break;
  }
  return node;
}

function asRecord(v: unknown): Record<string, unknown> | undefined {
  return typeof v === "object" && v !== null && !Array.isArray(v)
    ? (v as Record<string, unknown>)
    : undefined;
}

// ---- Schemas of the manifests (structure only; values are checked as lab API objects) -----------
// Fields offmesh has no use for are allowed (real manifests carry containers, images, ...), but
// a key a letter or two away from one offmesh reads is reported: `nodname` would otherwise leave
// the pod silently unscheduled.

const str = z.string();
const strings = z.record(z.string(), z.string()).nullish();

const metadataSchema = z.looseObject({
  name: str,
  namespace: str.nullish(),
  labels: strings,
  annotations: strings,
  uid: str.nullish(),
  deletionTimestamp: z.unknown().optional(),
});
const METADATA_KEYS = ["name", "namespace", "labels", "annotations", "uid", "deletionTimestamp"];
const TOP_KEYS = ["apiVersion", "kind", "metadata", "spec", "status"];

const podSchema = z.looseObject({
  metadata: metadataSchema,
  spec: z
    .looseObject({
      nodeName: str.nullish(),
      serviceAccountName: str.nullish(),
      serviceAccount: str.nullish(),
      hostNetwork: z.boolean().nullish(),
      containers: z
        .array(
          z.looseObject({
            ports: z
              .array(
                z.looseObject({ name: str.nullish(), containerPort: z.number(), protocol: str.nullish() }),
              )
              .nullish(),
          }),
        )
        .nullish(),
    })
    .nullish(),
  status: z
    .looseObject({
      podIP: str.nullish(),
      podIPs: z.array(z.looseObject({ ip: str })).nullish(),
      phase: str.nullish(),
      conditions: z.array(z.looseObject({ type: str, status: str })).nullish(),
    })
    .nullish(),
});
const POD_SPEC_KEYS = ["nodeName", "serviceAccountName", "serviceAccount", "hostNetwork", "containers"];
const POD_STATUS_KEYS = ["podIP", "podIPs", "phase", "conditions"];

const serviceSchema = z.looseObject({
  metadata: metadataSchema,
  spec: z
    .looseObject({
      clusterIP: str.nullish(),
      clusterIPs: z.array(str).nullish(),
      ports: z
        .array(
          z.looseObject({
            name: str.nullish(),
            port: z.number(),
            targetPort: z.union([z.number(), str]).nullish(),
            protocol: str.nullish(),
          }),
        )
        .nullish(),
      selector: strings,
    })
    .nullish(),
});
const SERVICE_SPEC_KEYS = ["clusterIP", "clusterIPs", "ports", "selector"];
const SERVICE_PORT_KEYS = ["name", "port", "targetPort", "protocol"];

const nodeSchema = z.looseObject({
  metadata: metadataSchema,
  spec: z.looseObject({ podCIDR: str.nullish(), podCIDRs: z.array(str).nullish() }).nullish(),
  status: z
    .looseObject({ addresses: z.array(z.looseObject({ type: str, address: str })).nullish() })
    .nullish(),
});

const namespaceSchema = z.looseObject({ metadata: metadataSchema });
const policySchema = z.looseObject({
  metadata: metadataSchema,
  spec: z.looseObject({}).nullish(),
});

/** What a manifest turned into: the lab API object and where each of its fields is in the file. */
interface Converted {
  readonly object: ApplyObject;
  /** Object field (`ips[0]`) → path in the document (`status.podIPs[0].ip`). */
  readonly fields: ReadonlyMap<string, Path>;
}

type Report = (path: Path, message: string, atKey?: boolean) => void;

function typos(value: unknown, known: readonly string[], at: Path, report: Report): void {
  const rec = asRecord(value);
  if (!rec) return;
  for (const key of Object.keys(rec)) {
    if (known.includes(key)) continue;
    const near = known.find((k) => {
      const d = editDistance(k.toLowerCase(), key.toLowerCase());
      return d <= (k.length <= 4 ? 1 : 2);
    });
    if (near) report([...at, key], `unknown field "${key}" (did you mean "${near}"?)`, true);
  }
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++)
      row[j] = Math.min(
        (prev[j] ?? 0) + 1,
        (row[j - 1] ?? 0) + 1,
        (prev[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    prev = row;
  }
  return prev[b.length] ?? 0;
}

function metadataFields(fields: Map<string, Path>, namespaced: boolean): void {
  fields.set("name", ["metadata", "name"]);
  fields.set("labels", ["metadata", "labels"]);
  if (namespaced) fields.set("namespace", ["metadata", "namespace"]);
}

const labelsOf = (v: Record<string, string> | null | undefined): Record<string, string> => ({ ...(v ?? {}) });

function convertPod(m: z.output<typeof podSchema>, report: Report): Converted {
  const fields = new Map<string, Path>();
  metadataFields(fields, true);
  fields.set("annotations", ["metadata", "annotations"]);
  fields.set("uid", ["metadata", "uid"]);
  fields.set("terminating", ["metadata", "deletionTimestamp"]);
  const spec = m.spec ?? {};
  const status = m.status ?? {};
  fields.set("nodeName", ["spec", "nodeName"]);
  fields.set("hostNetwork", ["spec", "hostNetwork"]);
  fields.set("serviceAccount", [
    "spec",
    spec.serviceAccountName == null && spec.serviceAccount != null ? "serviceAccount" : "serviceAccountName",
  ]);
  fields.set("phase", ["status", "phase"]);
  fields.set("ready", ["status", "conditions"]);

  let ips: string[] = [];
  if (status.podIPs) {
    ips = status.podIPs.map((p) => p.ip);
    fields.set("ips", ["status", "podIPs"]);
    ips.forEach((_, i) => fields.set(`ips[${i}]`, ["status", "podIPs", i, "ip"]));
    if (status.podIP && status.podIP !== ips[0])
      report(
        ["status", "podIP"],
        `${status.podIP} is not status.podIPs[0] (${ips[0] ?? "none"}); they must agree`,
      );
  } else if (status.podIP) {
    ips = [status.podIP];
    fields.set("ips", ["status", "podIP"]);
    fields.set("ips[0]", ["status", "podIP"]);
  } else {
    fields.set("ips", ["status", "podIPs"]);
  }
  if (spec.serviceAccountName && spec.serviceAccount && spec.serviceAccount !== spec.serviceAccountName)
    report(
      ["spec", "serviceAccount"],
      `"${spec.serviceAccount}" is not spec.serviceAccountName ("${spec.serviceAccountName}"); they must agree`,
    );

  const containerPorts: { name?: string; containerPort: number; protocol: string }[] = [];
  fields.set("containerPorts", ["spec", "containers"]);
  (spec.containers ?? []).forEach((c, ci) =>
    (c.ports ?? []).forEach((p, pi) => {
      fields.set(`containerPorts[${containerPorts.length}]`, ["spec", "containers", ci, "ports", pi]);
      containerPorts.push({
        ...(p.name != null ? { name: p.name } : {}),
        containerPort: p.containerPort,
        protocol: p.protocol ?? "TCP",
      });
    }),
  );
  const ready = status.conditions?.find((c) => c.type === "Ready");
  const object = {
    name: m.metadata.name,
    namespace: m.metadata.namespace ?? "default",
    ...(m.metadata.uid != null ? { uid: m.metadata.uid } : {}),
    ...(spec.nodeName != null ? { nodeName: spec.nodeName } : {}),
    ips,
    hostNetwork: spec.hostNetwork ?? false,
    labels: labelsOf(m.metadata.labels),
    annotations: labelsOf(m.metadata.annotations),
    ...(status.phase != null ? { phase: status.phase } : {}),
    ready: ready ? ready.status === "True" : true,
    serviceAccount: spec.serviceAccountName ?? spec.serviceAccount ?? "default",
    terminating: m.metadata.deletionTimestamp != null,
    ...(containerPorts.length > 0 ? { containerPorts } : {}),
  };
  // The strings of phase and protocols are checked as lab API objects, after conversion.
  return { object: { kind: "pod", object } as ApplyObject, fields };
}

function convertService(m: z.output<typeof serviceSchema>, report: Report): Converted {
  const fields = new Map<string, Path>();
  metadataFields(fields, true);
  const spec = m.spec ?? {};
  fields.set("ports", ["spec", "ports"]);
  fields.set("selector", ["spec", "selector"]);
  let clusterIPs: string[] | undefined;
  const headless =
    spec.clusterIP === "None" || (spec.clusterIPs?.length === 1 && spec.clusterIPs[0] === "None");
  if (headless) {
    clusterIPs = [];
    fields.set("clusterIPs", ["spec", spec.clusterIPs ? "clusterIPs" : "clusterIP"]);
  } else if (spec.clusterIPs && spec.clusterIPs.length > 0) {
    clusterIPs = spec.clusterIPs;
    fields.set("clusterIPs", ["spec", "clusterIPs"]);
    clusterIPs.forEach((_, i) => fields.set(`clusterIPs[${i}]`, ["spec", "clusterIPs", i]));
    if (spec.clusterIP && spec.clusterIP !== clusterIPs[0])
      report(
        ["spec", "clusterIP"],
        `${spec.clusterIP} is not spec.clusterIPs[0] (${clusterIPs[0]}); they must agree`,
      );
  } else if (spec.clusterIP) {
    clusterIPs = [spec.clusterIP];
    fields.set("clusterIPs", ["spec", "clusterIP"]);
    fields.set("clusterIPs[0]", ["spec", "clusterIP"]);
  } else {
    fields.set("clusterIPs", ["spec"]);
  }
  const object = {
    namespace: m.metadata.namespace ?? "default",
    name: m.metadata.name,
    ...(clusterIPs !== undefined ? { clusterIPs } : {}),
    ports: (spec.ports ?? []).map((p, i) => {
      // A targetPort left out is the port: a problem with it is the port's.
      if (p.targetPort == null) fields.set(`ports[${i}].targetPort`, ["spec", "ports", i, "port"]);
      return {
        ...(p.name != null ? { name: p.name } : {}),
        port: p.port,
        targetPort: p.targetPort ?? p.port,
        protocol: p.protocol ?? "TCP",
      };
    }),
    ...(spec.selector != null ? { selector: { ...spec.selector } } : {}),
  };
  return { object: { kind: "service", object } as ApplyObject, fields };
}

function convertNode(m: z.output<typeof nodeSchema>): Converted {
  const fields = new Map<string, Path>();
  metadataFields(fields, false);
  const internalIPs: string[] = [];
  fields.set("internalIPs", ["status", "addresses"]);
  (m.status?.addresses ?? []).forEach((a, i) => {
    if (a.type !== "InternalIP") return;
    fields.set(`internalIPs[${internalIPs.length}]`, ["status", "addresses", i, "address"]);
    internalIPs.push(a.address);
  });
  let podCIDRs: string[] = [];
  if (m.spec?.podCIDRs) {
    podCIDRs = m.spec.podCIDRs;
    fields.set("podCIDRs", ["spec", "podCIDRs"]);
  } else if (m.spec?.podCIDR) {
    podCIDRs = [m.spec.podCIDR];
    fields.set("podCIDRs", ["spec", "podCIDR"]);
    fields.set("podCIDRs[0]", ["spec", "podCIDR"]);
  } else {
    fields.set("podCIDRs", ["spec", "podCIDRs"]);
  }
  const object = { name: m.metadata.name, internalIPs, podCIDRs, labels: labelsOf(m.metadata.labels) };
  return { object: { kind: "node", object }, fields };
}

function convertNamespace(m: z.output<typeof namespaceSchema>): Converted {
  const fields = new Map<string, Path>();
  metadataFields(fields, false);
  return {
    object: { kind: "namespace", object: { name: m.metadata.name, labels: labelsOf(m.metadata.labels) } },
    fields,
  };
}

function convertPolicy(m: z.output<typeof policySchema>): Converted {
  const fields = new Map<string, Path>();
  metadataFields(fields, true);
  fields.set("spec", ["spec"]);
  fields.set("annotations", ["metadata", "annotations"]);
  const object = {
    namespace: m.metadata.namespace ?? "default",
    name: m.metadata.name,
    spec: m.spec ?? {},
    ...(m.metadata.annotations != null ? { annotations: { ...m.metadata.annotations } } : {}),
  };
  return { object: { kind: "policy", object }, fields };
}

/** apiVersion/kind of an item → the lab API kind, or undefined after reporting why not. */
function kindOf(value: unknown, report: Report): ObjectKind | undefined {
  const rec = asRecord(value);
  if (!rec) {
    report([], "must be a mapping (a Kubernetes object)");
    return undefined;
  }
  const { apiVersion, kind } = rec;
  if (typeof kind !== "string" || kind === "") {
    report(["kind"], kind === undefined ? "is required" : "must be a string");
    return undefined;
  }
  const known = KINDS[kind];
  if (!known) {
    report(
      ["kind"],
      `${JSON.stringify(kind)} is not supported here; supported: ${SUPPORTED_KINDS.join(", ")}`,
    );
    return undefined;
  }
  if (typeof apiVersion !== "string" || !known.apiVersions.includes(apiVersion)) {
    report(
      ["apiVersion"],
      `${apiVersion === undefined ? "is required" : `${JSON.stringify(apiVersion)} is not`}; ${kind} is ${known.apiVersions.join(" or ")}`,
    );
    return undefined;
  }
  return known.kind;
}

/** The object field's issue at its place in the document, via the longest known prefix of the field. */
function locator(file: ManifestFile, item: Item, fields: ReadonlyMap<string, Path>) {
  return (field: string, message: string): ConfigIssue => {
    const segs = parseFieldPath(field);
    for (let n = segs.length; n > 0; n--) {
      const base = fields.get(formatFieldPath(segs.slice(0, n)));
      if (base) return file.issueAt(item, [...base, ...segs.slice(n)], message);
    }
    return file.issueAt(item, segs, message);
  };
}

/**
 * Read manifests: every object, or every issue of the file (structure, values, duplicates) with
 * its line. Checks what can be checked without the cluster; the API server checks the rest
 * (references, addresses in use) and `locateIssues` places its answer in the file.
 */
export function parseManifests(text: string, file: string): Result<LocatedObject[]> {
  const mf = new ManifestFile(file, text);
  const issues = [...mf.issues];
  const out: LocatedObject[] = [];
  for (const item of mf.items) {
    const report: Report = (path, message, atKey) => void issues.push(mf.issueAt(item, path, message, atKey));
    const kind = kindOf(item.value, report);
    if (!kind) continue;
    typos(item.value, TOP_KEYS, [], report);
    const rec = asRecord(item.value) ?? {};
    typos(rec.metadata, METADATA_KEYS, ["metadata"], report);
    const converted = convertItem(kind, item.value, report);
    if (!converted) continue;
    if (kind === "pod") {
      typos(asRecord(rec.spec), POD_SPEC_KEYS, ["spec"], report);
      typos(asRecord(rec.status), POD_STATUS_KEYS, ["status"], report);
    }
    if (kind === "service") {
      const spec = asRecord(rec.spec);
      typos(spec, SERVICE_SPEC_KEYS, ["spec"], report);
      if (Array.isArray(spec?.ports))
        spec.ports.forEach((p, i) => typos(p, SERVICE_PORT_KEYS, ["spec", "ports", i], report));
    }
    const locate = locator(mf, item, converted.fields);
    const checked = checkObjects([converted.object]);
    if (!checked.ok) {
      const located = checked.issues.map((i) => locate(i.field, i.message));
      const said = new Set<string>();
      for (const i of located) {
        const id = `${i.line}:${i.column}:${i.field}:${i.message}`;
        if (!said.has(id)) issues.push(i);
        said.add(id);
      }
      continue;
    }
    const object = checked.checked[0] as ApplyObject;
    out.push({ object, ref: refOf(object), locate });
  }
  // The same object twice: the API server would refuse the request; say where both are.
  const first = new Map<string, LocatedObject>();
  for (const o of out) {
    const id = describe(o.ref);
    const earlier = first.get(id);
    if (!earlier) first.set(id, o);
    else {
      const at = earlier.locate("name", "");
      issues.push(o.locate("name", `${id} is also defined at line ${at.line ?? "?"}; give each object once`));
    }
  }
  return issues.length > 0 ? { ok: false, issues } : { ok: true, value: out };
}

function convertItem(kind: ObjectKind, value: unknown, report: Report): Converted | undefined {
  const parse = <S extends z.ZodType>(schema: S): z.output<S> | undefined => {
    const r = check(schema, value);
    if (!r.ok) for (const i of r.issues) report(parseFieldPath(i.field), i.message);
    return r.ok ? r.value : undefined;
  };
  switch (kind) {
    case "pod": {
      const m = parse(podSchema);
      return m && convertPod(m, report);
    }
    case "service": {
      const m = parse(serviceSchema);
      return m && convertService(m, report);
    }
    case "node": {
      const m = parse(nodeSchema);
      return m && convertNode(m);
    }
    case "namespace": {
      const m = parse(namespaceSchema);
      return m && convertNamespace(m);
    }
    case "policy": {
      const m = parse(policySchema);
      return m && convertPolicy(m);
    }
  }
}

const NAMESPACED: ReadonlySet<ObjectKind> = new Set(["pod", "service", "policy"]);

function refOf(o: ApplyObject): ObjectRef {
  const name = o.object.name;
  if (!NAMESPACED.has(o.kind)) return { kind: o.kind, name };
  return { kind: o.kind, namespace: (o.object as { namespace: string }).namespace, name };
}

function describe(ref: ObjectRef): string {
  return `${ref.kind} ${ref.namespace !== undefined ? `${ref.namespace}/` : ""}${ref.name}`;
}

/**
 * The objects a manifest names, for `lab delete -f`: only apiVersion, kind, metadata.name and
 * metadata.namespace are read, as kubectl does, so a manifest that no longer validates can still
 * be deleted.
 */
export function parseManifestRefs(text: string, file: string): Result<LocatedRef[]> {
  const mf = new ManifestFile(file, text);
  const issues = [...mf.issues];
  const out: LocatedRef[] = [];
  const identity = z.looseObject({
    metadata: z.looseObject({ name: str.min(1), namespace: str.min(1).nullish() }),
  });
  for (const item of mf.items) {
    const report: Report = (path, message, atKey) => void issues.push(mf.issueAt(item, path, message, atKey));
    const kind = kindOf(item.value, report);
    if (!kind) continue;
    const r = check(identity, item.value);
    if (!r.ok) {
      for (const i of r.issues) report(parseFieldPath(i.field), i.message);
      continue;
    }
    const { name, namespace } = r.value.metadata;
    const ref: ObjectRef = NAMESPACED.has(kind)
      ? { kind, namespace: namespace ?? "default", name }
      : { kind, name };
    const fields = new Map<string, Path>([
      ["name", ["metadata", "name"]],
      ["namespace", ["metadata", "namespace"]],
    ]);
    out.push({ ref, locate: locator(mf, item, fields) });
  }
  return issues.length > 0 ? { ok: false, issues } : { ok: true, value: out };
}

/**
 * The API server's answer to a request made of `sent` (issues naming `objects[i]` and a field),
 * as issues in the manifest; issues about the request as a whole are kept without a line.
 */
export function locateIssues(
  sent: readonly { locate(field: string, message: string): ConfigIssue }[],
  issues: readonly ApiIssue[],
  file: string,
): ConfigIssue[] {
  return issues.map((i) => {
    const o = i.index !== undefined ? sent[i.index] : undefined;
    if (o) return o.locate(i.field, i.message);
    return {
      file: i.file ?? file,
      ...(i.line !== undefined ? { line: i.line, column: i.column ?? 1 } : {}),
      field: i.field,
      message: i.message,
    };
  });
}
