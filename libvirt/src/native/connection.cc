#include <time.h>

#include <cstdlib>

#include "handles.h"
#include "pool.h"

namespace gsl {

namespace {

void CloseOnPool(virConnectPtr conn, std::vector<int> callbackIds) {
  Pool::Instance().Submit([conn, ids = std::move(callbackIds)] {
    for (int id : ids) virConnectDomainEventDeregisterAny(conn, id);
    virConnectClose(conn);
    virResetLastError();
  });
}

struct LifecycleEvent {
  std::string name;
  std::string uuid;
  int event;
  int detail;
  double timestampMs;
  uint64_t monotonicNs;
};

// Owned by libvirt (its opaque pointer) until FreeLifecycle.
struct LifecycleSubscription {
  std::shared_ptr<EnvGate> gate;
  napi_threadsafe_function tsfn = nullptr;
};

// JS thread: hands one event to the subscriber's function.
void DeliverLifecycle(napi_env rawEnv, napi_value callback, void*, void* raw) {
  std::unique_ptr<LifecycleEvent> ev(static_cast<LifecycleEvent*>(raw));
  if (rawEnv == nullptr || callback == nullptr) return;
  try {
    Napi::Env env(rawEnv);
    Napi::HandleScope scope(env);
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", ev->name);
    o.Set("uuid", ev->uuid);
    o.Set("event", Napi::Number::New(env, ev->event));
    o.Set("detail", Napi::Number::New(env, ev->detail));
    o.Set("timestampMs", Napi::Number::New(env, ev->timestampMs));
    o.Set("monotonicNs", Napi::BigInt::New(env, ev->monotonicNs));
    napi_value argv[] = {o};
    napi_value result;
    // A throwing listener surfaces as an uncaught exception, as with EventEmitter.
    napi_call_function(env, env.Undefined(), callback, 1, argv, &result);
  } catch (...) {
    // JS can no longer run (a worker thread being terminated).
  }
}

// libvirt's event-loop thread.
int OnLifecycle(virConnectPtr, virDomainPtr dom, int event, int detail, void* opaque) {
  // Timestamps first: they say when the event reached this process.
  timespec real = {}, mono = {};
  clock_gettime(CLOCK_REALTIME, &real);
  clock_gettime(CLOCK_MONOTONIC, &mono);  // the clock behind process.hrtime.bigint() on Linux
  auto* ev = new LifecycleEvent();
  ev->timestampMs = static_cast<double>(real.tv_sec) * 1e3 + static_cast<double>(real.tv_nsec) / 1e6;
  ev->monotonicNs = static_cast<uint64_t>(mono.tv_sec) * 1000000000ULL + static_cast<uint64_t>(mono.tv_nsec);
  const char* name = virDomainGetName(dom);
  ev->name = name != nullptr ? name : "";
  char uuid[VIR_UUID_STRING_BUFLEN] = {};
  if (virDomainGetUUIDString(dom, uuid) == 0) ev->uuid = uuid;
  ev->event = event;
  ev->detail = detail;
  auto* sub = static_cast<LifecycleSubscription*>(opaque);
  std::lock_guard<std::mutex> lock(sub->gate->mu);
  if (!sub->gate->open || napi_call_threadsafe_function(sub->tsfn, ev, napi_tsfn_nonblocking) != napi_ok) delete ev;
  return 0;
}

void FreeLifecycle(void* opaque) {
  auto* sub = static_cast<LifecycleSubscription*>(opaque);
  {
    std::lock_guard<std::mutex> lock(sub->gate->mu);
    if (sub->gate->open) napi_release_threadsafe_function(sub->tsfn, napi_tsfn_release);
  }
  delete sub;
}

void FinalizeLifecycleTsfn(napi_env env, void* hook, void*) { RemoveGateHook(env, hook); }

}  // namespace

ConnHandle::~ConnHandle() {
  // Last owner gone (the Connection and every Domain it returned were collected) without close().
  if (conn != nullptr) CloseOnPool(conn, callbackIds);
}

CallError ClosedError(const ConnHandle& handle) {
  CallError e;
  e.code = VIR_ERR_INVALID_CONN;
  e.domain = VIR_FROM_NONE;
  e.kind = "closed";
  e.message = "libvirt connection to " + handle.uri + " is closed";
  return e;
}

Napi::Function Connection::Init(Napi::Env env) {
  return DefineClass(env, "NativeConnection",
                     {
                         InstanceMethod<&Connection::Close>("close"),
                         InstanceAccessor<&Connection::IsClosed>("closed"),
                         InstanceAccessor<&Connection::Uri>("uri"),
                         InstanceMethod<&Connection::IsAlive>("isAlive"),
                         InstanceMethod<&Connection::Hostname>("hostname"),
                         InstanceMethod<&Connection::ListAllDomains>("listAllDomains"),
                         InstanceMethod<&Connection::LookupByName>("lookupByName"),
                         InstanceMethod<&Connection::LookupByUUID>("lookupByUUID"),
                         InstanceMethod<&Connection::DefineXML>("defineXML"),
                         InstanceMethod<&Connection::RegisterLifecycle>("registerLifecycle"),
                         InstanceMethod<&Connection::DeregisterEvent>("deregisterEvent"),
                     });
}

Connection::Connection(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Connection>(info) {
  if (info.Length() < 2 || !info[0].IsExternal()) {
    throw Napi::TypeError::New(info.Env(), "NativeConnection is created by open()");
  }
  handle_ = std::make_shared<ConnHandle>();
  handle_->conn = info[0].As<Napi::External<virConnect>>().Data();
  handle_->uri = info[1].As<Napi::String>().Utf8Value();
}

Napi::Object Connection::Wrap(Napi::Env env, virConnectPtr conn, const std::string& uri) {
  auto* data = env.GetInstanceData<AddonData>();
  return data->connectionCtor.New({Napi::External<virConnect>::New(env, conn), Napi::String::New(env, uri)});
}

Napi::Value Connection::Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string uri;
  bool hasUri = ArgOptionalString(info, 0, "uri", &uri);
  bool readOnly = info.Length() > 1 && info[1].ToBoolean().Value();
  int keepAliveInterval = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int32Value() : 5;
  unsigned int keepAliveCount = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().Uint32Value() : 3;
  return Dispatch(env, [=](Outcome& out) {
    virConnectPtr conn = virConnectOpenAuth(hasUri ? uri.c_str() : nullptr, virConnectAuthPtrDefault,
                                            readOnly ? VIR_CONNECT_RO : 0);
    if (conn == nullptr) return out.Fail();
    // Detects a dead daemon; local drivers (test:///) do not support keepalive, which is fine.
    if (keepAliveInterval > 0 && virConnectSetKeepAlive(conn, keepAliveInterval, keepAliveCount) < 0) {
      virResetLastError();
    }
    std::string actualUri = uri;
    if (char* u = virConnectGetURI(conn)) actualUri = TakeString(u);
    virResetLastError();
    out.Return([conn, actualUri](Napi::Env env) -> Napi::Value { return Wrap(env, conn, actualUri); });
  });
}

Napi::Value Connection::Run(Napi::Env env, std::function<void(virConnectPtr, Outcome&)> fn) {
  if (handle_->closed) return Rejected(env, ClosedError(*handle_));
  ConnectRef ref = RefConnect(handle_->conn);
  return Dispatch(env, [ref, fn](Outcome& out) { fn(ref.get(), out); });
}

Napi::Value Connection::Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (handle_->closed) return Rejected(env, ClosedError(*handle_));
  handle_->closed = true;
  virConnectPtr conn = handle_->conn;
  handle_->conn = nullptr;
  std::vector<int> ids;
  {
    std::lock_guard<std::mutex> lock(handle_->mu);
    ids.swap(handle_->callbackIds);
  }
  return Dispatch(env, [conn, ids](Outcome& out) {
    for (int id : ids) virConnectDomainEventDeregisterAny(conn, id);
    virResetLastError();
    // Domains still referenced keep libvirt's connection object alive until they are freed; calls through
    // them are refused from now on.
    if (virConnectClose(conn) < 0) out.Fail();
  });
}

