// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
// BPF_MAP_TYPE_RINGBUF consumer: a native thread waits on an epoll set made of
// libbpf's ring_buffer epoll fd and a stop eventfd, drains the ring with
// ring_buffer__consume and hands each batch to JS through a thread-safe
// function. The event loop is never blocked.
//
// Lifetime: RingCore is owned by the thread-safe function and deleted in its
// finalizer (after Release(), or at env teardown), which also joins the thread.
// RingRes is the JS-visible handle; it only points at the core.
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <thread>
#include <vector>

#include "common.h"

namespace xtl {

namespace {

struct Msg {
  std::vector<std::vector<uint8_t>> records;
  int err = 0;
};

struct RingCore;
void CallJs(Napi::Env env, Napi::Function cb, RingCore* core, Msg* msg);
using Tsfn = Napi::TypedThreadSafeFunction<RingCore, Msg, CallJs>;

struct RingRes;

enum : uint32_t { kRingEvent = 0, kStopEvent = 1 };

struct RingCore {
  int map_fd = -1, efd = -1, epfd = -1;
  ring_buffer* rb = nullptr;
  std::thread thread;
  Tsfn tsfn;
  bool released = false;    // main thread only
  RingRes* res = nullptr;   // main thread only
  std::unique_ptr<Napi::Promise::Deferred> deferred;  // resolved once the last batch was delivered
  std::vector<std::vector<uint8_t>> pending;          // consumer thread only

  ~RingCore() {
    StopAndJoin();
    if (rb != nullptr) ring_buffer__free(rb);
    for (int fd : {map_fd, efd, epfd})
      if (fd >= 0) ::close(fd);
  }

  void StopAndJoin() {
    if (!thread.joinable()) return;
    uint64_t one = 1;
    ssize_t ignored = ::write(efd, &one, sizeof(one));
    (void)ignored;
    thread.join();
  }

  void Send(int err) {
    if (pending.empty() && err == 0) return;
    auto* m = new Msg{std::move(pending), err};
    pending.clear();
    if (tsfn.NonBlockingCall(m) != napi_ok) delete m;  // closing: the env is going away
  }

  void Run() {
    epoll_event evs[2];
    for (;;) {
      int n = epoll_wait(epfd, evs, 2, -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        Send(errno);
        return;
      }
      bool stop = false;
      for (int i = 0; i < n; i++)
        if (evs[i].data.u32 == kStopEvent) stop = true;
      int c = ring_buffer__consume(rb);  // drain also on stop: records already written get delivered
      Send(c < 0 ? -c : 0);
      if (stop || c < 0) return;
    }
  }
};

struct RingRes : Resource {
  RingRes(std::shared_ptr<Registry> r, RingCore* core) : Resource(std::move(r)), core(core) {}
  ~RingRes() override {
    Close();
    if (core != nullptr) core->res = nullptr;
  }
  void Close() override {
    if (core == nullptr || core->released) return;
    core->released = true;
    core->StopAndJoin();
    core->tsfn.Release();  // the finalizer runs once queued batches were delivered
  }
  RingCore* core;
};

void CallJs(Napi::Env env, Napi::Function cb, RingCore*, Msg* msg) {
  std::unique_ptr<Msg> m(msg);
  if (env == nullptr || cb == nullptr) return;
  Napi::Array records = Napi::Array::New(env, m->records.size());
  for (uint32_t i = 0; i < m->records.size(); i++)
    records.Set(i, Napi::Buffer<uint8_t>::Copy(env, m->records[i].data(), m->records[i].size()));
  try {
    cb.Call({records, Napi::Number::New(env, m->err)});
  } catch (const Napi::Error&) {
    // The TS wrapper reports callback errors itself; nothing to do here.
  }
}

void FinalizeCore(Napi::Env env, void*, RingCore* core) {
  core->StopAndJoin();
  if (core->deferred) {
    try {
      core->deferred->Resolve(env.Undefined());
    } catch (...) {
      // env teardown: nobody is waiting any more
    }
  }
  if (core->res != nullptr) core->res->core = nullptr;
  delete core;
}

int OnSample(void* ctx, void* data, size_t size) {
  auto* core = static_cast<RingCore*>(ctx);
  auto* p = static_cast<uint8_t*>(data);
  core->pending.emplace_back(p, p + size);
  return 0;
}

// ringOpen(mapFd, callback(records: Buffer[], errno: number)) -> handle
Napi::Value RingOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "ring_buffer__new";
  int fd = LiveFd(env, Unwrap<FdRes>(info[0], "map"), op);
  if (!info[1].IsFunction()) throw Napi::TypeError::New(env, "expected a callback");
  auto core = std::make_unique<RingCore>();
  core->map_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (core->map_fd < 0) ThrowErrno(env, op, errno);
  {
    LogCapture cap;
    core->rb = ring_buffer__new(core->map_fd, OnSample, core.get(), nullptr);
    if (core->rb == nullptr) ThrowErrno(env, op, errno, cap.text());
  }
  core->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (core->efd < 0) ThrowErrno(env, "eventfd", errno);
  core->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (core->epfd < 0) ThrowErrno(env, "epoll_create1", errno);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u32 = kRingEvent;
  if (epoll_ctl(core->epfd, EPOLL_CTL_ADD, ring_buffer__epoll_fd(core->rb), &ev) < 0) ThrowErrno(env, "epoll_ctl", errno);
  ev.data.u32 = kStopEvent;
  if (epoll_ctl(core->epfd, EPOLL_CTL_ADD, core->efd, &ev) < 0) ThrowErrno(env, "epoll_ctl", errno);

  RingCore* c = core.release();
  c->tsfn = Tsfn::New(env, info[1].As<Napi::Function>(), "xdp-ts-loader:ringbuf", 0, 1, c, FinalizeCore,
                      static_cast<void*>(nullptr));
  auto* res = new RingRes(RegistryOf(env), c);
  c->res = res;
  c->thread = std::thread([c] { c->Run(); });
  return Wrap(env, res);
}

Napi::Value RingClose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RingRes* r = Unwrap<RingRes>(info[0], "ring buffer");
  if (r->core == nullptr || r->core->released) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Resolve(env.Undefined());
    return d.Promise();
  }
  r->core->deferred = std::make_unique<Napi::Promise::Deferred>(env);
  Napi::Promise p = r->core->deferred->Promise();
  r->Close();
  return p;
}

Napi::Value RingRef(const Napi::CallbackInfo& info) {
  RingRes* r = Unwrap<RingRes>(info[0], "ring buffer");
  bool ref = info[1].ToBoolean();
  if (r->core != nullptr && !r->core->released) {
    if (ref)
      r->core->tsfn.Ref(info.Env());
    else
      r->core->tsfn.Unref(info.Env());
  }
  return info.Env().Undefined();
}

}  // namespace

void InitRingBuf(Napi::Env env, Napi::Object exports) {
  exports.Set("ringOpen", Napi::Function::New(env, RingOpen));
  exports.Set("ringClose", Napi::Function::New(env, RingClose));
  exports.Set("ringRef", Napi::Function::New(env, RingRef));
}

}  // namespace xtl
