import { native, type RingHandle } from './binding.js';
import { bpfError, call, invalid } from './errors.js';
import { kHandle } from './internal.js';
import { BpfMap, MAP_TYPE } from './map.js';

// Open readers are strongly held so that a reader nobody references keeps
// delivering until close(), like a socket.
const open = new Set<RingBufferReader>();

/**
 * Consumes a BPF_MAP_TYPE_RINGBUF on a native thread and delivers records to
 * `onRecords` in batches, on the event loop. An exception thrown by onRecords
 * is re-thrown asynchronously (an 'uncaughtException'), as is a consumer error.
 * While open, the reader keeps the event loop alive unless unref()'d.
 */
export class RingBufferReader {
  readonly [kHandle]: RingHandle;
  #closing: Promise<void> | undefined;

  constructor(map: BpfMap, onRecords: (records: Buffer[]) => void) {
    const op = 'RingBufferReader';
    if (!(map instanceof BpfMap)) throw new TypeError(`${op}: map must be a BpfMap`);
    if (typeof onRecords !== 'function') throw new TypeError(`${op}: onRecords must be a function`);
    if (map.type !== MAP_TYPE.RINGBUF) throw invalid(`${op}(${map.name})`, 'not a BPF_MAP_TYPE_RINGBUF map');
    const deliver = (records: Buffer[], errno: number): void => {
      try {
        if (records.length > 0) onRecords(records);
      } catch (e) {
        process.nextTick(() => {
          throw e;
        });
      }
      if (errno !== 0) {
        const err = bpfError(`${op}(${map.name})`, errno, 'other', { text: 'consuming the ring buffer failed' });
        process.nextTick(() => {
          throw err;
        });
      }
    };
    this[kHandle] = call(`${op}(${map.name})`, 'other', () => native.ringOpen(map[kHandle], deliver));
    open.add(this);
  }

  /**
   * Stop the consumer thread. Resolves once records consumed before the stop
   * have been delivered. Idempotent.
   */
  close(): Promise<void> {
    if (this.#closing === undefined) {
      open.delete(this);
      this.#closing = native.ringClose(this[kHandle]);
    }
    return this.#closing;
  }

  /** Let the process exit while this reader is open. */
  unref(): void {
    native.ringRef(this[kHandle], false);
  }

  /** Keep the process alive while this reader is open (the default). */
  ref(): void {
    native.ringRef(this[kHandle], true);
  }
}
