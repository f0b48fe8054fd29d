/**
 * Fill a loaded datapath's bucket map with `n` keys, as if n (source, port)
 * pairs had opened connections: sources 198.18.0.0/15 and on (v4-mapped),
 * port 443, TCP, each with a bucket and `drops(i)` drops counted on CPU 0.
 */
import { numPossibleCpus } from '@xdp-ts/loader';
import type { Datapath } from '../src/control/datapath.js';
import { CrBucket, CrBucketKey, CrDropStats, CrProto } from '../src/control/datapath.gen.js';
import { addrBytes, v4Bytes } from '../src/domain/addr.js';

export function fillKeys(dp: Datapath, n: number, drops: (i: number) => bigint): void {
  const { buckets, dropStats } = dp.maps;
  const src = addrBytes('198.18.0.0');
  const v4 = v4Bytes(src);
  const address = new DataView(v4.buffer, v4.byteOffset, v4.length);
  const key = { ...CrBucketKey.zero(), src: { bytes: src }, dport: 443, proto: CrProto.CR_PROTO_TCP };
  const perCpu = Array.from({ length: numPossibleCpus() }, () => CrDropStats.zero());
  for (let i = 0; i < n; i++) {
    address.setUint32(0, 0xc6120000 + i); // network order
    buckets.update(key, CrBucket.zero());
    perCpu[0] = { drops: drops(i), lastDropNs: 0n };
    dropStats.update(key, perCpu);
  }
}
