/**
 * connrate's errors: each names the operation, carries an errno-style code and
 * the exit status the CLI uses for it.
 */

/** Exit statuses of bin/connrate. */
export const EXIT = {
  OK: 0,
  /** A runtime failure: the kernel, the file system, the network said no. */
  FAILURE: 1,
  /** A usage error or a bad value: nothing was changed. */
  USAGE: 2,
  /** No datapath is running (nothing pinned at CONNRATE_PIN_DIR). */
  NO_DATAPATH: 3,
} as const;
export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

export class ConnrateError extends Error {
  /** errno-style code: EINVAL, ENOENT, EBUSY … */
  readonly code: string;
  /** What was being done: "extc value set", "store.read" … */
  readonly op: string;
  readonly exitCode: ExitCode;

  constructor(op: string, code: string, message: string, exitCode: ExitCode = EXIT.FAILURE, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.op = op;
    this.code = code;
    this.exitCode = exitCode;
  }
}

/** A value, argument or file content that is not acceptable. */
export class InvalidValueError extends ConnrateError {
  constructor(op: string, message: string) {
    super(op, 'EINVAL', message, EXIT.USAGE);
  }
}

/** The store file cannot be read or trusted. */
export class StoreError extends ConnrateError {
  constructor(op: string, readonly file: string, message: string, code = 'EINVAL', options?: { cause?: unknown }) {
    super(op, code, `${file}: ${message}`, EXIT.FAILURE, options);
  }
}

/** Nothing is pinned where the datapath should be. */
export class NoDatapathError extends ConnrateError {
  constructor(op: string, readonly pinDir: string) {
    super(op, 'ENOENT', `no connrate datapath at ${pinDir}: is it loaded? Start it with "connrate run"`, EXIT.NO_DATAPATH);
  }
}
