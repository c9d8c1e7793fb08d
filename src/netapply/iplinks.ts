import { TUNNEL } from "../netplan/constants.js";
import type { Link, LinkSetting } from "../netplan/types.js";
import type { Change } from "./types.js";
import { ApplyError } from "./types.js";

// Links and their addresses: parse `ip -json -d addr show`, compare with the plan, and produce the
// `ip -batch` lines that converge them. Offmesh owns the links named in TUNNEL, on the host and in
// the ztunnel pod; other links only ever get the MTU a LinkSetting asks for. Pure: no I/O.

export const OWNED_LINK_NAMES: ReadonlySet<string> = new Set([
  TUNNEL.inbound.hostLink,
  TUNNEL.outbound.hostLink,
  TUNNEL.inbound.podLink,
  TUNNEL.outbound.podLink,
]);

export interface KernelLink {
  readonly name: string;
  readonly ifindex: number;
  /** linkinfo.info_kind: vxlan, geneve, veth …; undefined for links without one (lo). */
  readonly kind?: string;
  readonly vni?: number;
  readonly remote?: string;
  readonly dstport?: number;
  readonly mtu: number;
  readonly up: boolean;
  /** For a veth whose peer is in another namespace: the peer's ifindex there, and that namespace's id. */
  readonly peerIfindex?: number;
  readonly peerNetnsid?: number;
  /** For a veth whose peer is in the same namespace: the peer's name (deleting either end deletes both). */
  readonly peerName?: string;
  /** `addr/prefixlen`, lower-case; IPv6 link-local addresses (which the kernel adds itself) left out. */
  readonly addresses: readonly string[];
}

type Json = Record<string, unknown>;

const num = (v: unknown): number | undefined => (typeof v === "number" ? v : undefined);
const str = (v: unknown): string | undefined => (typeof v === "string" ? v : undefined);

function parseAddresses(raw: unknown): string[] {
  if (!Array.isArray(raw)) return [];
  const out: string[] = [];
  for (const a of raw as Json[]) {
    const local = str(a.local);
    const len = num(a.prefixlen);
    if (local === undefined || len === undefined) continue;
    if (a.family === "inet6" && a.scope === "link") continue;
    out.push(`${local.toLowerCase()}/${len}`);
  }
  return out;
}

/** One entry of `ip -json -d addr show`: the link, its tunnel parameters, its addresses. */
export function parseLink(raw: Json): KernelLink {
  const info = (typeof raw.linkinfo === "object" && raw.linkinfo !== null ? raw.linkinfo : {}) as Json;
  const data = (typeof info.info_data === "object" && info.info_data !== null ? info.info_data : {}) as Json;
  const kind = str(info.info_kind);
  const vni = num(data.id);
  const remote = str(data.remote) ?? str(data.remote6);
  const dstport = num(data.port) ?? num(data.dstport);
  const peerIfindex = num(raw.link_index);
  const peerNetnsid = num(raw.link_netnsid);
  const peerName = kind === "veth" ? str(raw.link) : undefined;
  return {
    name: str(raw.ifname) ?? "",
    ifindex: num(raw.ifindex) ?? 0,
    ...(kind !== undefined ? { kind } : {}),
    ...(vni !== undefined ? { vni } : {}),
    ...(remote !== undefined ? { remote: remote.toLowerCase() } : {}),
    ...(dstport !== undefined ? { dstport } : {}),
    mtu: num(raw.mtu) ?? 0,
    up: Array.isArray(raw.flags) && raw.flags.includes("UP"),
    ...(peerIfindex !== undefined ? { peerIfindex } : {}),
    ...(peerNetnsid !== undefined ? { peerNetnsid } : {}),
    ...(peerName !== undefined ? { peerName } : {}),
    addresses: parseAddresses(raw.addr_info),
  };
}

export function parseLinks(json: string): KernelLink[] {
  const parsed: unknown = json.trim() === "" ? [] : JSON.parse(json);
  if (!Array.isArray(parsed)) throw new ApplyError("link", `ip -json addr show printed ${json.slice(0, 80)}`);
  return parsed.filter((r): r is Json => typeof r === "object" && r !== null).map(parseLink);
}

