// The node proxy's side of Istio's CA protocol: one CreateCertificate call per CSR, on a TLS
// channel to the control plane, authenticated with the proxy's bearer token, asking for a workload
// identity through `metadata.ImpersonatedIdentity` (the proxy acts for the pods it serves).
import * as grpc from "@grpc/grpc-js";
import { createCaClient, createCertificate } from "../../xds/grpc.js";
import { CertificateRequestError } from "./errors.js";

/**
 * Request-metadata key naming the identity the certificate is for; upstream's name, and the one
 * the control plane reads (IMPERSONATED_IDENTITY in src/controlplane/grpc-server.ts).
 */
export const IMPERSONATED_IDENTITY_KEY = "ImpersonatedIdentity";

export const DEFAULT_CA_TIMEOUT_MS = 10_000;

export interface CertificateSigningRequest {
  readonly csrPem: string;
  readonly identity: string;
  readonly lifetimeSeconds: number;
}

/** Signs a CSR; answers the PEM chain, leaf first, root (bundle) last. */
export type CertificateSigner = (req: CertificateSigningRequest) => Promise<string[]>;

export interface GrpcCertificateSignerOptions {
  /** host:port of the control plane's gRPC (xDS + CA) listener. */
  readonly target: string;
  /** PEM of the CA(s) that sign the control plane's serving certificate. */
  readonly rootCaPem: string;
  /** Name to verify the serving certificate against when it differs from the target's host. */
  readonly serverName?: string;
  /** The proxy's token, read before every request so that a rotated token is picked up. */
  readonly token: () => string | Promise<string>;
  /** Deadline of one request. Default 10 s. */
  readonly timeoutMs?: number;
}

export interface GrpcCertificateSigner {
  readonly sign: CertificateSigner;
  /** Closes the channel; later `sign` calls fail with UNAVAILABLE. */
  close(): void;
}

export function createGrpcCertificateSigner(opts: GrpcCertificateSignerOptions): GrpcCertificateSigner {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_CA_TIMEOUT_MS;
  if (!(timeoutMs > 0)) throw new RangeError(`timeoutMs must be positive, not ${timeoutMs}`);
  const nameOptions: grpc.ChannelOptions =
    opts.serverName === undefined
      ? {}
      : {
          "grpc.ssl_target_name_override": opts.serverName,
          "grpc.default_authority": opts.serverName,
        };
  const client = createCaClient(
    opts.target,
    grpc.credentials.createSsl(Buffer.from(opts.rootCaPem, "utf8")),
    nameOptions,
  );

  const sign: CertificateSigner = async ({ csrPem, identity, lifetimeSeconds }) => {
    let token: string;
    try {
      token = await opts.token();
    } catch (e) {
      throw new CertificateRequestError(
        identity,
        grpc.status.UNAUTHENTICATED,
        `the proxy token cannot be read: ${(e as Error).message}`,
        e,
      );
    }
    const metadata = new grpc.Metadata();
    metadata.set("authorization", `Bearer ${token}`);
    try {
      const res = await createCertificate(
        client,
        {
          csr: csrPem,
          validityDuration: lifetimeSeconds,
          metadata: { [IMPERSONATED_IDENTITY_KEY]: identity },
        },
        metadata,
        { deadline: Date.now() + timeoutMs },
      );
      return res.certChain;
    } catch (e) {
      throw toRequestError(identity, e);
    }
  };
  return { sign, close: () => client.close() };
}

/** grpc-js's ServiceError (code + details) as a CertificateRequestError. */
function toRequestError(identity: string, e: unknown): CertificateRequestError {
  const err = e as Partial<grpc.ServiceError>;
  if (typeof err.code === "number") {
    const reason = err.details || err.message || `gRPC status ${err.code}`;
    return new CertificateRequestError(identity, err.code, reason, e);
  }
  return new CertificateRequestError(identity, grpc.status.UNKNOWN, String((e as Error)?.message ?? e), e);
}
