/** An Authorization that cannot be enforced as sent (found when it is compiled or validated). */
export class InvalidAuthorizationError extends Error {
  constructor(
    /** `<namespace>/<name>` of the policy. */
    readonly policy: string,
    readonly problem: string,
  ) {
    super(`authorization ${policy}: ${problem}`);
    this.name = "InvalidAuthorizationError";
  }
}
