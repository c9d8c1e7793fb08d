// @peculiar/x509 resolves its algorithms through tsyringe, which needs the Reflect metadata API:
// the polyfill is imported first (ES modules evaluate imports in order). Import x509 from here.
import "reflect-metadata";
import * as x509 from "@peculiar/x509";

x509.cryptoProvider.set(globalThis.crypto);

export { x509 };
