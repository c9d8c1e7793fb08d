import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { MemoryClusterSource } from "../../src/cluster/memory.js";
import { formatIssue } from "../../src/configfile/issues.js";
import type { ConfigIssue } from "../../src/configfile/issues.js";
import { parseCidr } from "../../src/configfile/net.js";
import type { LocatedObject } from "../../src/lab/api/manifests.js";
import { locateIssues, parseManifestRefs, parseManifests } from "../../src/lab/api/manifests.js";
import { planApply, planDelete } from "../../src/lab/api/plan.js";
import type { PlanContext } from "../../src/lab/api/plan.js";
import type { CheckedObject } from "../../src/lab/api/protocol.js";
import { checkObjects } from "../../src/lab/api/protocol.js";
import { ambient, clusterNode, pod } from "../support/cluster.js";

// Kubernetes-style manifests → lab API objects, and every problem as file:line:col: field —
// including the problems only the API server can see, placed back in the manifest.

function objects(text: string, file = "m.yaml"): LocatedObject[] {
  const r = parseManifests(text, file);
  assert.ok(r.ok, r.ok ? "" : r.issues.map(formatIssue).join("\n"));
  return r.value;
}

function issues(text: string, file = "m.yaml"): string[] {
  const r = parseManifests(text, file);
  assert.ok(!r.ok, "expected the manifest to be refused");
  return r.issues.map(formatIssue);
}

/** Uids `uid-1`, `uid-2`, … in the order the planner asks. */
const context = (): PlanContext => {
  let n = 0;
  return { serviceCIDR: parseCidr("10.96.0.0/24") ?? assert.fail(), newUid: () => `uid-${++n}` };
};

function checked(located: readonly LocatedObject[]): CheckedObject[] {
  const r = checkObjects(located.map((o) => o.object));
  assert.ok(r.ok);
  return r.checked;
}

