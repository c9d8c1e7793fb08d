import { loadTopologyFile } from "../topology/file.js";
import { servingNode } from "../topology/lookup.js";
import type { Topology } from "../topology/types.js";
import { EXIT, reportFailure, table } from "./output.js";
import type { Io } from "./output.js";

/** `offmesh validate <cluster-conf.yaml>`: exit 0 and a summary, or exit 1 and every error. */
export async function validateCommand(io: Io, file: string, opts: { json?: boolean }): Promise<number> {
  let topo: Topology;
  try {
    topo = await loadTopologyFile(file);
  } catch (err) {
    return reportFailure(io, err, opts.json === true);
  }
  const rows = topo.nodes.map((n) => {
    const serving = servingNode(topo, n.name);
    return {
      entry: n.declaredAt.split(".")[0] ?? n.declaredAt,
      node: n.name,
      role: n.role,
      ip: n.ip,
      partner: n.partner?.name ?? "-",
      ztunnel: serving.found ? serving.node.name : "-",
    };
  });
  if (opts.json) {
    io.out(
      JSON.stringify(
        {
          ok: true,
          file,
          family: topo.family === undefined ? null : `IPv${topo.family}`,
          pairs: topo.pairs,
          singles: topo.singles,
          nodes: rows.map(({ entry, node, role, ip, partner, ztunnel }) => ({
            entry,
            name: node,
            role,
            ip,
            partner: partner === "-" ? null : partner,
            servedBy: ztunnel,
          })),
        },
        null,
        2,
      ) + "\n",
    );
    return EXIT.ok;
  }
  const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? "" : "s"}`;
  io.out(
    `${file}: valid, IPv${topo.family ?? 4}, ${plural(topo.pairs.length, "pair")}, ${plural(topo.singles.length, "single")}\n\n`,
  );
  io.out(
    table(
      ["ENTRY", "NODE", "ROLE", "IP", "PARTNER", "SERVED BY ZTUNNEL ON"],
      rows.map((r) => [r.entry, r.node, r.role, r.ip, r.partner, r.ztunnel]),
    ),
  );
  return EXIT.ok;
}
