// @xdp-ts/loader: a thin libbpf binding. See README.md.
export {
  BpfError, KeyExistsError, KeyNotExistError, MapFullError, PermissionError, VerifierError,
} from './errors.js';
export { BpfObject, type BtfStruct, type MapSpec, type OpenOptions } from './object.js';
export {
  BpfMap, MAP_TYPE, MapBatchCursor, numPossibleCpus, type BatchBlock, type BatchResult, type MapInfo, type UpdateFlag,
} from './map.js';
export {
  Link, LINK_TYPE, PROG_TYPE, Program, TEST_RUN_XDP_LIVE_FRAMES, XDP_ACTION, xdpLinks,
  type LinkInfo, type ProgramInfo, type TestRunOptions, type TestRunResult, type XdpMode,
} from './program.js';
export { RingBufferReader } from './ringbuf.js';
export { flock, ifIndex, ifName } from './sys.js';
