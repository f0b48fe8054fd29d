// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
// Thin wrappers over the fd-based bpf(2) calls: pins, ids, map element ops,
// program info / test run, and BPF links.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/if_link.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "common.h"

namespace xtl {

template <typename T>
static void InitOpts(T* opts) {
  memset(opts, 0, sizeof(*opts));
  opts->sz = sizeof(*opts);
}

static Napi::Value NewFd(Napi::Env env, int fd) { return Wrap(env, new FdRes(RegistryOf(env), fd)); }

static FdRes* MapArg(const Napi::CallbackInfo& info, size_t i, const char* op) {
  FdRes* r = Unwrap<FdRes>(info[i], "fd");
  LiveFd(info.Env(), r, op);
  if (!r->has_map_meta) ThrowErrno(info.Env(), op, EBADFD);
  return r;
}

static void CheckLen(Napi::Env env, const char* op, size_t got, size_t want) {
  if (got != want) ThrowErrno(env, op, EINVAL);
}

// ---- generic fd ops -----------------------------------------------------------

static Napi::Value FdClose(const Napi::CallbackInfo& info) {
  Unwrap<FdRes>(info[0], "fd")->Close();
  return info.Env().Undefined();
}

static Napi::Value FdNumber(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), Unwrap<FdRes>(info[0], "fd")->fd);
}

static Napi::Value ObjPin(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = LiveFd(env, Unwrap<FdRes>(info[0], "fd"), "bpf_obj_pin");
  int err = bpf_obj_pin(fd, ArgString(info, 1).c_str());
  if (err != 0) ThrowErrno(env, "bpf_obj_pin", err);
  return env.Undefined();
}

static Napi::Value ObjGet(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = bpf_obj_get(ArgString(info, 0).c_str());
  if (fd < 0) ThrowErrno(env, "bpf_obj_get", errno);
  return NewFd(env, fd);
}

// fdById(kind: 'map' | 'prog' | 'link', id)
static Napi::Value FdById(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string kind = ArgString(info, 0);
  uint32_t id = ArgU32(info, 1);
  int fd;
  const char* op;
  if (kind == "map") {
    op = "bpf_map_get_fd_by_id";
    fd = bpf_map_get_fd_by_id(id);
  } else if (kind == "prog") {
    op = "bpf_prog_get_fd_by_id";
    fd = bpf_prog_get_fd_by_id(id);
  } else {
    op = "bpf_link_get_fd_by_id";
    fd = bpf_link_get_fd_by_id(id);
  }
  if (fd < 0) ThrowErrno(env, op, errno);
  return NewFd(env, fd);
}

// nextId(kind, startId) -> next id, or null at the end
static Napi::Value NextId(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string kind = ArgString(info, 0);
  uint32_t start = ArgU32(info, 1), next = 0;
  int err;
  const char* op;
  if (kind == "map") {
    op = "bpf_map_get_next_id";
    err = bpf_map_get_next_id(start, &next);
  } else if (kind == "prog") {
    op = "bpf_prog_get_next_id";
    err = bpf_prog_get_next_id(start, &next);
  } else {
    op = "bpf_link_get_next_id";
    err = bpf_link_get_next_id(start, &next);
  }
  if (err == -ENOENT) return env.Null();
  if (err != 0) ThrowErrno(env, op, err);
  return Napi::Number::New(env, next);
}

// ---- maps ---------------------------------------------------------------------

static bool IsPerCpu(uint32_t type) {
  return type == BPF_MAP_TYPE_PERCPU_HASH || type == BPF_MAP_TYPE_PERCPU_ARRAY ||
         type == BPF_MAP_TYPE_LRU_PERCPU_HASH || type == BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE;
}

