// The default lab spec, embedded so `offmesh lab up` works without any file. It is the text of
// labs/default.yaml, character for character (a unit test keeps the two identical).

export const DEFAULT_SPEC_FILE = "labs/default.yaml";

export const DEFAULT_SPEC_TEXT = `# The default offmesh lab (\`offmesh lab up\` without --spec); reference: docs/lab-spec.md.
# The seed cluster of the offMesh design note — two CPU nodes, each paired with its DPU — plus one
# single node, all on one wire. Every DPU and single runs a ztunnel; the lab adds those itself.
name: oml
wire:
  subnet: 192.168.50.0/24
nic: ens3
pairs:
  - cpu: { name: master, ip: 192.168.50.130, podCIDR: 10.244.0.0/24 }
    dpu: { name: master-dpu, ip: 192.168.50.131, podCIDR: 10.244.1.0/24 }
  - cpu: { name: worker1, ip: 192.168.50.133, podCIDR: 10.244.3.0/24 }
    dpu: { name: worker1-dpu, ip: 192.168.50.128, podCIDR: 10.244.2.0/24 }
singles:
  - { name: edge1, ip: 192.168.50.140, podCIDR: 10.244.4.0/24 }
internet:
  address: 203.0.113.10
namespaces:
  - name: default
    labels: { istio.io/dataplane-mode: ambient }
  # Not enrolled: its pods talk plain TCP, past the mesh.
  - name: legacy
# Service accounts default to the workload's name, labels to {app: <name>}.
workloads:
  - { name: client, namespace: default, node: master }
  - { name: server, namespace: default, node: worker1 }
  # A second server on the client's own node: traffic that never leaves the pair.
  - { name: neighbour, namespace: default, node: master }
  - { name: client, namespace: legacy, node: master }
  - { name: server, namespace: legacy, node: worker1 }
  - { name: neighbour, namespace: legacy, node: master }
  - { name: edge, namespace: default, node: edge1 }
`;
