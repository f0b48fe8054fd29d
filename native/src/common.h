// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
// Shared plumbing of the @xdp-ts/loader addon: native resources behind
// Napi::External handles, a per-env registry so that the env cleanup hook can
// close everything, and errno-carrying errors.
#pragma once

#include <napi.h>

#include <cstdint>
#include <memory>
#include <set>
#include <string>

struct bpf_object;

namespace xtl {

struct Registry;

// Something that owns a kernel object (an fd, a bpf_object, a ring buffer
// thread). Close() must be idempotent: it is called by explicit close(), by
// the External's finalizer and by the env cleanup hook, in any order.
struct Resource {
  explicit Resource(std::shared_ptr<Registry> registry);
  virtual ~Resource();
  virtual void Close() = 0;
  Resource(const Resource&) = delete;
  Resource& operator=(const Resource&) = delete;

 private:
  std::shared_ptr<Registry> registry_;
};

struct Registry {
  std::set<Resource*> live;
  void CloseAll();
};

struct AddonData {
  std::shared_ptr<Registry> registry = std::make_shared<Registry>();
};

std::shared_ptr<Registry> RegistryOf(Napi::Env env);

// An fd for a map, program or link. Maps also carry the sizes that the native
// side needs to allocate buffers (never trusted from JS).
struct FdRes : Resource {
  FdRes(std::shared_ptr<Registry> r, int fd) : Resource(std::move(r)), fd(fd) {}
  ~FdRes() override { Close(); }
  void Close() override;
  int fd;
  bool has_map_meta = false;
  uint32_t key_size = 0;
  uint32_t value_buf_size = 0;  // value_size, or round_up(value_size, 8) * ncpus
};

struct ObjRes : Resource {
  ObjRes(std::shared_ptr<Registry> r, bpf_object* obj) : Resource(std::move(r)), obj(obj) {}
  ~ObjRes() override { Close(); }
  void Close() override;
  bpf_object* obj;
  bool loaded = false;  // load was attempted
  std::unique_ptr<char[]> kernel_log;  // must outlive load when kernelLogLevel is set
  size_t kernel_log_size = 0;
};

// Wrap an owned resource in an External whose finalizer deletes (and so
// closes) it.
template <typename R>
Napi::Value Wrap(Napi::Env env, R* res) {
  return Napi::External<Resource>::New(env, res, [](Napi::Env, Resource* r) { delete r; });
}

template <typename R>
R* Unwrap(const Napi::Value& v, const char* what) {
  if (!v.IsExternal()) throw Napi::TypeError::New(v.Env(), std::string("expected a native ") + what + " handle");
  auto* r = dynamic_cast<R*>(v.As<Napi::External<Resource>>().Data());
  if (r == nullptr) throw Napi::TypeError::New(v.Env(), std::string("expected a native ") + what + " handle");
  return r;
}

// Throw a JS Error with .errno (positive) and .op; `log` (libbpf/verifier
// output) is attached when non-empty.
[[noreturn]] void ThrowErrno(Napi::Env env, const std::string& op, int err, const std::string& log = "");

// Fetch an fd or throw EBADF if it was closed.
int LiveFd(Napi::Env env, FdRes* r, const char* op);

// Capture libbpf's print output on this thread for the lifetime of the object.
class LogCapture {
 public:
  LogCapture();
  ~LogCapture();
  const std::string& text() const { return text_; }

 private:
  std::string text_;
  std::string* prev_;
};

void InitLibbpf();

std::string ArgString(const Napi::CallbackInfo& info, size_t i);
uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i);
int64_t ArgI64(const Napi::CallbackInfo& info, size_t i);
Napi::Buffer<uint8_t> ArgBuffer(const Napi::CallbackInfo& info, size_t i);

void InitObject(Napi::Env env, Napi::Object exports);
void InitFd(Napi::Env env, Napi::Object exports);
void InitRingBuf(Napi::Env env, Napi::Object exports);

}  // namespace xtl