Napi::Value Connection::IsClosed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), handle_->closed);
}

Napi::Value Connection::Uri(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), handle_->uri); }

Napi::Value Connection::IsAlive(const Napi::CallbackInfo& info) {
  return Run(info.Env(), [](virConnectPtr c, Outcome& out) {
    int alive = virConnectIsAlive(c);
    if (alive < 0) return out.Fail();
    out.Return([alive](Napi::Env env) { return Napi::Boolean::New(env, alive == 1); });
  });
}

Napi::Value Connection::Hostname(const Napi::CallbackInfo& info) {
  return Run(info.Env(), [](virConnectPtr c, Outcome& out) {
    char* h = virConnectGetHostname(c);
    if (h == nullptr) return out.Fail();
    std::string host = TakeString(h);
    out.Return([host](Napi::Env env) { return Napi::String::New(env, host); });
  });
}

Napi::Value Connection::ListAllDomains(const Napi::CallbackInfo& info) {
  unsigned int flags = ArgFlags(info, 0);
  return Run(info.Env(), [flags](virConnectPtr c, Outcome& out) {
    struct Row {
      std::string name, uuid;
      int id, state, reason;
    };
    virDomainPtr* doms = nullptr;
    int n = virConnectListAllDomains(c, &doms, flags);
    if (n < 0) return out.Fail();
    std::vector<Row> rows;
    for (int i = 0; i < n; ++i) {
      Row row{};
      const char* name = virDomainGetName(doms[i]);
      row.name = name != nullptr ? name : "";
      char uuid[VIR_UUID_STRING_BUFLEN] = {};
      virDomainGetUUIDString(doms[i], uuid);
      row.uuid = uuid;
      unsigned int id = virDomainGetID(doms[i]);
      row.id = id == static_cast<unsigned int>(-1) ? -1 : static_cast<int>(id);
      if (virDomainGetState(doms[i], &row.state, &row.reason, 0) < 0) {
        // The domain vanished between listing and asking: report it as such rather than failing the list.
        row.state = -1;
        row.reason = 0;
        virResetLastError();
      }
      virDomainFree(doms[i]);
      rows.push_back(std::move(row));
    }
    free(doms);
    out.Return([rows](Napi::Env env) {
      Napi::Array arr = Napi::Array::New(env, rows.size());
      for (size_t i = 0; i < rows.size(); ++i) {
        Napi::Object o = Napi::Object::New(env);
        o.Set("name", rows[i].name);
        o.Set("uuid", rows[i].uuid);
        o.Set("id", rows[i].id);
        o.Set("state", rows[i].state);
        o.Set("reason", rows[i].reason);
        arr.Set(i, o);
      }
      return arr;
    });
  });
}

