// Typed failures of obtaining a workload certificate. Each carries the identity it was for, so a
// connection that cannot get its certificate can say which workload is affected and why.
import { status } from "@grpc/grpc-js";

/** The CA refused or could not be reached: the gRPC status and the CA's own reason. */
export class CertificateRequestError extends Error {
  constructor(
    readonly identity: string,
    /** The gRPC status code (`@grpc/grpc-js` `status`), UNKNOWN for failures without one. */
    readonly code: status,
    /** The CA's reason (the status details), or what failed locally. */
    readonly reason: string,
    override readonly cause?: unknown,
  ) {
    super(`certificate for ${identity}: ${status[code] ?? `gRPC status ${code}`}: ${reason}`);
    this.name = "CertificateRequestError";
  }
}

/** The identity cannot be asked for: not a SPIFFE ID, or not of this mesh's trust domain. */
export class CertificateIdentityError extends Error {
  constructor(
    readonly identity: string,
    readonly reason: string,
  ) {
    super(`certificate for ${JSON.stringify(identity)}: ${reason}`);
    this.name = "CertificateIdentityError";
  }
}

/** The CA answered with a chain that is not usable for the identity and key we asked with. */
export class CertificateResponseError extends Error {
  constructor(
    readonly identity: string,
    readonly reason: string,
  ) {
    super(`certificate for ${identity}: the CA's answer is unusable: ${reason}`);
    this.name = "CertificateResponseError";
  }
}

/** `get` on a manager that was closed. */
export class CertificateManagerClosedError extends Error {
  constructor(readonly identity: string) {
    super(`certificate for ${identity}: the certificate manager is closed`);
    this.name = "CertificateManagerClosedError";
  }
}

export type CertificateError =
  | CertificateRequestError
  | CertificateIdentityError
  | CertificateResponseError
  | CertificateManagerClosedError;
