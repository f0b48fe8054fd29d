// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
// bpf_object: open, configure, load, hand out dup'd map/program fds, and BTF
// introspection.
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>

#include <cerrno>
#include <cstring>

#include "common.h"

namespace xtl {

static bpf_object* LiveObj(Napi::Env env, ObjRes* o, const char* op) {
  if (o->obj == nullptr) ThrowErrno(env, op, EBADF);
  return o->obj;
}

static bpf_map* FindMap(Napi::Env env, ObjRes* o, const std::string& name, const char* op) {
  bpf_map* m = bpf_object__find_map_by_name(LiveObj(env, o, op), name.c_str());
  if (m == nullptr) ThrowErrno(env, op, ENOENT);
  return m;
}

static Napi::Value WrapDup(Napi::Env env, int fd, const char* op) {
  if (fd < 0) ThrowErrno(env, op, EBADF);  // not loaded
  int dup = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (dup < 0) ThrowErrno(env, op, errno);
  return Wrap(env, new FdRes(RegistryOf(env), dup));
}

// open(path, kernelLogLevel) -> object handle
static Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0);
  uint32_t level = ArgU32(info, 1);
  auto res = std::make_unique<ObjRes>(RegistryOf(env), nullptr);
  bpf_object_open_opts opts;
  memset(&opts, 0, sizeof(opts));
  opts.sz = sizeof(opts);
  if (level > 0) {
    res->kernel_log_size = 16u << 20;
    res->kernel_log.reset(new char[res->kernel_log_size]);
    res->kernel_log[0] = '\0';
    opts.kernel_log_buf = res->kernel_log.get();
    opts.kernel_log_size = res->kernel_log_size;
    opts.kernel_log_level = level;
  }
  LogCapture cap;
  bpf_object* obj = bpf_object__open_file(path.c_str(), &opts);
  if (obj == nullptr) ThrowErrno(env, "bpf_object__open_file", errno, cap.text());
  res->obj = obj;
  return Wrap(env, res.release());
}

static Napi::Value Load(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ObjRes* o = Unwrap<ObjRes>(info[0], "object");
  bpf_object* obj = LiveObj(env, o, "bpf_object__load");
  LogCapture cap;
  o->loaded = true;  // also after a failed attempt: libbpf may have remapped .rodata read-only
  int err = bpf_object__load(obj);
  if (err != 0) {
    std::string log = cap.text();
    if (o->kernel_log && o->kernel_log[0] != '\0' && log.find(o->kernel_log.get()) == std::string::npos) {
      log += "-- kernel log --\n";
      log += o->kernel_log.get();
    }
    ThrowErrno(env, "bpf_object__load", err, log);
  }
  return env.Undefined();
}

// The kernel log buffer (only when opened with a kernelLogLevel).
static Napi::Value KernelLog(const Napi::CallbackInfo& info) {
  ObjRes* o = Unwrap<ObjRes>(info[0], "object");
  if (!o->kernel_log) return Napi::String::New(info.Env(), "");
  return Napi::String::New(info.Env(), o->kernel_log.get());
}

static Napi::Value Close(const Napi::CallbackInfo& info) {
  Unwrap<ObjRes>(info[0], "object")->Close();
  return info.Env().Undefined();
}

// [{ name, type, internal, keySize, valueSize, maxEntries }]
static Napi::Value Maps(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_object* obj = LiveObj(env, Unwrap<ObjRes>(info[0], "object"), "bpf_object__for_each_map");
  Napi::Array out = Napi::Array::New(env);
  bpf_map* m;
  uint32_t i = 0;
  bpf_object__for_each_map(m, obj) {
    Napi::Object e = Napi::Object::New(env);
    e.Set("name", bpf_map__name(m));
    e.Set("type", static_cast<double>(bpf_map__type(m)));
    e.Set("internal", bpf_map__is_internal(m));
    e.Set("keySize", bpf_map__key_size(m));
    e.Set("valueSize", bpf_map__value_size(m));
    e.Set("maxEntries", bpf_map__max_entries(m));
    e.Set("keyTypeId", bpf_map__btf_key_type_id(m));
    e.Set("valueTypeId", bpf_map__btf_value_type_id(m));
    out.Set(i++, e);
  }
  return out;
}

