import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Logger } from "pino";
import { isZtunnel } from "../cluster/membership.js";
import { LabClusterSource, labApply } from "../cluster/lab-client.js";
import { applyRequest } from "./api/protocol.js";
import type { ClusterPod } from "../cluster/types.js";
import { issueProxyToken, loadOrCreateTokenKey, serviceAccountSubject } from "../controlplane/auth/tokens.js";
import { CniRuntime, createPodNetns, deletePodNetns, kubernetesCniArgs, netnsPath } from "../cni/runtime.js";
import type { CniAttachment, RuntimeConflist } from "../cni/runtime.js";
import { writeFileAtomic } from "../fsutil/atomic.js";
import { ZTUNNEL_NODE_FLAGS } from "../ztunnel/daemon.js";
import { labStatePaths, nodeNetns, podNetns, ztunnelComponent, workloadComponent } from "./names.js";
import { LabProcesses } from "./processes.js";
import type { ComponentSpec } from "./processes.js";

// The lab's kubelet, one per node: it watches the lab API for pods scheduled to its node and does
// what a kubelet and a container runtime do — a network namespace and the node's CNI chain per
// pod, the pod's address reported back to the API, its process ("container") started and
// restarted when it dies, and everything torn down when the pod is deleted. Workload pods run the
// built-in echo server; the ztunnel pod runs `offmesh ztunnel run` with a token the lab issues.

export const ECHO_TCP_PORT = 8080;
export const ECHO_HTTP_PORT = 8081;
export const CONFLIST_FILE = "10-offmesh.conflist";
const RESTART_BACKOFF_MS = 1_000;

export interface LabKubeletOptions {
  readonly lab: string;
  readonly node: string;
  readonly stateDir: string;
  /** host:port of the control plane, as ztunnels reach it. */
  readonly controlPlaneAddress: string;
  /** Directories the CNI runtime finds plugins in (offmesh-cni first, then the reference plugins). */
  readonly cniPath: readonly string[];
  /** The offmesh CLI entry (dist/src/cli/main.js) pod processes run. */
  readonly cliMain: string;
  readonly log: Logger;
}

interface Sandbox {
  readonly uid: string;
  readonly namespace: string;
  readonly name: string;
  readonly netns: string;
  readonly ip: string;
  readonly containerId: string;
  /** Decided once, from the pod's labels when the sandbox was made. */
  readonly ztunnel: boolean;
}

export class LabKubelet {
  private readonly paths;
  private readonly source: LabClusterSource;
  private readonly processes: LabProcesses;
  private readonly runtime: CniRuntime;
  private readonly sandboxFile: string;
  private sandboxes = new Map<string, Sandbox>();
  private readonly lastRestart = new Map<string, number>();
  private running: Promise<void> | undefined;
  private again = false;
  private timer: NodeJS.Timeout | undefined;
  private unsubscribe: (() => void) | undefined;
  private stopped = false;

  constructor(private readonly opts: LabKubeletOptions) {
    this.paths = labStatePaths(opts.stateDir);
    this.processes = new LabProcesses(opts.stateDir);
    this.source = new LabClusterSource({
      socketPath: this.paths.apiSocket,
      log: { info: (m) => opts.log.info(m), warn: (m) => opts.log.warn(m) },
    });
    const nodeDir = this.paths.node(opts.node).dir;
    this.runtime = new CniRuntime({
      cniPath: opts.cniPath,
      cacheDir: join(nodeDir, "cni-cache"),
      hostNetns: netnsPath(nodeNetns(opts.lab, opts.node)),
      timeoutMs: 30_000,
    });
    this.sandboxFile = join(nodeDir, "sandboxes.json");
  }

  async start(): Promise<void> {
    mkdirSync(this.paths.node(this.opts.node).dir, { recursive: true });
    // Sandboxes of an earlier run of this kubelet are adopted, as a restarted kubelet adopts the
    // runtime's containers.
    if (existsSync(this.sandboxFile)) {
      const saved = JSON.parse(readFileSync(this.sandboxFile, "utf8")) as Sandbox[];
      this.sandboxes = new Map(saved.map((s) => [s.uid, s]));
    }
    await this.source.start();
    this.unsubscribe = this.source.subscribe(() => this.kick());
    // Dead containers are noticed by polling: after a kubelet restart they are not our children.
    this.timer = setInterval(() => this.kick(), 1_000);
    this.kick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.unsubscribe?.();
    await this.running;
    await this.source.stop();
  }