/** A pair's two ends, each in the other's namespace, each naming the other's ifindex. */
export function vethPaired(host: KernelLink, pod: KernelLink): boolean {
  return (
    host.kind === "veth" &&
    pod.kind === "veth" &&
    host.peerNetnsid !== undefined &&
    pod.peerNetnsid !== undefined &&
    host.peerIfindex === pod.ifindex &&
    pod.peerIfindex === host.ifindex
  );
}

function withPrefix(addr: string): string {
  const a = addr.toLowerCase();
  return a.includes("/") ? a : `${a}/${a.includes(":") ? 128 : 32}`;
}

/** The link as the command that creates it reads (`istioin type vxlan id 1000 remote … dstport 4789 mtu 9000`). */
export function linkDetail(l: Link, podNetns?: string): string {
  switch (l.kind) {
    case "geneve":
    case "vxlan":
      return `${l.name} type ${l.kind} id ${l.vni} remote ${l.remote} dstport ${l.dstport} mtu ${l.mtu}`;
    case "veth":
      return `${l.name} type veth peer name ${l.peer}${podNetns ? ` netns ${podNetns}` : ""} mtu ${l.mtu}`;
    case "veth-peer":
      return `${l.name} type veth mtu ${l.mtu}`;
  }
}

export function kernelLinkDetail(k: KernelLink): string {
  const parts = [k.name, "type", k.kind ?? "none"];
  if (k.vni !== undefined) parts.push("id", String(k.vni));
  if (k.remote !== undefined) parts.push("remote", k.remote);
  if (k.dstport !== undefined) parts.push("dstport", String(k.dstport));
  parts.push("mtu", String(k.mtu));
  return parts.join(" ");
}

export interface LinkStep {
  /** Lines for an `ip -batch` in the ztunnel pod's namespace, run first: stale links holding a veth peer's name. */
  readonly podLines: readonly string[];
  /** Lines for one `ip -batch` here: deletes, creates, MTU/up, link settings, address deletes, address adds. */
  readonly lines: readonly string[];
  readonly changes: readonly Change[];
  /** Every link that exists once the step has run. */
  readonly present: ReadonlySet<string>;
  /** Links deleted or recreated by the step: the kernel drops their routes. */
  readonly gone: ReadonlySet<string>;
  /** Addresses (without prefix length) some link has once the step has run: usable as a route's `src`. */
  readonly addresses: ReadonlySet<string>;
}

const hostPart = (cidr: string): string => cidr.split("/")[0] ?? cidr;

export interface LinkPlanInput {
  readonly links: readonly Link[];
  readonly settings: readonly LinkSetting[];
  readonly current: readonly KernelLink[];
  /** The ztunnel pod's namespace, as `ip … netns` takes it, and its links; needed for veth tunnels. */
  readonly pod?: { readonly netns: string; readonly links: readonly KernelLink[] };
}

/** Why an existing link cannot be kept as the planned one, or undefined when it can. */
function mismatch(l: Link, k: KernelLink, pod: LinkPlanInput["pod"]): string | undefined {
  switch (l.kind) {
    case "geneve":
    case "vxlan": {
      if (k.kind !== l.kind) return `is a ${k.kind ?? "plain"} link`;
      const diffs: string[] = [];
      if (k.vni !== l.vni) diffs.push(`id ${String(k.vni)}`);
      if (k.remote !== l.remote.toLowerCase()) diffs.push(`remote ${String(k.remote)}`);
      if (k.dstport !== l.dstport) diffs.push(`dstport ${String(k.dstport)}`);
      return diffs.length > 0 ? `has ${diffs.join(", ")}` : undefined;
    }
    case "veth": {
      if (k.kind !== "veth") return `is a ${k.kind ?? "plain"} link`;
      const peer = pod?.links.find((p) => p.name === l.peer);
      return peer && vethPaired(k, peer) ? undefined : `its peer is not ${l.peer} in the ztunnel pod`;
    }
    case "veth-peer":
      return k.kind === "veth" ? undefined : `is a ${k.kind ?? "plain"} link`;
  }
}

