import { runPlugin } from "./plugin.js";
import { callAgent } from "./socket.js";

// The `offmesh-cni` process: bin/offmesh-cni imports this. Only the process's edges live here
// (env, stdin, stdout, stderr, exit code); runPlugin decides everything else.

export async function runPluginProcess(): Promise<number> {
  const outcome = await runPlugin(
    { env: process.env, readStdin },
    { callAgent, log: (message) => process.stderr.write(`offmesh-cni: ${message}\n`) },
  );
  await new Promise<void>((resolve) => process.stdout.write(outcome.stdout, () => resolve()));
  return outcome.exitCode;
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}
