import { readFile } from "node:fs/promises";
import { isDeepStrictEqual } from "node:util";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { ClusterState, Listeners } from "./memory.js";
import type { ClusterEvent, ClusterSnapshot, ClusterSource, Unsubscribe } from "./types.js";
import { serviceKey } from "./types.js";

// A cluster described by a YAML state file (and the cluster-conf.yaml beside it), re-read when it
// changes. Whoever owns the cluster's truth writes the file — the lab does; an operator can too —
// and every agent reading it sees the change as events, like informer updates.

const labels = z.record(z.string(), z.string()).default({});

const stateSchema = z.strictObject({
  nodes: z
    .array(
      z.strictObject({
        name: z.string().min(1),
        internalIPs: z.array(z.string()).default([]),
        podCIDRs: z.array(z.string()).default([]),
        labels,
      }),
    )
    .default([]),
  namespaces: z.array(z.strictObject({ name: z.string().min(1), labels })).default([]),
  pods: z
    .array(
      z.strictObject({
        uid: z.string().min(1),
        name: z.string().min(1),
        namespace: z.string().min(1),
        nodeName: z.string().optional(),
        ips: z.array(z.string()).default([]),
        hostNetwork: z.boolean().default(false),
        labels,
        annotations: labels,
        phase: z.enum(["Pending", "Running", "Succeeded", "Failed", "Unknown"]).default("Running"),
        ready: z.boolean().default(true),
        serviceAccount: z.string().default("default"),
        terminating: z.boolean().default(false),
        containerPorts: z
          .array(
            z.strictObject({
              name: z.string().optional(),
              containerPort: z.number().int(),
              protocol: z.enum(["TCP", "UDP", "SCTP"]).default("TCP"),
            }),
          )
          .optional(),
      }),
    )
    .default([]),
  services: z
    .array(
      z.strictObject({
        namespace: z.string().min(1),
        name: z.string().min(1),
        clusterIPs: z.array(z.string()).default([]),
        ports: z
          .array(
            z.strictObject({
              name: z.string().optional(),
              port: z.number().int(),
              targetPort: z.union([z.number().int(), z.string()]),
              protocol: z.enum(["TCP", "UDP", "SCTP"]).default("TCP"),
            }),
          )
          .default([]),
        selector: z.record(z.string(), z.string()).optional(),
      }),
    )
    .default([]),
  policies: z
    .array(z.strictObject({ namespace: z.string(), name: z.string(), spec: z.unknown() }))
    .default([]),
});

export type ClusterStateFile = z.input<typeof stateSchema>;

export interface FileSourceOptions {
  readonly statePath: string;
  readonly topologyPath?: string;
  /** How often to look for changes. */
  readonly pollMs?: number;
  /** Told about a file that could not be used; the previous view is kept. */
  readonly onError?: (message: string) => void;
}

export class FileClusterSource implements ClusterSource {
  private readonly state = new ClusterState();
  private readonly listeners = new Listeners();
  private timer: NodeJS.Timeout | undefined;
  private lastText = { state: "", topology: "" };
  private loading: Promise<void> = Promise.resolve();

  constructor(private readonly opts: FileSourceOptions) {}

  async start(): Promise<void> {
    await this.reload(true);
    this.timer = setInterval(() => {
      this.loading = this.loading.then(() => this.reload(false));
    }, this.opts.pollMs ?? 500);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.loading;
  }

  snapshot(): ClusterSnapshot {
    return this.state.snapshot();
  }

  subscribe(listener: (event: ClusterEvent) => void): Unsubscribe {
    return this.listeners.add(listener);
  }

  /** Re-read now (tests and the lab call this instead of waiting for the poll). */
  async refresh(): Promise<void> {
    this.loading = this.loading.then(() => this.reload(false));
    await this.loading;
  }

  private async reload(first: boolean): Promise<void> {
    const stateText = await readOrEmpty(this.opts.statePath);
    if (stateText !== this.lastText.state) {
      const events = this.parseState(stateText, first);
      if (events) {
        this.lastText.state = stateText;
        for (const e of events) this.emit(e);
      }
    }
    if (this.opts.topologyPath) {
      const topoText = await readOrEmpty(this.opts.topologyPath);
      if (topoText !== this.lastText.topology) {
        this.lastText.topology = topoText;
        this.emit({
          kind: "topology",
          type: "upsert",
          object: { text: topoText, source: this.opts.topologyPath },
        });
      }
    }
  }

  private emit(event: ClusterEvent): void {
    this.state.apply(event);
    this.listeners.emit(event);
  }

  /** The events that turn the current view into the file's; undefined when the file is unusable. */
  private parseState(text: string, first: boolean): ClusterEvent[] | undefined {
    let doc: unknown;
    try {
      doc = text.trim() === "" ? {} : parseYaml(text);
    } catch (err) {
      this.fail(`${this.opts.statePath}: not YAML: ${(err as Error).message}`, first);
      return undefined;
    }
    const parsed = stateSchema.safeParse(doc ?? {});
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      this.fail(
        `${this.opts.statePath}: ${issue?.path.join(".") ?? ""}: ${issue?.message ?? "invalid"}`,
        first,
      );
      return undefined;
    }
    const next = parsed.data;
    const events: ClusterEvent[] = [];
    diff(this.state.namespaces, new Map(next.namespaces.map((n) => [n.name, n])), "namespace", events);
    diff(this.state.nodes, new Map(next.nodes.map((n) => [n.name, n])), "node", events);
    diff(this.state.services, new Map(next.services.map((s) => [serviceKey(s), s])), "service", events);
    diff(this.state.policies, new Map(next.policies.map((p) => [serviceKey(p), p])), "policy", events);
    diff(this.state.pods, new Map(next.pods.map((p) => [p.uid, p])), "pod", events);
    return events;
  }

  private fail(message: string, first: boolean): void {
    if (first) throw new Error(message);
    this.opts.onError?.(message);
  }
}

function diff<K, V>(
  current: ReadonlyMap<K, V>,
  next: ReadonlyMap<K, V>,
  kind: ClusterEvent["kind"],
  out: ClusterEvent[],
): void {
  for (const [key, value] of next) {
    if (!isDeepStrictEqual(current.get(key), value))
      out.push({ kind, type: "upsert", object: value } as ClusterEvent);
  }
  for (const [key, value] of current) {
    if (!next.has(key)) out.push({ kind, type: "delete", object: value } as ClusterEvent);
  }
}

async function readOrEmpty(path: string): Promise<string> {
  try {
    return await readFile(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return "";
    throw err;
  }
}