static Napi::Value Programs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_object* obj = LiveObj(env, Unwrap<ObjRes>(info[0], "object"), "bpf_object__for_each_program");
  Napi::Array out = Napi::Array::New(env);
  bpf_program* p;
  uint32_t i = 0;
  bpf_object__for_each_program(p, obj) {
    Napi::Object e = Napi::Object::New(env);
    e.Set("name", bpf_program__name(p));
    e.Set("section", bpf_program__section_name(p));
    e.Set("type", static_cast<double>(bpf_program__type(p)));
    out.Set(i++, e);
  }
  return out;
}

static Napi::Value SetMaxEntries(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_map* m = FindMap(env, Unwrap<ObjRes>(info[0], "object"), ArgString(info, 1), "bpf_map__set_max_entries");
  int err = bpf_map__set_max_entries(m, ArgU32(info, 2));
  if (err != 0) ThrowErrno(env, "bpf_map__set_max_entries", err);
  return env.Undefined();
}

static Napi::Value SetPinPath(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_map* m = FindMap(env, Unwrap<ObjRes>(info[0], "object"), ArgString(info, 1), "bpf_map__set_pin_path");
  int err = bpf_map__set_pin_path(m, ArgString(info, 2).c_str());
  if (err != 0) ThrowErrno(env, "bpf_map__set_pin_path", err);
  return env.Undefined();
}

static Napi::Value ReuseFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_map* m = FindMap(env, Unwrap<ObjRes>(info[0], "object"), ArgString(info, 1), "bpf_map__reuse_fd");
  int fd = LiveFd(env, Unwrap<FdRes>(info[2], "map"), "bpf_map__reuse_fd");
  LogCapture cap;
  int err = bpf_map__reuse_fd(m, fd);
  if (err != 0) ThrowErrno(env, "bpf_map__reuse_fd", err, cap.text());
  return env.Undefined();
}

// writeInitialValue(obj, mapName, offset, bytes): how skeletons set globals.
static Napi::Value WriteInitialValue(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "bpf_map__initial_value";
  ObjRes* o = Unwrap<ObjRes>(info[0], "object");
  bpf_map* m = FindMap(env, o, ArgString(info, 1), op);
  if (o->loaded) ThrowErrno(env, op, EBUSY);  // .rodata is mapped read-only after load
  uint32_t offset = ArgU32(info, 2);
  Napi::Buffer<uint8_t> bytes = ArgBuffer(info, 3);
  size_t size = 0;
  void* p = const_cast<void*>(bpf_map__initial_value(m, &size));
  if (p == nullptr) ThrowErrno(env, op, EINVAL);
  if (offset > size || bytes.Length() > size - offset) ThrowErrno(env, op, ERANGE);
  memcpy(static_cast<uint8_t*>(p) + offset, bytes.Data(), bytes.Length());
  return env.Undefined();
}

static Napi::Value MapFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_map* m = FindMap(env, Unwrap<ObjRes>(info[0], "object"), ArgString(info, 1), "bpf_map__fd");
  return WrapDup(env, bpf_map__fd(m), "bpf_map__fd");
}

static Napi::Value ProgFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "bpf_program__fd";
  bpf_object* obj = LiveObj(env, Unwrap<ObjRes>(info[0], "object"), op);
  bpf_program* p = bpf_object__find_program_by_name(obj, ArgString(info, 1).c_str());
  if (p == nullptr) ThrowErrno(env, op, ENOENT);
  return WrapDup(env, bpf_program__fd(p), op);
}

// ---- BTF --------------------------------------------------------------------

static const btf* ObjBtf(Napi::Env env, ObjRes* o, const char* op) {
  const btf* b = bpf_object__btf(LiveObj(env, o, op));
  if (b == nullptr) ThrowErrno(env, op, ENODATA);  // object built without -g
  return b;
}

