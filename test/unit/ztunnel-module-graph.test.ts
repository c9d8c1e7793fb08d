// The ztunnel's idle memory depends on what it loads: @peculiar/x509 with reflect-metadata, tsyringe
// and the @peculiar/asn1-* packages costs it 10–12 MB, so `offmesh ztunnel run` must not load them.
// A fresh node process loads the command as bin/offmesh does, with a resolve hook recording every
// module it resolves; node's CommonJS cache is read as well, for packages required from inside CJS.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { after, describe, it } from "node:test";
import { fromRoot } from "../support/paths.js";

// x509 and its stack; and what only the offline commands, the control plane and the lab use (the
// node planner with YAML and zod, the Kubernetes client).
const FORBIDDEN =
  /@peculiar|reflect-metadata|tsyringe|pvtsutils|asn1js|\/node_modules\/(zod|yaml|@kubernetes)\/|\/dist\/src\/(netplan|topology|controlplane|lab)\//;

const HOOKS = `
import { appendFileSync } from "node:fs";
let file;
export function initialize(data) { file = data.file; }
export async function resolve(specifier, context, next) {
  const resolved = await next(specifier, context);
  appendFileSync(file, resolved.url + "\\n");
  return resolved;
}`;

const dirs: string[] = [];
after(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));

/** Every module URL or CommonJS path the script `body` loads, run as an ES module with node. */
async function modulesLoadedBy(body: string): Promise<string[]> {
  const dir = await mkdtemp(join(tmpdir(), "offmesh-graph-"));
  dirs.push(dir);
  const file = join(dir, "resolved.txt");
  const hooksUrl = `data:text/javascript,${encodeURIComponent(HOOKS)}`;
  const register = `import { register } from "node:module"; register(${JSON.stringify(hooksUrl)}, { data: { file: ${JSON.stringify(file)} } });`;
  const script = `${body}
import { createRequire } from "node:module";
process.stdout.write(JSON.stringify(Object.keys(createRequire(${JSON.stringify(fromRoot("package.json"))}).cache)));`;
  const run = spawnSync(
    process.execPath,
    ["--import", `data:text/javascript,${encodeURIComponent(register)}`, "--input-type=module", "-e", script],
    { encoding: "utf8", timeout: 30_000, cwd: fromRoot() },
  );
  assert.equal(run.status, 0, `the script failed: ${run.stderr}`);
  const resolved = (await readFile(file, "utf8")).split("\n").filter(Boolean);
  return [...resolved, ...(JSON.parse(run.stdout) as string[])];
}

const url = (...parts: string[]): string => pathToFileURL(fromRoot("dist", "src", ...parts)).href;

describe("the ztunnel's module graph", () => {
  it("does not include @peculiar/x509, the planner, YAML or zod", async () => {
    // As bin/offmesh runs `offmesh ztunnel run`: main.js, then the ztunnel command group.
    const loaded = await modulesLoadedBy(`
const { buildProgram } = await import(${JSON.stringify(url("cli", "main.js"))});
await buildProgram({ out() {}, err() {} }, () => {}, ["ztunnel", "run"]);
await import(${JSON.stringify(url("ztunnel", "daemon.js"))});`);
    assert.ok(loaded.includes(url("ztunnel", "daemon.js")), "the daemon was loaded");
    assert.ok(loaded.includes(url("ztunnel", "identity", "csr.js")), "with its certificate code");
    assert.ok(
      loaded.some((u) => u.includes("/node_modules/pino/")),
      "packages are seen too",
    );
    assert.deepEqual(
      loaded.filter((u) => FORBIDDEN.test(u)),
      [],
    );
  });

  it("would see them if they were loaded", async () => {
    // The check above is only as good as the recording: loading x509 the project's way must show.
    const loaded = await modulesLoadedBy(`await import(${JSON.stringify(url("identity", "x509.js"))});`);
    assert.ok(
      loaded.some((u) => u.includes("/node_modules/@peculiar/x509/")),
      "x509 seen",
    );
    assert.ok(
      loaded.some((u) => u.includes("/node_modules/reflect-metadata/")),
      "reflect-metadata seen",
    );
    assert.ok(
      loaded.some((u) => u.includes("/node_modules/tsyringe/")),
      "tsyringe seen",
    );
  });
});