  /** Run one reconcile, or one more after the current one. */
  private kick(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.reconcile()
      .catch((err: unknown) => this.opts.log.error({ err: (err as Error).message }, "reconcile failed"))
      .finally(() => {
        this.running = undefined;
        if (this.again) {
          this.again = false;
          this.kick();
        }
      });
  }

  private async reconcile(): Promise<void> {
    const pods = [...this.source.snapshot().pods.values()].filter((p) => p.nodeName === this.opts.node);
    const wanted = new Map(pods.filter((p) => !p.terminating && !p.hostNetwork).map((p) => [p.uid, p]));
    for (const [uid, sandbox] of this.sandboxes) {
      if (!wanted.has(uid)) await this.teardown(sandbox);
    }
    for (const pod of wanted.values()) {
      if (this.stopped) return;
      const sandbox = this.sandboxes.get(pod.uid);
      if (!sandbox) {
        await this.createSandbox(pod);
        continue;
      }
      this.ensureContainer(pod, sandbox);
    }
  }

  private conflist(): RuntimeConflist | undefined {
    const file = join(this.paths.node(this.opts.node).cniConfDir, CONFLIST_FILE);
    try {
      return JSON.parse(readFileSync(file, "utf8")) as RuntimeConflist;
    } catch {
      return undefined;
    }
  }

  private async createSandbox(pod: ClusterPod): Promise<void> {
    const conflist = this.conflist();
    if (!conflist) {
      this.opts.log.info(
        { pod: `${pod.namespace}/${pod.name}` },
        "waiting for the node agent's CNI conflist",
      );
      return;
    }
    const netns = podNetns(this.opts.lab, this.opts.node, pod.namespace, pod.name);
    const attachment: CniAttachment = {
      containerId: `lab-${pod.uid}`,
      netns: netnsPath(netns),
      ifName: "eth0",
      args: kubernetesCniArgs({ namespace: pod.namespace, name: pod.name, uid: pod.uid }),
    };
    await createPodNetns(netns);
    let ip: string | undefined;
    try {
      const result = await this.runtime.add(conflist, attachment);
      ip = result.ips?.[0]?.address.split("/")[0];
      if (!ip) throw new Error(`the CNI chain returned no address: ${JSON.stringify(result)}`);
    } catch (err) {
      this.opts.log.warn(
        { pod: `${pod.namespace}/${pod.name}`, err: (err as Error).message },
        "CNI ADD failed; will retry",
      );
      await this.runtime.del(conflist, attachment).catch(() => undefined);
      await deletePodNetns(netns);
      return;
    }
    const sandbox: Sandbox = {
      uid: pod.uid,
      namespace: pod.namespace,
      name: pod.name,
      netns,
      ip,
      containerId: attachment.containerId,
      ztunnel: isZtunnel(pod),
    };
    this.sandboxes.set(pod.uid, sandbox);
    this.saveSandboxes();
    this.opts.log.info({ pod: `${pod.namespace}/${pod.name}`, ip, netns }, "pod sandbox created");
    await this.report(pod, [ip], "Running");
    this.ensureContainer(pod, sandbox);
  }

  private async teardown(sandbox: Sandbox): Promise<void> {
    await this.processes.stop(this.componentOf(sandbox), 3_000);
    const conflist = this.conflist();
    if (conflist) {
      await this.runtime
        .del(conflist, {
          containerId: sandbox.containerId,
          netns: netnsPath(sandbox.netns),
          ifName: "eth0",
          args: kubernetesCniArgs({ namespace: sandbox.namespace, name: sandbox.name, uid: sandbox.uid }),
        })
        .catch((err: unknown) =>
          this.opts.log.warn(
            { pod: `${sandbox.namespace}/${sandbox.name}`, err: (err as Error).message },
            "CNI DEL failed",
          ),
        );
    }
    await deletePodNetns(sandbox.netns);
    this.sandboxes.delete(sandbox.uid);
    this.saveSandboxes();
    this.opts.log.info({ pod: `${sandbox.namespace}/${sandbox.name}` }, "pod sandbox removed");
  }

