import { Command, CommanderError } from "commander";
import { EXIT, processIo } from "./output.js";
import type { Io } from "./output.js";

type AddCommands = (program: Command, io: Io, setExit: (code: number) => void) => void;

// The daemons' command groups, loaded only when asked for: a ztunnel process should not carry the
// control plane, the lab and their libraries in its memory.
const COMMAND_GROUPS: Readonly<Record<string, () => Promise<AddCommands>>> = {
  agent: async () => (await import("./agent.js")).addAgentCommands,
  controlplane: async () => (await import("./controlplane.js")).addControlPlaneCommands,
  ztunnel: async () => (await import("./ztunnel.js")).addZtunnelCommands,
  lab: async () => (await import("./lab.js")).addLabCommands,
};

/**
 * Build the `offmesh` command for `argv`: every command group when help or an unknown command is
 * asked for, else just the one named. Every action resolves to an exit code; nothing calls
 * process.exit.
 */
export async function buildProgram(
  io: Io,
  setExit: (code: number) => void,
  argv: readonly string[] = [],
): Promise<Command> {
  const program = new Command("offmesh")
    .description("offmesh: an ambient service mesh whose node proxy runs on paired DPU nodes")
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.out(s), writeErr: (s) => io.err(s) })
    .showHelpAfterError();

  program
    .command("validate")
    .description("check a cluster-conf.yaml and summarise its pairs and singles")
    .argument("<cluster-conf.yaml>", "the cluster description")
    .option("--json", "machine-readable output")
    .action(async (file: string, opts: { json?: boolean }) => {
      // Loaded when run, like the groups below: the netplan, YAML and zod are no daemon's business.
      const { validateCommand } = await import("./validate.js");
      setExit(await validateCommand(io, file, opts));
    });

  program
    .command("render")
    .description("print the desired network state offmesh programs on one node")
    .requiredOption("--config <cluster-conf.yaml>", "the cluster description")
    .requiredOption(
      "--facts <node-facts.yaml>",
      "what the node knows about itself and its cluster (docs/node-facts.md)",
    )
    .requiredOption("--node <name>", "the node to plan for, as named in cluster-conf.yaml")
    .option("--json", "machine-readable output")
    .action(async (opts: { config: string; facts: string; node: string; json?: boolean }) => {
      const { renderCommand } = await import("./render.js");
      setExit(await renderCommand(io, opts));
    });

  const first = argv[0];
  const groups = first !== undefined && first in COMMAND_GROUPS ? [first] : Object.keys(COMMAND_GROUPS);
  for (const name of groups) (await COMMAND_GROUPS[name]?.())?.(program, io, setExit);
  return program;
}

export async function runCli(argv: readonly string[], io: Io = processIo): Promise<number> {
  let code: number = EXIT.ok;
  const program = await buildProgram(io, (c) => (code = c), argv);
  try {
    await program.parseAsync([...argv], { from: "user" });
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    // A failure the command did not turn into an exit code (a lock held by another agent, a
    // kernel command that failed): one clear line, and the stack only when asked for.
    io.err(`error: ${(err as Error).message}\n`);
    if (process.env.OFFMESH_DEBUG) io.err(`${(err as Error).stack ?? ""}\n`);
    return EXIT.invalid;
  }
  return code;
}