static double TypeSize(const btf* b, uint32_t id) {
  int64_t s = btf__resolve_size(b, id);
  return s < 0 ? -1 : static_cast<double>(s);
}

// btfStruct(obj, name) -> { name, size, kind, members: [{ name, offset, size, bitOffset, bitSize }] } | null
static Napi::Value BtfStruct(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const btf* b = ObjBtf(env, Unwrap<ObjRes>(info[0], "object"), "btf__find_by_name_kind");
  std::string name = ArgString(info, 1);
  int id = btf__find_by_name_kind(b, name.c_str(), BTF_KIND_STRUCT);
  if (id < 0) id = btf__find_by_name_kind(b, name.c_str(), BTF_KIND_UNION);
  if (id < 0) return env.Null();
  const btf_type* t = btf__type_by_id(b, id);
  Napi::Object out = Napi::Object::New(env);
  out.Set("name", name);
  out.Set("size", t->size);
  out.Set("kind", btf_is_union(t) ? "union" : "struct");
  Napi::Array members = Napi::Array::New(env);
  const btf_member* m = btf_members(t);
  for (uint16_t i = 0; i < btf_vlen(t); i++, m++) {
    Napi::Object e = Napi::Object::New(env);
    e.Set("name", btf__name_by_offset(b, m->name_off));
    e.Set("bitOffset", btf_member_bit_offset(t, i));
    e.Set("bitSize", btf_member_bitfield_size(t, i));
    e.Set("size", TypeSize(b, m->type));
    members.Set(i, e);
  }
  out.Set("members", members);
  return out;
}

// btfEnum(obj, name) -> [[name, value], ...] | null
static Napi::Value BtfEnum(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const btf* b = ObjBtf(env, Unwrap<ObjRes>(info[0], "object"), "btf__find_by_name_kind");
  std::string name = ArgString(info, 1);
  int id = btf__find_by_name_kind(b, name.c_str(), BTF_KIND_ENUM);
  if (id < 0) id = btf__find_by_name_kind(b, name.c_str(), BTF_KIND_ENUM64);
  if (id < 0) return env.Null();
  const btf_type* t = btf__type_by_id(b, id);
  bool is_signed = btf_kflag(t);
  Napi::Array out = Napi::Array::New(env);
  for (uint16_t i = 0; i < btf_vlen(t); i++) {
    Napi::Array pair = Napi::Array::New(env, 2);
    if (btf_is_enum(t)) {
      const struct btf_enum* e = btf_enum(t) + i;
      pair.Set(0u, btf__name_by_offset(b, e->name_off));
      pair.Set(1u, is_signed ? static_cast<double>(e->val) : static_cast<double>(static_cast<uint32_t>(e->val)));
    } else {
      const struct btf_enum64* e = btf_enum64(t) + i;
      uint64_t v = btf_enum64_value(e);
      pair.Set(0u, btf__name_by_offset(b, e->name_off));
      pair.Set(1u, is_signed ? static_cast<double>(static_cast<int64_t>(v)) : static_cast<double>(v));
    }
    out.Set(i, pair);
  }
  return out;
}

// Describes the scalar a variable holds, for setGlobal's type checks.
static const char* ScalarKind(const btf* b, uint32_t type_id, bool* is_signed) {
  const btf_type* t = btf__type_by_id(b, btf__resolve_type(b, type_id));
  *is_signed = false;
  if (t == nullptr) return "other";
  if (btf_is_int(t)) {
    uint8_t enc = btf_int_encoding(t);
    *is_signed = (enc & BTF_INT_SIGNED) != 0;
    return (enc & BTF_INT_BOOL) != 0 ? "bool" : "int";
  }
  if (btf_is_any_enum(t)) {
    *is_signed = btf_kflag(t);
    return "enum";
  }
  return "other";
}