// mapInfo(fd) -> MapInfo; also records the sizes used for buffer allocation.
static Napi::Value MapInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "bpf_obj_get_info_by_fd";
  FdRes* r = Unwrap<FdRes>(info[0], "fd");
  bpf_map_info mi;
  memset(&mi, 0, sizeof(mi));
  uint32_t len = sizeof(mi);
  int err = bpf_obj_get_info_by_fd(LiveFd(env, r, op), &mi, &len);
  if (err != 0) ThrowErrno(env, op, err);
  if (!r->has_map_meta) {
    uint32_t vs = mi.value_size;
    if (IsPerCpu(mi.type)) {
      int ncpus = libbpf_num_possible_cpus();
      if (ncpus < 0) ThrowErrno(env, "libbpf_num_possible_cpus", ncpus);
      vs = ((vs + 7) & ~7u) * static_cast<uint32_t>(ncpus);
    }
    r->key_size = mi.key_size;
    r->value_buf_size = vs;
    r->has_map_meta = true;
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", mi.id);
  o.Set("name", mi.name);
  o.Set("type", mi.type);
  o.Set("keySize", mi.key_size);
  o.Set("valueSize", mi.value_size);
  o.Set("maxEntries", mi.max_entries);
  o.Set("flags", mi.map_flags);
  return o;
}

static Napi::Value MapLookup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "bpf_map_lookup_elem";
  FdRes* r = MapArg(info, 0, op);
  Napi::Buffer<uint8_t> key = ArgBuffer(info, 1);
  CheckLen(env, op, key.Length(), r->key_size);
  Napi::Buffer<uint8_t> value = Napi::Buffer<uint8_t>::New(env, r->value_buf_size);
  int err = bpf_map_lookup_elem(r->fd, key.Data(), value.Data());
  if (err == -ENOENT) return env.Null();
  if (err != 0) ThrowErrno(env, op, err);
  return value;
}

static Napi::Value MapUpdate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "bpf_map_update_elem";
  FdRes* r = MapArg(info, 0, op);
  Napi::Buffer<uint8_t> key = ArgBuffer(info, 1), value = ArgBuffer(info, 2);
  CheckLen(env, op, key.Length(), r->key_size);
  CheckLen(env, op, value.Length(), r->value_buf_size);
  int err = bpf_map_update_elem(r->fd, key.Data(), value.Data(), ArgU32(info, 3));
  if (err != 0) ThrowErrno(env, op, err);
  return env.Undefined();
}

static Napi::Value MapDelete(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "bpf_map_delete_elem";
  FdRes* r = MapArg(info, 0, op);
  Napi::Buffer<uint8_t> key = ArgBuffer(info, 1);
  CheckLen(env, op, key.Length(), r->key_size);
  int err = bpf_map_delete_elem(r->fd, key.Data());
  if (err == -ENOENT) return Napi::Boolean::New(env, false);
  if (err != 0) ThrowErrno(env, op, err);
  return Napi::Boolean::New(env, true);
}

// mapNextKey(fd, key | null) -> next key, or null at the end
static Napi::Value MapNextKey(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "bpf_map_get_next_key";
  FdRes* r = MapArg(info, 0, op);
  const void* cur = nullptr;
  if (!info[1].IsNull()) {
    Napi::Buffer<uint8_t> key = ArgBuffer(info, 1);
    CheckLen(env, op, key.Length(), r->key_size);
    cur = key.Data();
  }
  Napi::Buffer<uint8_t> next = Napi::Buffer<uint8_t>::New(env, r->key_size);
  int err = bpf_map_get_next_key(r->fd, cur, next.Data());
  if (err == -ENOENT) return env.Null();
  if (err != 0) ThrowErrno(env, op, err);
  return next;
}

// Large enough for every map type's batch token (u32 bucket for hash maps, a
// key for the generic implementation).
static size_t BatchTokenSize(const FdRes* r) { return std::max<size_t>(r->key_size, 8); }