  /** Start the pod's process if it is not running (restart policy Always, with a short backoff). */
  private ensureContainer(pod: ClusterPod, sandbox: Sandbox): void {
    const component = this.componentOf(sandbox);
    if (this.processes.pid(component) !== undefined) return;
    const last = this.lastRestart.get(component) ?? 0;
    if (Date.now() - last < RESTART_BACKOFF_MS) return;
    this.lastRestart.set(component, Date.now());
    const spec = sandbox.ztunnel ? this.ztunnelSpec(pod, sandbox) : this.echoSpec(pod, sandbox);
    if (!spec) return;
    const pid = this.processes.start(spec);
    this.opts.log.info({ pod: `${pod.namespace}/${pod.name}`, pid, component }, "container started");
  }

  /** The process a sandbox runs: the node's ztunnel for the ztunnel pod, the echo for workloads. */
  private componentOf(sandbox: Sandbox): string {
    return sandbox.ztunnel
      ? ztunnelComponent(this.opts.node)
      : workloadComponent(sandbox.namespace, sandbox.name);
  }

  private echoSpec(pod: ClusterPod, sandbox: Sandbox): ComponentSpec {
    return {
      name: workloadComponent(pod.namespace, pod.name),
      netns: sandbox.netns,
      argv: [
        process.execPath,
        this.opts.cliMain,
        "lab",
        "echo",
        "--pod",
        `${pod.namespace}/${pod.name}`,
        "--tcp-port",
        String(ECHO_TCP_PORT),
        "--http-port",
        String(ECHO_HTTP_PORT),
      ],
    };
  }

  private ztunnelSpec(pod: ClusterPod, sandbox: Sandbox): ComponentSpec | undefined {
    const rootCert = join(this.paths.controlplaneDir, "ca", "root-cert.pem");
    if (!existsSync(rootCert)) {
      this.opts.log.info("waiting for the control plane's root certificate");
      return undefined;
    }
    const tokenFile = this.paths.tokenFile(pod.name);
    return {
      name: ztunnelComponent(this.opts.node),
      netns: sandbox.netns,
      argv: [
        process.execPath,
        ...ZTUNNEL_NODE_FLAGS,
        this.opts.cliMain,
        "ztunnel",
        "run",
        "--xds-address",
        this.opts.controlPlaneAddress,
        "--root-cert",
        rootCert,
        "--token-file",
        tokenFile,
        "--node",
        this.opts.node,
        "--pod-name",
        pod.name,
        "--pod-namespace",
        pod.namespace,
        "--pod-ip",
        sandbox.ip,
        "--drain-seconds",
        "5",
      ],
    };
  }

  /** The lab issues the ztunnel's credential, as Kubernetes projects a service-account token. */
  async issueToken(pod: ClusterPod): Promise<void> {
    const key = await loadOrCreateTokenKey(this.paths.controlplaneDir);
    const token = issueProxyToken(
      key,
      {
        sub: serviceAccountSubject(pod.namespace, pod.serviceAccount),
        pod: { name: pod.name, uid: pod.uid },
        node: this.opts.node,
      },
      7 * 24 * 3600,
    );
    mkdirSync(this.paths.tokensDir, { recursive: true });
    await writeFileAtomic(this.paths.tokenFile(pod.name), token + "\n", 0o600);
  }

  private async report(pod: ClusterPod, ips: string[], phase: "Running"): Promise<void> {
    if (isZtunnel(pod)) await this.issueToken(pod);
    // The kubelet only reports pods it runs, which are neither terminating nor elsewhere.
    const res = await labApply(this.paths.apiSocket, [
      applyRequest("pod", { ...pod, ips, phase, ready: true }),
    ]);
    if (!res.ok)
      this.opts.log.warn({ pod: `${pod.namespace}/${pod.name}`, error: res.error }, "status update refused");
  }

  private saveSandboxes(): void {
    writeFileSync(this.sandboxFile, JSON.stringify([...this.sandboxes.values()], null, 2) + "\n");
  }
}
