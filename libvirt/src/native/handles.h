// JS-visible wrappers over virConnectPtr and virDomainPtr.
#pragma once

#include <libvirt/libvirt.h>
#include <napi.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "async.h"

namespace gsl {

// The state a Connection shares with every Domain it returned.
struct ConnHandle {
  ~ConnHandle();

  virConnectPtr conn = nullptr;  // this handle's own libvirt reference
  std::string uri;
  bool closed = false;           // JS thread only
  std::mutex mu;                 // guards callbackIds
  std::vector<int> callbackIds;  // registered event callbacks, deregistered on close
};

CallError ClosedError(const ConnHandle& handle);

class Connection : public Napi::ObjectWrap<Connection> {
 public:
  static Napi::Function Init(Napi::Env env);
  // Builds a JS Connection taking over `conn` (one libvirt reference). JS thread.
  static Napi::Object Wrap(Napi::Env env, virConnectPtr conn, const std::string& uri);
  static Napi::Value Open(const Napi::CallbackInfo& info);

  explicit Connection(const Napi::CallbackInfo& info);

 private:
  Napi::Value Run(Napi::Env env, std::function<void(virConnectPtr, Outcome&)> fn);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value IsClosed(const Napi::CallbackInfo& info);
  Napi::Value Uri(const Napi::CallbackInfo& info);
  Napi::Value IsAlive(const Napi::CallbackInfo& info);
  Napi::Value Hostname(const Napi::CallbackInfo& info);
  Napi::Value ListAllDomains(const Napi::CallbackInfo& info);
  Napi::Value LookupByName(const Napi::CallbackInfo& info);
  Napi::Value LookupByUUID(const Napi::CallbackInfo& info);
  Napi::Value DefineXML(const Napi::CallbackInfo& info);
  Napi::Value RegisterLifecycle(const Napi::CallbackInfo& info);
  Napi::Value DeregisterEvent(const Napi::CallbackInfo& info);

  std::shared_ptr<ConnHandle> handle_;
};

class Domain : public Napi::ObjectWrap<Domain> {
 public:
  static Napi::Function Init(Napi::Env env);
  // Builds a JS Domain taking over `dom` (one libvirt reference). Call on a pool thread's result builder.
  static Napi::Object Wrap(Napi::Env env, virDomainPtr dom, const std::string& name, const std::string& uuid,
                           std::shared_ptr<ConnHandle> conn);
  // Adds a builder to `out` that wraps `dom` (taking over its reference); frees it if never built. Pool thread.
  static void ReturnDomain(Outcome& out, virDomainPtr dom, std::shared_ptr<ConnHandle> conn);

  explicit Domain(const Napi::CallbackInfo& info);
  ~Domain() override;

 private:
  Napi::Value Run(Napi::Env env, std::function<void(virDomainPtr, Outcome&)> fn);
  Napi::Value Name(const Napi::CallbackInfo& info);
  Napi::Value UUID(const Napi::CallbackInfo& info);
  Napi::Value Free(const Napi::CallbackInfo& info);
  Napi::Value XML(const Napi::CallbackInfo& info);
  Napi::Value State(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value IsActive(const Napi::CallbackInfo& info);
  Napi::Value IsPersistent(const Napi::CallbackInfo& info);
  Napi::Value Suspend(const Napi::CallbackInfo& info);
  Napi::Value Resume(const Napi::CallbackInfo& info);
  Napi::Value Create(const Napi::CallbackInfo& info);
  Napi::Value Destroy(const Napi::CallbackInfo& info);
  Napi::Value Undefine(const Napi::CallbackInfo& info);
  Napi::Value SnapshotCreateXML(const Napi::CallbackInfo& info);
  Napi::Value SnapshotList(const Napi::CallbackInfo& info);
  Napi::Value SnapshotXML(const Napi::CallbackInfo& info);
  Napi::Value SnapshotDelete(const Napi::CallbackInfo& info);
  Napi::Value BlockCommit(const Napi::CallbackInfo& info);
  Napi::Value BlockJobInfo(const Napi::CallbackInfo& info);
  Napi::Value BlockJobAbort(const Napi::CallbackInfo& info);
  Napi::Value BlockPull(const Napi::CallbackInfo& info);
  Napi::Value ManagedSave(const Napi::CallbackInfo& info);
  Napi::Value HasManagedSaveImage(const Napi::CallbackInfo& info);
  Napi::Value ManagedSaveRemove(const Napi::CallbackInfo& info);
  Napi::Value SetMetadata(const Napi::CallbackInfo& info);
  Napi::Value GetMetadata(const Napi::CallbackInfo& info);
  Napi::Value FSFreeze(const Napi::CallbackInfo& info);
  Napi::Value FSThaw(const Napi::CallbackInfo& info);

  void Release();

  virDomainPtr dom_ = nullptr;
  std::string name_;
  std::string uuid_;
  std::shared_ptr<ConnHandle> conn_;
};

// Argument helpers: throw a TypeError on the JS thread.
std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* what);
// null/undefined -> absent
bool ArgOptionalString(const Napi::CallbackInfo& info, size_t i, const char* what, std::string* out);
unsigned int ArgFlags(const Napi::CallbackInfo& info, size_t i);
std::vector<std::string> ArgStringArray(const Napi::CallbackInfo& info, size_t i, const char* what);

// Takes over a malloc'd C string from libvirt.
std::string TakeString(char* s);

}  // namespace gsl