describe("lab manifests: every kind", () => {
  it("converts a Namespace with its labels", () => {
    const [ns] = objects(
      "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n  labels:\n    istio.io/dataplane-mode: ambient\n",
    );
    assert.deepEqual(ns?.object, {
      kind: "namespace",
      object: { name: "default", labels: { "istio.io/dataplane-mode": "ambient" } },
    });
    assert.deepEqual(ns?.ref, { kind: "namespace", name: "default" });
  });

  it("converts a Node: InternalIP addresses only, podCIDR, labels", () => {
    const [node] = objects(`apiVersion: v1
kind: Node
metadata:
  name: worker1
  labels: {offmesh.io/role: cpu}
spec:
  podCIDR: 10.244.3.0/24
status:
  addresses:
    - {type: Hostname, address: worker1}
    - {type: InternalIP, address: 192.168.50.133}
`);
    assert.deepEqual(node?.object, {
      kind: "node",
      object: {
        name: "worker1",
        internalIPs: ["192.168.50.133"],
        podCIDRs: ["10.244.3.0/24"],
        labels: { "offmesh.io/role": "cpu" },
      },
    });
  });

  it("converts a Pod with everything the mesh reads, and fills what Kubernetes would default", () => {
    const [full, bare] = objects(`apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: apps
  uid: 1234-abcd
  labels: {app: client}
  annotations: {note: x}
  deletionTimestamp: "2024-01-01T00:00:00Z"
spec:
  nodeName: worker1
  serviceAccountName: sleep
  containers:
    - name: main
      image: ignored
      ports:
        - {name: echo, containerPort: 8080}
        - {containerPort: 5353, protocol: UDP}
status:
  phase: Pending
  podIPs: [{ip: 10.244.3.5}, {ip: "fd00:0:0::5"}]
  conditions: [{type: Ready, status: "False"}]
---
apiVersion: v1
kind: Pod
metadata: {name: bare}
`);
    assert.deepEqual(full?.object, {
      kind: "pod",
      object: {
        name: "client",
        namespace: "apps",
        uid: "1234-abcd",
        nodeName: "worker1",
        ips: ["10.244.3.5", "fd00::5"],
        hostNetwork: false,
        labels: { app: "client" },
        annotations: { note: "x" },
        phase: "Pending",
        ready: false,
        serviceAccount: "sleep",
        terminating: true,
        containerPorts: [
          { name: "echo", containerPort: 8080, protocol: "TCP" },
          { containerPort: 5353, protocol: "UDP" },
        ],
      },
    });
    assert.deepEqual(bare?.object, {
      kind: "pod",
      object: {
        name: "bare",
        namespace: "default",
        ips: [],
        hostNetwork: false,
        labels: {},
        annotations: {},
        phase: "Running",
        ready: true,
        serviceAccount: "default",
        terminating: false,
      },
    });
    assert.deepEqual(bare?.ref, { kind: "pod", namespace: "default", name: "bare" });
  });

  it("takes status.podIP and the deprecated spec.serviceAccount, and a host-network pod", () => {
    const [p] = objects(`apiVersion: v1
kind: Pod
metadata: {name: p}
spec: {serviceAccount: legacy-sa, hostNetwork: true}
status: {podIP: 192.168.50.133}
`);
    assert.equal(p?.object.kind, "pod");
    const o = p?.object.object as { ips: string[]; serviceAccount: string; hostNetwork: boolean };
    assert.deepEqual([o.ips, o.serviceAccount, o.hostNetwork], [["192.168.50.133"], "legacy-sa", true]);
  });

  it("converts Services: explicit, dual-stack, headless, to be allocated; targetPort defaults to port", () => {
    const svcs = objects(`apiVersion: v1
kind: Service
metadata: {name: server, namespace: apps}
spec:
  clusterIP: 10.96.0.20
  selector: {app: server}
  ports:
    - {name: echo, port: 8080}
    - {name: http, port: 80, targetPort: web, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: dual}
spec:
  clusterIPs: [10.96.0.21, "fd00::21"]
---
apiVersion: v1
kind: Service
metadata: {name: headless}
spec: {clusterIP: None, selector: {app: x}}
---
apiVersion: v1
kind: Service
metadata: {name: fresh}
spec: {ports: [{port: 53, protocol: UDP}]}
`);
    assert.deepEqual(
      svcs.map((s) => s.object.object),
      [
        {
          namespace: "apps",
          name: "server",
          clusterIPs: ["10.96.0.20"],
          ports: [
            { name: "echo", port: 8080, targetPort: 8080, protocol: "TCP" },
            { name: "http", port: 80, targetPort: "web", protocol: "TCP" },
          ],
          selector: { app: "server" },
        },
        { namespace: "default", name: "dual", clusterIPs: ["10.96.0.21", "fd00::21"], ports: [] },
        { namespace: "default", name: "headless", clusterIPs: [], ports: [], selector: { app: "x" } },
        { namespace: "default", name: "fresh", ports: [{ port: 53, targetPort: 53, protocol: "UDP" }] },
      ],
    );
  });

  it("converts AuthorizationPolicies of security.istio.io v1 and v1beta1, keeping the spec and annotations", () => {
    const [v1, beta] = objects(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-legacy
  namespace: apps
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules:
    - from: [{source: {namespaces: [legacy]}}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: allow-nothing}
`);
    assert.deepEqual(v1?.object, {
      kind: "policy",
      object: {
        namespace: "apps",
        name: "deny-legacy",
        spec: { action: "DENY", rules: [{ from: [{ source: { namespaces: ["legacy"] } }] }] },
        annotations: { "istio.io/dry-run": "true" },
      },
    });
    assert.deepEqual(beta?.object, {
      kind: "policy",
      object: { namespace: "default", name: "allow-nothing", spec: {} },
    });
  });

  it("reads the items of a v1 List and skips empty documents", () => {
    const list = objects(`---
apiVersion: v1
kind: List
items:
  - {apiVersion: v1, kind: Namespace, metadata: {name: a}}
  - {apiVersion: v1, kind: Namespace, metadata: {name: b}}
---
`);
    assert.deepEqual(
      list.map((o) => o.ref.name),
      ["a", "b"],
    );
  });
});

describe("lab manifests: problems, each at its line and field", () => {
  it("names an unsupported kind and a wrong apiVersion", () => {
    assert.deepEqual(issues("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n"), [
      `m.yaml:2:7: kind: "Deployment" is not supported here; supported: v1 Namespace, v1 Node, v1 Pod, v1 Service, security.istio.io/v1 AuthorizationPolicy`,
    ]);
    assert.deepEqual(issues("apiVersion: v2\nkind: Pod\nmetadata: {name: x}\n"), [
      `m.yaml:1:13: apiVersion: "v2" is not; Pod is v1`,
    ]);
    assert.deepEqual(issues("kind: Pod\nmetadata: {name: x}\n"), [
      `m.yaml:1:1: apiVersion: is required; Pod is v1`,
    ]);
  });

  it("reports a missing name at the mapping that lacks it", () => {
    assert.deepEqual(issues("apiVersion: v1\nkind: Pod\nmetadata:\n  labels: {a: b}\n"), [
      "m.yaml:4:3: metadata.name: is required",
    ]);
  });

  it("reports wrong types and bad values at the value, in the document they are in", () => {
    const text = `apiVersion: v1
kind: Namespace
metadata: {name: ok}
---
apiVersion: v1
kind: Pod
metadata:
  name: Client_1
  labels: {version: 2}
spec:
  nodeName: worker1
status:
  podIPs:
    - ip: 10.244.3.500
  phase: Runing
`;
    // Structure first: a label that is not a string stops the document there.
    assert.deepEqual(issues(text), [
      "m.yaml:9:21: metadata.labels.version: must be a string, found number 2",
    ]);
    const fixed = text.replace("version: 2", 'version: "2"');
    assert.deepEqual(issues(fixed), [
      `m.yaml:8:9: metadata.name: "Client_1" is not a valid name (lower-case letters, digits, "-" and "."; starting and ending with a letter or digit, at most 253 characters)`,
      `m.yaml:14:11: status.podIPs[0].ip: "10.244.3.500" is not an IP address`,
      "m.yaml:15:10: status.phase: must be Pending, Running, Succeeded, Failed or Unknown",
    ]);
  });

  it("checks node addresses, CIDRs, service ports and container ports", () => {
    assert.deepEqual(
      issues(`apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: [10.244.3.1/24]}
status: {addresses: [{type: InternalIP, address: "::1x"}]}
---
apiVersion: v1
kind: Service
metadata: {name: s}
spec:
  ports:
    - {port: 70000}
    - {port: 80, targetPort: 0, protocol: ICMP}
---
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers:
    - ports: [{containerPort: 80, name: Bad_Name}]
`),
      [
        `m.yaml:5:50: status.addresses[0].address: "::1x" is not an IP address`,
        `m.yaml:4:19: spec.podCIDRs[0]: 10.244.3.1/24 has host bits set; the network is 10.244.3.0/24`,
        "m.yaml:12:14: spec.ports[0].port: must be a port (1-65535)",
        "m.yaml:13:30: spec.ports[1].targetPort: must be a port (1-65535)",
        "m.yaml:13:43: spec.ports[1].protocol: must be TCP, UDP or SCTP",
        `m.yaml:20:41: spec.containers[0].ports[0].name: "Bad_Name" is not a valid port name (lower-case letters, digits and "-", with a letter, at most 15 characters)`,
      ],
    );
  });

  it("catches a misspelt field offmesh reads, at its key, and lets other Kubernetes fields pass", () => {
    assert.deepEqual(
      issues(`apiVersion: v1
kind: Pod
metadta: {name: x}
spec:
  nodname: worker1
  restartPolicy: Always
  containers: [{name: c, image: busybox, command: [sleep, "1d"]}]
`),
      [
        `m.yaml:3:1: metadta: unknown field "metadta" (did you mean "metadata"?)`,
        "m.yaml:1:1: metadata: is required",
      ],
    );
    assert.deepEqual(issues("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {nodname: w}\n"), [
      `m.yaml:4:8: spec.nodname: unknown field "nodname" (did you mean "nodeName"?)`,
    ]);
  });

  it("refuses fields that contradict each other", () => {
    assert.deepEqual(
      issues(`apiVersion: v1
kind: Pod
metadata: {name: p}
spec: {serviceAccountName: a, serviceAccount: b}
status: {podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.2}]}
`),
      [
        "m.yaml:5:17: status.podIP: 10.0.0.1 is not status.podIPs[0] (10.0.0.2); they must agree",
        `m.yaml:4:47: spec.serviceAccount: "b" is not spec.serviceAccountName ("a"); they must agree`,
      ],
    );
  });

  it("refuses the same object twice, naming the line of the first", () => {
    assert.deepEqual(
      issues(`apiVersion: v1
kind: Namespace
metadata: {name: a}
---
apiVersion: v1
kind: Namespace
metadata: {name: a}
`),
      ["m.yaml:7:18: metadata.name: namespace a is also defined at line 3; give each object once"],
    );
  });

  it("reports YAML that is not well-formed, and a file without objects", () => {
    const [syntax] = issues("apiVersion: v1\nkind: Pod\nmetadata: {name: [x\n");
    assert.match(syntax ?? "", /^m\.yaml:\d+:\d+: \(yaml\): not well-formed YAML: /);
    assert.deepEqual(issues("# nothing\n---\n"), ["m.yaml: (file): contains no objects"]);
    assert.deepEqual(issues("- a\n- b\n"), [
      "m.yaml:1:1: (document): must be a mapping (a Kubernetes object)",
    ]);
  });
});

describe("lab manifests: what only the API server can tell, placed in the manifest", () => {
  const cluster = (): MemoryClusterSource => {
    const c = new MemoryClusterSource();
    c.upsertNamespace(ambient("default"));
    c.upsertNode(clusterNode("worker1", "192.168.50.133", "10.244.3.0/24"));
    c.upsertPod(
      pod({ uid: "u1", name: "taken", namespace: "default", nodeName: "worker1", ips: ["10.244.3.9"] }),
    );
    return c;
  };

  const placed = (text: string, file: string): string[] => {
    const located = objects(text, file);
    const plan = planApply(cluster().snapshot(), checked(located), context());
    assert.ok(!plan.ok, "expected the API server to refuse");
    return locateIssues(located, plan.issues, file).map(formatIssue);
  };

  it("a node that does not exist: pods.yaml:7:13: spec.nodeName", () => {
    const text = `apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: default
spec:
  nodeName: wrker1
`;
    assert.deepEqual(placed(text, "pods.yaml"), [
      'pods.yaml:7:13: spec.nodeName: node "wrker1" does not exist',
    ]);
  });

  it("a namespace that does not exist, an address in use, a policy the control plane cannot convert", () => {
    const text = `apiVersion: v1
kind: Pod
metadata: {name: p, namespace: nowhere}
---
apiVersion: v1
kind: Pod
metadata: {name: q}
spec: {nodeName: worker1}
status: {podIP: 10.244.3.9}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: pol}
spec:
  rules:
    - from: []
`;
    assert.deepEqual(placed(text, "x.yaml"), [
      'x.yaml:3:32: metadata.namespace: namespace "nowhere" does not exist; create it first (or in the same request)',
      "x.yaml:9:17: status.podIP: 10.244.3.9 is already the address of pod default/taken",
      "x.yaml:16:13: spec.rules[0].from: must not be empty",
    ]);
  });

  it("an object that does not exist, for delete -f", () => {
    const r = parseManifestRefs(
      `apiVersion: v1
kind: Pod
metadata: {name: gone}
spec: {nodeName: 3}
`,
      "d.yaml",
    );
    assert.ok(r.ok);
    // Only identity is read: a spec that no longer validates does not stop a delete.
    assert.deepEqual(
      r.value.map((t) => t.ref),
      [{ kind: "pod", namespace: "default", name: "gone" }],
    );
    const plan = planDelete(cluster().snapshot(), [r.value[0]?.ref ?? assert.fail()]);
    assert.ok(!plan.ok);
    assert.deepEqual(locateIssues(r.value, plan.issues, "d.yaml").map(formatIssue), [
      "d.yaml:3:18: metadata.name: pod default/gone does not exist",
    ]);
  });

  it("issues about the request as a whole keep no line", () => {
    const located = objects("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n");
    const out: ConfigIssue[] = locateIssues(located, [{ field: "(state)", message: "disk full" }], "f.yaml");
    assert.deepEqual(out, [{ file: "f.yaml", field: "(state)", message: "disk full" }]);
  });
});

describe("lab API plans (pure)", () => {
  it("keeps a pod's uid on re-apply, gives a new pod one, and replaces a pod whose uid changes", () => {
    const c = new MemoryClusterSource();
    c.upsertNamespace(ambient("default"));
    c.upsertPod(pod({ uid: "u1", name: "a", namespace: "default" }));
    const located = objects(`apiVersion: v1
kind: Pod
metadata: {name: a, labels: {v: "2"}}
---
apiVersion: v1
kind: Pod
metadata: {name: b}
`);
    const plan = planApply(c.snapshot(), checked(located), context());
    assert.ok(plan.ok);
    assert.deepEqual(
      plan.results.map((r) => [r.name, r.action, (r.object as { uid: string }).uid]),
      [
        ["a", "configured", "u1"],
        ["b", "created", "uid-1"],
      ],
    );
    const replaced = planApply(
      c.snapshot(),
      checked(objects("apiVersion: v1\nkind: Pod\nmetadata: {name: a, uid: u2}\n")),
      context(),
    );
    assert.ok(replaced.ok);
    assert.deepEqual(
      replaced.events.map((e) => [e.type, (e.object as { uid: string }).uid]),
      [
        ["delete", "u1"],
        ["upsert", "u2"],
      ],
    );
  });

  it("allocates free service addresses, keeps a service's address on re-apply, refuses a taken one", () => {
    const c = new MemoryClusterSource();
    c.upsertNamespace(ambient("default"));
    c.upsertService({ namespace: "default", name: "old", clusterIPs: ["10.96.0.1"], ports: [] });
    const fresh = checked(objects("apiVersion: v1\nkind: Service\nmetadata: {name: new}\n"));
    const plan = planApply(c.snapshot(), fresh, context());
    assert.ok(plan.ok);
    assert.deepEqual((plan.results[0]?.object as unknown as { clusterIPs: string[] }).clusterIPs, [
      "10.96.0.2",
    ]);
    const again = planApply(
      c.snapshot(),
      checked(objects("apiVersion: v1\nkind: Service\nmetadata: {name: old}\n")),
      context(),
    );
    assert.ok(again.ok);
    assert.deepEqual(again.results[0]?.action, "unchanged");
    const taken = planApply(
      c.snapshot(),
      checked(objects("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIP: 10.96.0.1}\n")),
      context(),
    );
    assert.ok(!taken.ok);
    assert.deepEqual(taken.issues, [
      {
        index: 0,
        field: "clusterIPs[0]",
        message: "10.96.0.1 is already the address of service default/old",
      },
    ]);
  });

  it("deleting a namespace deletes what is in it, a node the pods bound to it; dependents go first", () => {
    const c = new MemoryClusterSource();
    c.upsertNamespace(ambient("apps"));
    c.upsertNamespace(ambient("other"));
    c.upsertNode(clusterNode("n1", "192.168.50.1", "10.244.1.0/24"));
    c.upsertPod(pod({ uid: "u1", name: "a", namespace: "apps" }));
    c.upsertPod(pod({ uid: "u2", name: "b", namespace: "other", nodeName: "n1" }));
    c.upsertService({ namespace: "apps", name: "s", clusterIPs: [], ports: [] });
    const plan = planDelete(c.snapshot(), [
      { kind: "namespace", name: "apps" },
      { kind: "node", name: "n1" },
    ]);
    assert.ok(plan.ok);
    assert.deepEqual(
      plan.events.map((e) => `${e.type} ${e.kind} ${(e.object as { name: string }).name}`),
      ["delete pod a", "delete pod b", "delete service s", "delete node n1", "delete namespace apps"],
    );
    assert.deepEqual(
      plan.results.filter((r) => r.cascade).map((r) => r.name),
      ["a", "b", "s"],
    );
  });
});