static const char* KindName(const btf_type* t) {
  switch (btf_kind(t)) {
    case BTF_KIND_INT: return "int";
    case BTF_KIND_PTR: return "ptr";
    case BTF_KIND_ARRAY: return "array";
    case BTF_KIND_STRUCT: return "struct";
    case BTF_KIND_UNION: return "union";
    case BTF_KIND_ENUM: return "enum";
    case BTF_KIND_FWD: return "fwd";
    case BTF_KIND_TYPEDEF: return "typedef";
    case BTF_KIND_VOLATILE: return "volatile";
    case BTF_KIND_CONST: return "const";
    case BTF_KIND_RESTRICT: return "restrict";
    case BTF_KIND_FUNC: return "func";
    case BTF_KIND_FUNC_PROTO: return "func_proto";
    case BTF_KIND_VAR: return "var";
    case BTF_KIND_DATASEC: return "datasec";
    case BTF_KIND_FLOAT: return "float";
    case BTF_KIND_DECL_TAG: return "decl_tag";
    case BTF_KIND_TYPE_TAG: return "type_tag";
    case BTF_KIND_ENUM64: return "enum64";
    default: return "unknown";
  }
}

// btfTypes(obj) -> the whole type table, index = type id (0: void, null).
// Each entry: { kind, name, size?, type?, members?, elemType?, nelems?,
// encoding?, bits?, signed?, values?, vars? }; meaning is left to TypeScript.
static Napi::Value BtfTypes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const btf* b = ObjBtf(env, Unwrap<ObjRes>(info[0], "object"), "btf__type_by_id");
  uint32_t n = btf__type_cnt(b);
  Napi::Array out = Napi::Array::New(env, n);
  out.Set(0u, env.Null());
  for (uint32_t id = 1; id < n; id++) {
    const btf_type* t = btf__type_by_id(b, id);
    Napi::Object e = Napi::Object::New(env);
    e.Set("kind", KindName(t));
    e.Set("name", btf__name_by_offset(b, t->name_off));
    if (btf_is_int(t)) {
      e.Set("size", t->size);
      uint8_t enc = btf_int_encoding(t);
      e.Set("signed", (enc & BTF_INT_SIGNED) != 0);
      e.Set("bool", (enc & BTF_INT_BOOL) != 0);
      e.Set("char", (enc & BTF_INT_CHAR) != 0);
      e.Set("bits", btf_int_bits(t));
      e.Set("bitOffset", btf_int_offset(t));
    } else if (btf_is_float(t)) {
      e.Set("size", t->size);
    } else if (btf_is_array(t)) {
      const struct btf_array* a = btf_array(t);
      e.Set("type", a->type);
      e.Set("nelems", a->nelems);
    } else if (btf_is_composite(t)) {
      e.Set("size", t->size);
      Napi::Array members = Napi::Array::New(env);
      const btf_member* m = btf_members(t);
      for (uint16_t i = 0; i < btf_vlen(t); i++, m++) {
        Napi::Object me = Napi::Object::New(env);
        me.Set("name", btf__name_by_offset(b, m->name_off));
        me.Set("type", m->type);
        me.Set("bitOffset", btf_member_bit_offset(t, i));
        me.Set("bitSize", btf_member_bitfield_size(t, i));
        members.Set(i, me);
      }
      e.Set("members", members);
    } else if (btf_is_any_enum(t)) {
      e.Set("size", t->size);
      bool is_signed = btf_kflag(t);
      e.Set("signed", is_signed);
      Napi::Array values = Napi::Array::New(env);
      for (uint16_t i = 0; i < btf_vlen(t); i++) {
        Napi::Array pair = Napi::Array::New(env, 2);
        if (btf_is_enum(t)) {
          const struct btf_enum* en = btf_enum(t) + i;
          pair.Set(0u, btf__name_by_offset(b, en->name_off));
          int64_t v = is_signed ? static_cast<int64_t>(en->val) : static_cast<int64_t>(static_cast<uint32_t>(en->val));
          pair.Set(1u, Napi::BigInt::New(env, v));
        } else {
          const struct btf_enum64* en = btf_enum64(t) + i;
          uint64_t v = btf_enum64_value(en);
          pair.Set(0u, btf__name_by_offset(b, en->name_off));
          if (is_signed) pair.Set(1u, Napi::BigInt::New(env, static_cast<int64_t>(v)));
          else pair.Set(1u, Napi::BigInt::New(env, v));
        }
        values.Set(i, pair);
      }
      e.Set("values", values);
    } else if (btf_is_var(t)) {
      e.Set("type", t->type);
      e.Set("linkage", btf_var(t)->linkage);
    } else if (btf_is_datasec(t)) {
      e.Set("size", t->size);
      Napi::Array vars = Napi::Array::New(env);
      const btf_var_secinfo* vi = btf_var_secinfos(t);
      for (uint16_t i = 0; i < btf_vlen(t); i++, vi++) {
        Napi::Object v = Napi::Object::New(env);
        v.Set("type", vi->type);
        v.Set("offset", vi->offset);
        v.Set("size", vi->size);
        vars.Set(i, v);
      }
      e.Set("vars", vars);
    } else if (btf_is_fwd(t)) {
      e.Set("union", btf_kflag(t));
    } else if (btf_is_mod(t) || btf_is_ptr(t) || btf_is_typedef(t) || btf_is_func(t) || btf_is_decl_tag(t) ||
               btf_is_type_tag(t)) {
      e.Set("type", t->type);
    }
    out.Set(id, e);
  }
  return out;
}

