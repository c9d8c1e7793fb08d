export * from "./types.js";
export { parseTopology, buildTopology } from "./parse.js";
export { lookupByName, lookupByIp, servingNode, servedNodes, pairPartner } from "./lookup.js";
export { loadTopologyFile } from "./file.js";