// mapLookupBatch(fd, token | null, count) -> { count, keys, values, token, done }
static Napi::Value MapLookupBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "bpf_map_lookup_batch";
  FdRes* r = MapArg(info, 0, op);
  size_t tsize = BatchTokenSize(r);
  void* in = nullptr;
  if (!info[1].IsNull()) {
    Napi::Buffer<uint8_t> tok = ArgBuffer(info, 1);
    CheckLen(env, op, tok.Length(), tsize);
    in = tok.Data();
  }
  uint32_t count = ArgU32(info, 2);
  if (count == 0) ThrowErrno(env, op, EINVAL);
  Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(env, tsize);
  memset(out.Data(), 0, tsize);
  Napi::Buffer<uint8_t> keys = Napi::Buffer<uint8_t>::New(env, static_cast<size_t>(count) * r->key_size);
  Napi::Buffer<uint8_t> values = Napi::Buffer<uint8_t>::New(env, static_cast<size_t>(count) * r->value_buf_size);
  bpf_map_batch_opts opts;
  InitOpts(&opts);
  uint32_t n = count;
  int err = bpf_map_lookup_batch(r->fd, in, out.Data(), keys.Data(), values.Data(), &n, &opts);
  if (err != 0 && err != -ENOENT) ThrowErrno(env, op, err);
  Napi::Object o = Napi::Object::New(env);
  o.Set("count", n);
  o.Set("keys", keys);
  o.Set("values", values);
  o.Set("token", out);
  o.Set("done", err == -ENOENT);
  return o;
}

// ---- programs -----------------------------------------------------------------

static Napi::Value ProgInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "bpf_obj_get_info_by_fd";
  bpf_prog_info pi;
  memset(&pi, 0, sizeof(pi));
  uint32_t len = sizeof(pi);
  int err = bpf_obj_get_info_by_fd(LiveFd(env, Unwrap<FdRes>(info[0], "fd"), op), &pi, &len);
  if (err != 0) ThrowErrno(env, op, err);
  char tag[2 * BPF_TAG_SIZE + 1];
  for (int i = 0; i < BPF_TAG_SIZE; i++) snprintf(tag + 2 * i, 3, "%02x", pi.tag[i]);
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", pi.id);
  o.Set("name", pi.name);
  o.Set("tag", tag);
  o.Set("type", pi.type);
  o.Set("jitedLen", pi.jited_prog_len);
  o.Set("xlatedLen", pi.xlated_prog_len);
  o.Set("runTimeNs", Napi::BigInt::New(env, static_cast<uint64_t>(pi.run_time_ns)));
  o.Set("runCount", Napi::BigInt::New(env, static_cast<uint64_t>(pi.run_cnt)));
  return o;
}

// progTestRun(fd, { data, ctx, repeat, flags, batchSize, dataOutSize, cpu })
static Napi::Value ProgTestRun(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "bpf_prog_test_run_opts";
  int fd = LiveFd(env, Unwrap<FdRes>(info[0], "fd"), op);
  if (!info[1].IsObject()) throw Napi::TypeError::New(env, "expected options");
  Napi::Object a = info[1].As<Napi::Object>();
  Napi::Value data = a.Get("data"), ctx = a.Get("ctx");
  if (!data.IsBuffer()) throw Napi::TypeError::New(env, "data must be a Buffer");
  auto in = data.As<Napi::Buffer<uint8_t>>();
  bpf_test_run_opts o;
  InitOpts(&o);
  o.data_in = in.Data();
  o.data_size_in = in.Length();
  o.repeat = a.Get("repeat").As<Napi::Number>().Int32Value();
  o.flags = a.Get("flags").As<Napi::Number>().Uint32Value();
  o.batch_size = a.Get("batchSize").As<Napi::Number>().Uint32Value();
  o.cpu = a.Get("cpu").As<Napi::Number>().Uint32Value();
  uint32_t out_size = a.Get("dataOutSize").As<Napi::Number>().Uint32Value();
  std::vector<uint8_t> out(out_size);
  if (out_size > 0) {
    o.data_out = out.data();
    o.data_size_out = out_size;
  }
  if (ctx.IsBuffer()) {
    auto c = ctx.As<Napi::Buffer<uint8_t>>();
    o.ctx_in = c.Data();
    o.ctx_size_in = c.Length();
  }
  int err = bpf_prog_test_run_opts(fd, &o);
  if (err != 0) ThrowErrno(env, op, err);
  Napi::Object res = Napi::Object::New(env);
  res.Set("retval", o.retval);
  res.Set("duration", o.duration);
  res.Set("data", Napi::Buffer<uint8_t>::Copy(env, out.data(), std::min(o.data_size_out, out_size)));
  return res;
}