// btfDatasecs(obj) -> [{ name, vars: [{ name, offset, size, kind, signed }] }]
static Napi::Value BtfDatasecs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const btf* b = ObjBtf(env, Unwrap<ObjRes>(info[0], "object"), "btf__type_by_id");
  Napi::Array out = Napi::Array::New(env);
  uint32_t n = btf__type_cnt(b), k = 0;
  for (uint32_t id = 1; id < n; id++) {
    const btf_type* t = btf__type_by_id(b, id);
    if (!btf_is_datasec(t)) continue;
    Napi::Object sec = Napi::Object::New(env);
    sec.Set("name", btf__name_by_offset(b, t->name_off));
    Napi::Array vars = Napi::Array::New(env);
    const btf_var_secinfo* vi = btf_var_secinfos(t);
    for (uint16_t i = 0; i < btf_vlen(t); i++, vi++) {
      const btf_type* var = btf__type_by_id(b, vi->type);
      bool is_signed = false;
      Napi::Object v = Napi::Object::New(env);
      v.Set("name", btf__name_by_offset(b, var->name_off));
      v.Set("offset", vi->offset);
      v.Set("size", vi->size);
      v.Set("kind", btf_is_var(var) ? ScalarKind(b, var->type, &is_signed) : "other");
      v.Set("signed", is_signed);
      vars.Set(i, v);
    }
    sec.Set("vars", vars);
    out.Set(k++, sec);
  }
  return out;
}

void InitObject(Napi::Env env, Napi::Object exports) {
  exports.Set("objOpen", Napi::Function::New(env, Open));
  exports.Set("objLoad", Napi::Function::New(env, Load));
  exports.Set("objKernelLog", Napi::Function::New(env, KernelLog));
  exports.Set("objClose", Napi::Function::New(env, Close));
  exports.Set("objMaps", Napi::Function::New(env, Maps));
  exports.Set("objPrograms", Napi::Function::New(env, Programs));
  exports.Set("objSetMaxEntries", Napi::Function::New(env, SetMaxEntries));
  exports.Set("objSetPinPath", Napi::Function::New(env, SetPinPath));
  exports.Set("objReuseFd", Napi::Function::New(env, ReuseFd));
  exports.Set("objWriteInitialValue", Napi::Function::New(env, WriteInitialValue));
  exports.Set("objMapFd", Napi::Function::New(env, MapFd));
  exports.Set("objProgFd", Napi::Function::New(env, ProgFd));
  exports.Set("btfStruct", Napi::Function::New(env, BtfStruct));
  exports.Set("btfEnum", Napi::Function::New(env, BtfEnum));
  exports.Set("btfDatasecs", Napi::Function::New(env, BtfDatasecs));
  exports.Set("btfTypes", Napi::Function::New(env, BtfTypes));
}

}  // namespace xtl
