/**
 * connrate on the e2e testbed: the daemon and the CLI as an admin runs them,
 * each command under its own `ip netns exec` (its own mount namespace).
 */
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { type ExecResult, type Testbed, waitFor } from './testbed.js';

export const BIN = fileURLToPath(new URL('../../bin/connrate', import.meta.url));
export const APP = 'securepoint_firewall';

export class Appliance {
  #daemon: ChildProcess | undefined;
  #log = '';

  constructor(readonly tb: Testbed) {}

  /** Run a CLI command in `ns` (default: the appliance). */
  cli(args: string[], ns: string = this.tb.app): ExecResult {
    return this.tb.exec(ns, [BIN, ...args]);
  }

  set(variable: string, value: string): ExecResult {
    return this.cli(['extc', 'value', 'set', 'application', APP, 'variable', variable, 'value', ...value.split(' ')]);
  }

  /** set, and fail loudly when refused. */
  configure(values: Record<string, string>): void {
    for (const [k, v] of Object.entries(values)) {
      const r = this.set(k, v);
      if (r.status !== 0) throw new Error(`extc value set ${k} ${v}: ${r.stderr}`);
    }
  }

  updateRule(ns?: string): ExecResult {
    return this.cli(['system', 'update', 'rule'], ns);
  }

  /** Start `connrate run` in the appliance namespace; resolves once it is attached. */
  async start(args: string[] = ['--metrics', 'off'], env?: Record<string, string>): Promise<void> {
    const child = this.tb.spawn(this.tb.app, [BIN, 'run', ...args], env ? { env } : {});
    this.#daemon = child;
    this.#log = '';
    const onData = (d: Buffer): void => void (this.#log += d.toString());
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    let exited = false;
    child.on('exit', () => (exited = true));
    await waitFor(() => exited || this.#log.includes('connrate: running on'), 15_000, 'the daemon to attach');
    if (exited) throw new Error(`connrate run exited:\n${this.#log}`);
  }

  get log(): string {
    return this.#log;
  }

  get pid(): number | undefined {
    return this.#daemon?.pid;
  }

  /** SIGTERM (clean stop) or SIGKILL (crash); resolves when the process is gone. */
  async stop(signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<number | null> {
    const child = this.#daemon;
    if (!child || child.exitCode !== null || child.signalCode !== null) return child?.exitCode ?? null;
    const done = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    child.kill(signal);
    const code = await done;
    this.#daemon = undefined;
    return code;
  }

  /** Stop the daemon and remove the datapath, whatever state it is in. */
  async reset(): Promise<void> {
    await this.stop('SIGKILL');
    this.cli(['detach']);
    this.tb.exec(this.tb.app, ['rm', '-f', this.tb.store]);
    this.#log = '';
  }
}