function createLines(l: Link, podNetns: string | undefined): string[] {
  switch (l.kind) {
    case "geneve":
    case "vxlan":
      return [
        `link add name ${l.name} mtu ${l.mtu} type ${l.kind} id ${l.vni} remote ${l.remote} dstport ${l.dstport}`,
        `link set dev ${l.name} up`,
      ];
    case "veth":
      return [
        `link add name ${l.name} mtu ${l.mtu} type veth peer name ${l.peer} mtu ${l.mtu} netns ${String(podNetns)}`,
        `link set dev ${l.name} up`,
      ];
    case "veth-peer":
      return [];
  }
}

function checkPlannedLinks(input: LinkPlanInput): void {
  const problems: string[] = [];
  const names = new Set<string>();
  for (const l of input.links) {
    if (!OWNED_LINK_NAMES.has(l.name)) problems.push(`link ${l.name} is not one offmesh owns`);
    if (names.has(l.name)) problems.push(`link ${l.name} is planned twice`);
    names.add(l.name);
    if (l.kind === "veth" && input.pod === undefined) {
      problems.push(
        `link ${l.name} is a veth pair whose peer goes into the ztunnel pod, but no pod namespace was given`,
      );
    }
  }
  for (const s of input.settings) {
    if (OWNED_LINK_NAMES.has(s.name)) problems.push(`link setting on ${s.name}, a link offmesh owns`);
  }
  if (problems.length > 0) throw new ApplyError("link", `plan cannot be applied: ${problems.join("; ")}`);
}

/**
 * The batches that converge links: owned links absent from the plan are deleted, links whose
 * identity differs (kind, VNI, remote, port, veth peer) are recreated, others get MTU and up state
 * fixed; link settings set the MTU of links others created; addresses of owned links are made
 * exact (extra ones deleted first: deleting an IPv4 primary would take secondaries with it).
 */