Napi::Value Connection::LookupByName(const Napi::CallbackInfo& info) {
  std::string name = ArgString(info, 0, "name");
  auto handle = handle_;
  return Run(info.Env(), [name, handle](virConnectPtr c, Outcome& out) {
    virDomainPtr d = virDomainLookupByName(c, name.c_str());
    if (d == nullptr) return out.Fail();
    Domain::ReturnDomain(out, d, handle);
  });
}

Napi::Value Connection::LookupByUUID(const Napi::CallbackInfo& info) {
  std::string uuid = ArgString(info, 0, "uuid");
  auto handle = handle_;
  return Run(info.Env(), [uuid, handle](virConnectPtr c, Outcome& out) {
    virDomainPtr d = virDomainLookupByUUIDString(c, uuid.c_str());
    if (d == nullptr) return out.Fail();
    Domain::ReturnDomain(out, d, handle);
  });
}

Napi::Value Connection::DefineXML(const Napi::CallbackInfo& info) {
  std::string xml = ArgString(info, 0, "xml");
  unsigned int flags = ArgFlags(info, 1);
  auto handle = handle_;
  return Run(info.Env(), [xml, flags, handle](virConnectPtr c, Outcome& out) {
    virDomainPtr d = virDomainDefineXMLFlags(c, xml.c_str(), flags);
    if (d == nullptr) return out.Fail();
    Domain::ReturnDomain(out, d, handle);
  });
}

Napi::Value Connection::RegisterLifecycle(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsFunction()) throw Napi::TypeError::New(env, "callback must be a function");
  if (handle_->closed) return Rejected(env, ClosedError(*handle_));
  auto* sub = new LifecycleSubscription();
  sub->gate = env.GetInstanceData<AddonData>()->gate;
  napi_value name = Napi::String::New(env, "groupsnap-libvirt-lifecycle");
  void* hook = NewGateHook(sub->gate);
  napi_status status = napi_create_threadsafe_function(env, info[0], nullptr, name, 0, 1, hook,
                                                       FinalizeLifecycleTsfn, nullptr, DeliverLifecycle, &sub->tsfn);
  if (status != napi_ok) {
    delete sub;
    RemoveGateHook(env, hook);
    NAPI_THROW_IF_FAILED(env, status, env.Undefined());
  }
  AddGateHook(env, hook);
  // Events alone do not keep the process alive.
  napi_unref_threadsafe_function(env, sub->tsfn);
  auto handle = handle_;
  return Run(env, [sub, handle](virConnectPtr c, Outcome& out) {
    int id = virConnectDomainEventRegisterAny(c, nullptr, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                              VIR_DOMAIN_EVENT_CALLBACK(OnLifecycle), sub, FreeLifecycle);
    if (id < 0) {
      out.Fail();
      FreeLifecycle(sub);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(handle->mu);
      handle->callbackIds.push_back(id);
    }
    out.Return([id](Napi::Env env) { return Napi::Number::New(env, id); });
  });
}

Napi::Value Connection::DeregisterEvent(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int id = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : -1;
  bool known = false;
  {
    std::lock_guard<std::mutex> lock(handle_->mu);
    auto& ids = handle_->callbackIds;
    for (auto it = ids.begin(); it != ids.end(); ++it) {
      if (*it == id) {
        ids.erase(it);
        known = true;
        break;
      }
    }
  }
  // Already gone (e.g. the connection was closed): nothing to do.
  if (!known || handle_->closed) return Dispatch(env, [](Outcome&) {});
  return Run(env, [id](virConnectPtr c, Outcome& out) {
    if (virConnectDomainEventDeregisterAny(c, id) < 0) out.Fail();
  });
}

}  // namespace gsl
