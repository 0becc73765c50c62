// Running a blocking libvirt call on the pool and settling a Promise with its outcome on the JS thread.
#pragma once

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <napi.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>

namespace gsl {

// libvirt's error, copied on the thread where the call failed (libvirt keeps the last error per thread).
struct CallError {
  int code = VIR_ERR_INTERNAL_ERROR;
  int domain = VIR_FROM_NONE;
  int level = VIR_ERR_ERROR;
  std::string message;
  // Set for errors raised by this addon rather than libvirt: "closed" (connection closed), "freed" (handle
  // freed), "argument".
  std::string kind;
};

CallError CaptureLibvirtError();
Napi::Error ToJsError(Napi::Env env, const CallError& error);

// What a pool task hands back: either a failure or a function that builds the JS result on the JS thread.
class Outcome {
 public:
  using Builder = std::function<Napi::Value(Napi::Env)>;

  // Records libvirt's last error of this thread. Call right after the failing libvirt call.
  void Fail() {
    failed_ = true;
    error_ = CaptureLibvirtError();
  }
  void Fail(CallError error) {
    failed_ = true;
    error_ = std::move(error);
  }
  void Return(Builder builder) { builder_ = std::move(builder); }

  bool failed() const { return failed_; }
  const CallError& error() const { return error_; }
  Napi::Value Build(Napi::Env env) const { return builder_ ? builder_(env) : env.Undefined(); }

 private:
  bool failed_ = false;
  CallError error_;
  Builder builder_;
};

using Work = std::function<void(Outcome&)>;

// Queues `work` on the addon's pool and returns a Promise settled on the JS thread.
Napi::Promise Dispatch(Napi::Env env, Work work);
Napi::Promise Rejected(Napi::Env env, CallError error);

// Whether the environment's threadsafe functions may still be called from other threads. Node frees a
// threadsafe function at environment teardown whatever its thread count, so threads other than the JS thread
// check this gate, under its mutex, around every napi_*_threadsafe_function call.
struct EnvGate {
  std::mutex mu;
  bool open = true;
};

// An environment cleanup hook that closes `gate`. Register it right after creating a threadsafe function:
// hooks run newest first, so the gate closes before that function is torn down. For a function that may be
// released earlier, pass the hook as its finalize data and call RemoveGateHook from its finalizer.
void* NewGateHook(const std::shared_ptr<EnvGate>& gate);
void AddGateHook(napi_env env, void* hook);
void RemoveGateHook(napi_env env, void* hook);

// Per-environment state: the threadsafe function through which results come back, and constructors.
struct AddonData {
  std::shared_ptr<EnvGate> gate = std::make_shared<EnvGate>();
  Napi::FunctionReference connectionCtor;
  Napi::FunctionReference domainCtor;
  size_t pending = 0;  // calls dispatched and not yet settled; JS thread only
  napi_threadsafe_function tsfn = nullptr;
};

void InitAsync(Napi::Env env, AddonData* data);

// Shared ownership of libvirt handles for in-flight calls. The deleter runs on whichever thread drops the
// last reference; Dispatch makes sure that is a pool thread, since freeing the last handle of a connection
// may close it over RPC.
using DomainRef = std::shared_ptr<virDomain>;
using ConnectRef = std::shared_ptr<virConnect>;
DomainRef RefDomain(virDomainPtr dom);      // takes a new libvirt reference
DomainRef AdoptDomain(virDomainPtr dom);    // takes over the caller's reference
ConnectRef RefConnect(virConnectPtr conn);  // takes a new libvirt reference

}  // namespace gsl
