import * as grpc from "@grpc/grpc-js";
import type { Logger } from "pino";
import { formatSpiffeId } from "../identity/spiffe.js";
import { adsServiceDefinition, caServiceDefinition, MAX_MESSAGE_BYTES } from "../xds/grpc.js";
import type {
  DeltaDiscoveryRequest,
  DeltaDiscoveryResponse,
  IstioCertificateRequest,
  IstioCertificateResponse,
} from "../xds/messages.js";
import type { AuthenticationResult, ProxyAuthenticator } from "./auth/tokens.js";
import { authorizeCsr } from "./ca/authorize.js";
import { CsrRejectedError, leafTtlSeconds } from "./ca/root.js";
import type { RootCa } from "./ca/root.js";
import type { ControlPlane } from "./controlplane.js";
import type { ProxySession } from "./xds/session.js";

export interface GrpcServerOptions {
  /** host:port; port 0 picks a free one. */
  readonly listen: string;
  /** The serving certificate (from the CA); `insecure` only for tests of the protocol itself. */
  readonly tls: { readonly certPem: string; readonly keyPem: string } | "insecure";
  readonly authenticator: ProxyAuthenticator;
  /** `namespace/serviceaccount` of node proxies allowed to connect and to ask for other identities. */
  readonly trustedAccounts: readonly string[];
  readonly root: RootCa;
  readonly trustDomain: string;
  readonly log: Logger;
}

export interface RunningGrpcServer {
  readonly port: number;
  close(): Promise<void>;
}

/** Metadata key holding the identity a node proxy asks a certificate for (upstream's name). */
export const IMPERSONATED_IDENTITY = "ImpersonatedIdentity";

/** Serve delta ADS and the CA on one port, as istiod does on 15012. */
export async function startGrpcServer(cp: ControlPlane, opts: GrpcServerOptions): Promise<RunningGrpcServer> {
  const server = new grpc.Server({
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    "grpc.keepalive_time_ms": 30_000,
  });
  const authenticate = async (metadata: grpc.Metadata): Promise<AuthenticationResult> => {
    const header = metadata.get("authorization")[0];
    try {
      return await opts.authenticator.authenticate(typeof header === "string" ? header : undefined, () =>
        cp.cluster().snapshot(),
      );
    } catch (err) {
      return { error: `authentication failed: ${(err as Error).message}` };
    }
  };

  server.addService(adsServiceDefinition, {
    DeltaAggregatedResources: (
      call: grpc.ServerDuplexStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>,
    ) => {
      // Authentication may wait on the API server; requests that arrive meanwhile are held and
      // handed to the session in order once it exists.
      const pending: DeltaDiscoveryRequest[] = [];
      let session: ProxySession | undefined;
      let ended = false;
      const close = (): void => {
        if (ended) return;
        ended = true;
        if (session) cp.close(session);
      };
      const handle = (req: DeltaDiscoveryRequest): void => {
        if (!session) {
          pending.push(req);
          return;
        }
        try {
          session.onRequest(req);
        } catch (err) {
          opts.log.error({ proxy: session.id, err: (err as Error).message }, "xDS request failed");
          call.emit("error", { code: grpc.status.INTERNAL, details: (err as Error).message });
          close();
        }
      };
      call.on("data", handle);
      call.on("end", () => {
        close();
        call.end();
      });
      call.on("cancelled", close);
      call.on("error", close);
      call.on("close", close);
      void authenticate(call.metadata).then((peer) => {
        if (ended) return;
        const refusal =
          "error" in peer
            ? `unauthenticated: ${peer.error}`
            : opts.trustedAccounts.includes(`${peer.namespace}/${peer.serviceAccount}`)
              ? undefined
              : `${peer.namespace}/${peer.serviceAccount} is not a trusted node proxy account`;
        if (refusal || "error" in peer) {
          cp.metrics.rejectedStreams.inc();
          opts.log.warn({ peer: call.getPeer(), reason: refusal }, "xDS stream refused");
          call.emit("error", { code: grpc.status.UNAUTHENTICATED, details: refusal ?? "unauthenticated" });
          close();
          return;
        }
        session = cp.open(peer, (res) => {
          if (!call.writableEnded && !call.destroyed) call.write(res);
        });
        for (const req of pending.splice(0)) {
          if (ended) break;
          handle(req);
        }
      });
    },
  });

  server.addService(caServiceDefinition, {
    CreateCertificate: (
      call: grpc.ServerUnaryCall<IstioCertificateRequest, IstioCertificateResponse>,
      callback: grpc.sendUnaryData<IstioCertificateResponse>,
    ) => {
      void authenticate(call.metadata)
        .then((caller) => createCertificate(cp, opts, caller, call.request))
        .then(
          (res) => callback(null, res),
          (err: { code: grpc.status; details: string }) => callback(err),
        );
    },
  });

  const credentials =
    opts.tls === "insecure"
      ? grpc.ServerCredentials.createInsecure()
      : grpc.ServerCredentials.createSsl(null, [
          { cert_chain: Buffer.from(opts.tls.certPem), private_key: Buffer.from(opts.tls.keyPem) },
        ]);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(opts.listen, credentials, (err, p) => (err ? reject(err) : resolve(p))),
  );
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.tryShutdown(() => resolve());
        // Streams of connected proxies never end on their own.
        setTimeout(() => server.forceShutdown(), 1000).unref();
      }),
  };
}