// ---- links --------------------------------------------------------------------

// linkCreateXdp(prog, ifindex, xdpFlags) -> link fd
static Napi::Value LinkCreateXdp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "bpf_link_create";
  int prog = LiveFd(env, Unwrap<FdRes>(info[0], "fd"), op);
  bpf_link_create_opts opts;
  InitOpts(&opts);
  opts.flags = ArgU32(info, 2);
  int fd = bpf_link_create(prog, static_cast<int>(ArgU32(info, 1)), BPF_XDP, &opts);
  if (fd < 0) ThrowErrno(env, op, fd);
  return NewFd(env, fd);
}

// linkCreateTracing(prog) -> link fd: a tracing program (tp_btf, fentry, fexit)
// on the tracepoint or kernel function it was loaded for (its attach_btf_id)
static Napi::Value LinkCreateTracing(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "bpf_raw_tracepoint_open";
  int prog = LiveFd(env, Unwrap<FdRes>(info[0], "fd"), op);
  int fd = bpf_raw_tracepoint_open(nullptr, prog);
  if (fd < 0) ThrowErrno(env, op, fd);
  return NewFd(env, fd);
}

static Napi::Value LinkUpdate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "bpf_link_update";
  int link = LiveFd(env, Unwrap<FdRes>(info[0], "fd"), op);
  int prog = LiveFd(env, Unwrap<FdRes>(info[1], "fd"), op);
  int err = bpf_link_update(link, prog, nullptr);
  if (err != 0) ThrowErrno(env, op, err);
  return env.Undefined();
}

static Napi::Value LinkDetach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "bpf_link_detach";
  int err = bpf_link_detach(LiveFd(env, Unwrap<FdRes>(info[0], "fd"), op));
  if (err != 0) ThrowErrno(env, op, err);
  return env.Undefined();
}

static Napi::Value LinkInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "bpf_obj_get_info_by_fd";
  bpf_link_info li;
  memset(&li, 0, sizeof(li));
  uint32_t len = sizeof(li);
  int err = bpf_obj_get_info_by_fd(LiveFd(env, Unwrap<FdRes>(info[0], "fd"), op), &li, &len);
  if (err != 0) ThrowErrno(env, op, err);
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", li.id);
  o.Set("progId", li.prog_id);
  o.Set("type", li.type);
  if (li.type == BPF_LINK_TYPE_XDP) o.Set("ifindex", li.xdp.ifindex);
  return o;
}

void InitFd(Napi::Env env, Napi::Object exports) {
  exports.Set("fdClose", Napi::Function::New(env, FdClose));
  exports.Set("fdNumber", Napi::Function::New(env, FdNumber));
  exports.Set("objPin", Napi::Function::New(env, ObjPin));
  exports.Set("objGet", Napi::Function::New(env, ObjGet));
  exports.Set("fdById", Napi::Function::New(env, FdById));
  exports.Set("nextId", Napi::Function::New(env, NextId));
  exports.Set("mapInfo", Napi::Function::New(env, MapInfo));
  exports.Set("mapLookup", Napi::Function::New(env, MapLookup));
  exports.Set("mapUpdate", Napi::Function::New(env, MapUpdate));
  exports.Set("mapDelete", Napi::Function::New(env, MapDelete));
  exports.Set("mapNextKey", Napi::Function::New(env, MapNextKey));
  exports.Set("mapLookupBatch", Napi::Function::New(env, MapLookupBatch));
  exports.Set("progInfo", Napi::Function::New(env, ProgInfo));
  exports.Set("progTestRun", Napi::Function::New(env, ProgTestRun));
  exports.Set("linkCreateXdp", Napi::Function::New(env, LinkCreateXdp));
  exports.Set("linkCreateTracing", Napi::Function::New(env, LinkCreateTracing));
  exports.Set("linkUpdate", Napi::Function::New(env, LinkUpdate));
  exports.Set("linkDetach", Napi::Function::New(env, LinkDetach));
  exports.Set("linkInfo", Napi::Function::New(env, LinkInfo));
}

}  // namespace xtl
