// @xdp-ts/loader: a thin libbpf binding. See README.md.
export {
  BpfError, KeyExistsError, KeyNotExistError, MapFullError, PermissionError, VerifierError,
} from './errors.js';
export { BpfObject, type BtfStruct, type MapSpec, type OpenOptions } from './object.js';
export {
  BpfMap, MAP_TYPE, MapBatch, MapBatchCursor, numPossibleCpus, type MapInfo, type UpdateFlag,
} from './map.js';
export {
  Link, LINK_TYPE, PROG_TYPE, Program, TEST_RUN_XDP_LIVE_FRAMES, XDP_ACTION, xdpLinks, xdpQuery,
  type LinkInfo, type XdpAttachment, type ProgramInfo, type TestRunOptions, type TestRunResult, type XdpMode,
} from './program.js';
export { RingBufferReader } from './ringbuf.js';
export { flock, ifIndex, ifName } from './sys.js';
export {
  checkLayout, closeMaps, codec, codecs, hostOrder, index, mapDef, objectFingerprint, objectLayout, openMaps, perCpuMapDef, rawMapDef,
  readArray, readBytes, setGlobals, structCodec, TypedMap, TypedPerCpuMap, writeArray, writeBytes,
  type Codec, type ElementReaders, type FieldReaders, type GlobalDefs, type MapDef, type OpenedMaps, type StructCodec, type TypedBatch,
} from './typed.js';
export { generate, type GenerateOptions } from './gen.js';
