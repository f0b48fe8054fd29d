// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
// Module entry: registry + env cleanup hook, errors, libbpf log capture and a
// few system helpers.
#include "common.h"

#include <bpf/libbpf.h>
#include <net/if.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace xtl {

Resource::Resource(std::shared_ptr<Registry> registry) : registry_(std::move(registry)) {
  registry_->live.insert(this);
}

Resource::~Resource() { registry_->live.erase(this); }

void Registry::CloseAll() {
  // Close() never removes from `live` (only destructors do), so iterating is safe.
  for (Resource* r : live) r->Close();
}

std::shared_ptr<Registry> RegistryOf(Napi::Env env) { return env.GetInstanceData<AddonData>()->registry; }

void FdRes::Close() {
  if (fd >= 0) {
    ::close(fd);
    fd = -1;
  }
}

void ObjRes::Close() {
  if (obj != nullptr) {
    bpf_object__close(obj);
    obj = nullptr;
  }
}

void ThrowErrno(Napi::Env env, const std::string& op, int err, const std::string& log) {
  if (err < 0) err = -err;
  if (err == 0) err = EINVAL;
  char buf[128];
  libbpf_strerror(err, buf, sizeof(buf));
  Napi::Error e = Napi::Error::New(env, op + ": " + buf);
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("op", Napi::String::New(env, op));
  if (!log.empty()) e.Set("log", Napi::String::New(env, log));
  throw e;
}

int LiveFd(Napi::Env env, FdRes* r, const char* op) {
  if (r->fd < 0) ThrowErrno(env, op, EBADF);
  return r->fd;
}

// ---- libbpf print capture --------------------------------------------------

static thread_local std::string* g_capture = nullptr;
static bool g_debug = false;

static int PrintFn(enum libbpf_print_level level, const char* fmt, va_list ap) {
  bool capture = g_capture != nullptr && level != LIBBPF_DEBUG;
  if (!capture && !g_debug) return 0;
  va_list ap2;
  va_copy(ap2, ap);
  int n = vsnprintf(nullptr, 0, fmt, ap2);
  va_end(ap2);
  if (n <= 0) return 0;
  std::string s(static_cast<size_t>(n) + 1, '\0');
  vsnprintf(s.data(), s.size(), fmt, ap);
  s.resize(static_cast<size_t>(n));
  if (capture) g_capture->append(s);
  if (g_debug) fputs(s.c_str(), stderr);
  return 0;
}

LogCapture::LogCapture() : prev_(g_capture) { g_capture = &text_; }
LogCapture::~LogCapture() { g_capture = prev_; }

void InitLibbpf() {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* d = getenv("XDP_TS_LOADER_DEBUG");
    g_debug = d != nullptr && d[0] != '\0' && strcmp(d, "0") != 0;
    libbpf_set_strict_mode(LIBBPF_STRICT_ALL);
    libbpf_set_print(PrintFn);
  });
}

// ---- argument helpers (TS validates; these only keep native code memory-safe)

std::string ArgString(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsString()) throw Napi::TypeError::New(info.Env(), "expected a string argument");
  return info[i].As<Napi::String>().Utf8Value();
}

uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "expected a number argument");
  return info[i].As<Napi::Number>().Uint32Value();
}

int64_t ArgI64(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "expected a number argument");
  return info[i].As<Napi::Number>().Int64Value();
}

Napi::Buffer<uint8_t> ArgBuffer(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsBuffer()) throw Napi::TypeError::New(info.Env(), "expected a Buffer argument");
  return info[i].As<Napi::Buffer<uint8_t>>();
}

// ---- system helpers ---------------------------------------------------------

static Napi::Value NumPossibleCpus(const Napi::CallbackInfo& info) {
  int n = libbpf_num_possible_cpus();
  if (n < 0) ThrowErrno(info.Env(), "libbpf_num_possible_cpus", n);
  return Napi::Number::New(info.Env(), n);
}

static Napi::Value IfNameToIndex(const Napi::CallbackInfo& info) {
  std::string name = ArgString(info, 0);
  unsigned idx = if_nametoindex(name.c_str());
  if (idx == 0) ThrowErrno(info.Env(), "if_nametoindex", errno);
  return Napi::Number::New(info.Env(), idx);
}

static Napi::Value IfIndexToName(const Napi::CallbackInfo& info) {
  char buf[IF_NAMESIZE];
  if (if_indextoname(ArgU32(info, 0), buf) == nullptr) ThrowErrno(info.Env(), "if_indextoname", errno);
  return Napi::String::New(info.Env(), buf);
}

// flock(fd, op): true when taken, false when LOCK_NB found it held. Pin
// directories are locked this way (as xdp-tools does), and so is any file.
static Napi::Value Flock(const Napi::CallbackInfo& info) {
  int fd = static_cast<int>(ArgU32(info, 0));
  int op = static_cast<int>(ArgU32(info, 1));
  if (flock(fd, op) == 0) return Napi::Boolean::New(info.Env(), true);
  if (errno == EWOULDBLOCK && (op & LOCK_NB)) return Napi::Boolean::New(info.Env(), false);
  ThrowErrno(info.Env(), "flock", errno);
  return info.Env().Undefined();
}

// xdpQuery(ifindex) -> { attachMode, progId, drvProgId, skbProgId, hwProgId }:
// what is attached to an interface's XDP hook (bpf_xdp_query, over netlink).
static Napi::Value XdpQuery(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_xdp_query_opts opts;
  memset(&opts, 0, sizeof(opts));
  opts.sz = sizeof(opts);
  LogCapture cap;
  int err = bpf_xdp_query(static_cast<int>(ArgU32(info, 0)), 0, &opts);
  if (err != 0) ThrowErrno(env, "bpf_xdp_query", err, cap.text());
  Napi::Object o = Napi::Object::New(env);
  o.Set("attachMode", opts.attach_mode);
  o.Set("progId", opts.prog_id);
  o.Set("drvProgId", opts.drv_prog_id);
  o.Set("skbProgId", opts.skb_prog_id);
  o.Set("hwProgId", opts.hw_prog_id);
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitLibbpf();
  auto* data = new AddonData();
  env.SetInstanceData<AddonData>(data);  // deleted by node at env teardown
  // Close every live resource when the env goes away (worker exit, process
  // exit). The registry is shared with the resources, so order does not matter.
  std::shared_ptr<Registry> registry = data->registry;
  auto* hook_arg = new std::shared_ptr<Registry>(registry);
  napi_add_env_cleanup_hook(
      env,
      [](void* arg) {
        auto* reg = static_cast<std::shared_ptr<Registry>*>(arg);
        (*reg)->CloseAll();
        delete reg;
      },
      hook_arg);

  exports.Set("numPossibleCpus", Napi::Function::New(env, NumPossibleCpus));
  exports.Set("ifNameToIndex", Napi::Function::New(env, IfNameToIndex));
  exports.Set("ifIndexToName", Napi::Function::New(env, IfIndexToName));
  exports.Set("flock", Napi::Function::New(env, Flock));
  exports.Set("xdpQuery", Napi::Function::New(env, XdpQuery));
  InitObject(env, exports);
  InitFd(env, exports);
  InitRingBuf(env, exports);
  return exports;
}

}  // namespace xtl

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return xtl::Init(env, exports); }

NODE_API_MODULE(xdp_ts_loader, InitAddon)