async function createCertificate(
  cp: ControlPlane,
  opts: GrpcServerOptions,
  caller: AuthenticationResult,
  req: IstioCertificateRequest,
): Promise<IstioCertificateResponse> {
  const fail = (
    code: grpc.status,
    result: string,
    details: string,
  ): { code: grpc.status; details: string } => {
    cp.metrics.csrs.inc({ result });
    opts.log.warn({ result, details }, "certificate request refused");
    return { code, details };
  };
  if ("error" in caller)
    throw fail(grpc.status.UNAUTHENTICATED, "denied", `unauthenticated: ${caller.error}`);
  const asked = req.metadata?.[IMPERSONATED_IDENTITY];
  let identity: string;
  if (asked === undefined) {
    // No impersonation: the caller's own identity.
    identity = formatSpiffeId({
      trustDomain: opts.trustDomain,
      namespace: caller.namespace,
      serviceAccount: caller.serviceAccount,
    });
  } else {
    if (typeof asked !== "string")
      throw fail(grpc.status.INVALID_ARGUMENT, "invalid", `${IMPERSONATED_IDENTITY} must be a string`);
    const topology = cp.currentTopology().topology;
    if (!topology)
      throw fail(
        grpc.status.UNAVAILABLE,
        "denied",
        "no topology loaded; cannot tell which nodes the caller serves",
      );
    const decision = authorizeCsr({
      caller,
      identity: asked,
      snapshot: cp.cluster().snapshot(),
      topology,
      trustedAccounts: opts.trustedAccounts,
      trustDomain: opts.trustDomain,
    });
    if (!decision.ok) throw fail(grpc.status.PERMISSION_DENIED, "denied", decision.reason);
    identity = asked;
  }
  try {
    const leaf = await opts.root.signWorkload(req.csr, identity, leafTtlSeconds(req.validityDuration));
    cp.metrics.csrs.inc({ result: "granted" });
    opts.log.info(
      { caller: `${caller.namespace}/${caller.podName}`, node: caller.node, identity },
      "certificate issued",
    );
    return { certChain: opts.root.certChain(leaf) };
  } catch (err) {
    if (err instanceof CsrRejectedError) throw fail(grpc.status.INVALID_ARGUMENT, "invalid", err.message);
    throw fail(grpc.status.INTERNAL, "invalid", (err as Error).message);
  }
}