export function planLinks(input: LinkPlanInput): LinkStep {
  checkPlannedLinks(input);
  const current = new Map(input.current.map((k) => [k.name, k]));
  const podNetns = input.pod?.netns;
  const problems: string[] = [];
  const creates: string[] = [];
  const sets: string[] = [];
  const addrDeletes: string[] = [];
  const addrAdds: string[] = [];
  const podLines: string[] = [];
  const changes: Change[] = [];
  const gone = new Set<string>();
  const created = new Set<string>();
  const deletedHost = new Set<KernelLink>();
  const pendingPeers: { link: Link & { kind: "veth" }; peer: KernelLink }[] = [];
  const planned = new Set(input.links.map((l) => l.name));

  for (const k of input.current) {
    if (!OWNED_LINK_NAMES.has(k.name) || planned.has(k.name)) continue;
    changes.push({ backend: "link", action: "delete", detail: kernelLinkDetail(k) });
    gone.add(k.name);
    deletedHost.add(k);
  }

  for (const l of input.links) {
    const k = current.get(l.name);
    const why = k ? mismatch(l, k, input.pod) : undefined;
    if (l.kind === "veth-peer") {
      // The host creates the pair and moves this end here; the pod side can only wait for it.
      if (!k) problems.push(`link ${l.name} (the pod end of a veth pair the host creates) does not exist`);
      else if (why) problems.push(`link ${l.name} ${why}, expected the pod end of a veth pair`);
    }
    const fresh = l.kind !== "veth-peer" && (!k || why !== undefined);
    if (fresh) {
      if (k) {
        gone.add(l.name);
        deletedHost.add(k);
        changes.push({
          backend: "link",
          action: "recreate",
          detail: `${linkDetail(l, podNetns)} (was ${kernelLinkDetail(k)}: ${String(why)})`,
        });
      } else {
        changes.push({ backend: "link", action: "create", detail: linkDetail(l, podNetns) });
      }
      creates.push(...createLines(l, podNetns));
      created.add(l.name);
      if (l.kind === "veth") {
        const peer = input.pod?.links.find((p) => p.name === l.peer);
        if (peer) pendingPeers.push({ link: l, peer });
      }
    } else if (k) {
      const fix: string[] = [];
      if (k.mtu !== l.mtu) fix.push(`mtu ${l.mtu}`);
      if (!k.up) fix.push("up");
      if (fix.length > 0) {
        sets.push(`link set dev ${l.name} ${fix.join(" ")}`);
        changes.push({ backend: "link", action: "set", detail: `${l.name} ${fix.join(" ")}` });
      }
    }
    const have = fresh || !k ? [] : k.addresses;
    const want = l.addresses.map(withPrefix);
    for (const a of have) {
      if (want.includes(a)) continue;
      addrDeletes.push(`addr del ${a} dev ${l.name}`);
      changes.push({ backend: "address", action: "delete", detail: `${a} dev ${l.name}` });
    }
    if (k || fresh) {
      for (const a of want) {
        if (have.includes(a)) continue;
        addrAdds.push(`addr replace ${a} dev ${l.name}`);
        changes.push({ backend: "address", action: "add", detail: `${a} dev ${l.name}` });
      }
    }
  }

  // A link in the pod already holding a new veth's peer name must go before the pair is created,
  // unless it is the far end of a host link this step deletes anyway (then it goes with it).
  for (const { link, peer } of pendingPeers) {
    const pairedHost = input.current.find((h) => vethPaired(h, peer));
    if (pairedHost && deletedHost.has(pairedHost)) continue;
    if (pairedHost) {
      problems.push(
        `${link.peer} in the ztunnel pod is the peer of ${pairedHost.name}, which the plan keeps`,
      );
      continue;
    }
    podLines.push(`link del dev ${peer.name}`);
    changes.push({
      backend: "link",
      action: "delete",
      detail: `${kernelLinkDetail(peer)} (in netns ${String(podNetns)})`,
    });
  }

  for (const s of input.settings) {
    const k = current.get(s.name);
    if (!k) {
      problems.push(`link ${s.name} does not exist (its MTU should be ${s.mtu}: ${s.why})`);
      continue;
    }
    if (k.mtu === s.mtu) continue;
    sets.push(`link set dev ${s.name} mtu ${s.mtu}`);
    changes.push({ backend: "link", action: "set", detail: `${s.name} mtu ${s.mtu} (was ${k.mtu})` });
  }

  if (problems.length > 0) throw new ApplyError("link", problems.join("; "));
  const deleteLines = deleteInOrder([...deletedHost], current);
  for (const k of input.current) if (k.peerName !== undefined && gone.has(k.peerName)) gone.add(k.name);
  const present = new Set([...input.current.map((k) => k.name).filter((n) => !gone.has(n)), ...created]);
  const addresses = new Set(
    [
      ...input.current.filter((k) => !gone.has(k.name) && !planned.has(k.name)).flatMap((k) => k.addresses),
      ...input.links.flatMap((l) => l.addresses),
    ].map(hostPart),
  );
  return {
    podLines,
    lines: [...deleteLines, ...creates, ...sets, ...addrDeletes, ...addrAdds],
    changes,
    present,
    gone,
    addresses,
  };
}

/**
 * `link del` lines for these links, skipping one whose veth peer (in this namespace) an earlier
 * line already deletes: deleting either end of a pair deletes both, and a second delete would fail.
 */
function deleteInOrder(links: readonly KernelLink[], byName: ReadonlyMap<string, KernelLink>): string[] {
  const removed = new Set<string>();
  const lines: string[] = [];
  for (const k of links) {
    if (removed.has(k.name)) continue;
    lines.push(`link del dev ${k.name}`);
    removed.add(k.name);
    if (k.peerName !== undefined && byName.get(k.peerName)?.peerName === k.name) removed.add(k.peerName);
  }
  return lines;
}

/** Every owned link deleted (a veth pair goes with either end). */
export function planLinkCleanup(current: readonly KernelLink[]): LinkStep {
  const owned = current.filter((k) => OWNED_LINK_NAMES.has(k.name));
  return {
    podLines: [],
    lines: deleteInOrder(owned, new Map(current.map((k) => [k.name, k]))),
    changes: owned.map((k) => ({ backend: "link", action: "delete", detail: kernelLinkDetail(k) })),
    present: new Set(current.filter((k) => !OWNED_LINK_NAMES.has(k.name)).map((k) => k.name)),
    gone: new Set(owned.map((k) => k.name)),
    addresses: new Set(
      current
        .filter((k) => !OWNED_LINK_NAMES.has(k.name))
        .flatMap((k) => k.addresses)
        .map(hostPart),
    ),
  };
}
