// Module entry: libvirt's event loop, the pool, and the exports.
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <napi.h>

#include <mutex>
#include <thread>

#include "async.h"
#include "handles.h"
#include "pool.h"

namespace gsl {

namespace {

void SilentErrorHandler(void*, virErrorPtr) {}

// Once per process, before any connection: events and keepalive need a registered event loop, and libvirt
// must not print every error to stderr (errors are returned to JS instead).
void InitLibvirtOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    virInitialize();
    virSetErrorFunc(nullptr, SilentErrorHandler);
    if (virEventRegisterDefaultImpl() < 0) return;
    std::thread([] {
      for (;;) {
        if (virEventRunDefaultImpl() < 0) virResetLastError();
      }
    }).detach();
  });
}

Napi::Value PoolStatsJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PoolStats s = Pool::Instance().Stats();
  Napi::Object o = Napi::Object::New(env);
  o.Set("threads", static_cast<double>(s.threads));
  o.Set("idle", static_cast<double>(s.idle));
  o.Set("busy", static_cast<double>(s.busy));
  o.Set("peakBusy", static_cast<double>(s.peakBusy));
  o.Set("spawned", static_cast<double>(s.spawned));
  o.Set("queued", static_cast<double>(s.queued));
  o.Set("maxThreads", static_cast<double>(s.maxThreads));
  o.Set("idleTimeoutMs", static_cast<double>(s.idleTimeoutMs));
  return o;
}

Napi::Value ResetPoolPeak(const Napi::CallbackInfo& info) {
  Pool::Instance().ResetPeak();
  return info.Env().Undefined();
}

Napi::Value ConfigurePool(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
    throw Napi::TypeError::New(env, "configurePool(maxThreads, idleTimeoutMs)");
  }
  Pool::Instance().Configure(info[0].As<Napi::Number>().Uint32Value(),
                             std::chrono::milliseconds(info[1].As<Napi::Number>().Int64Value()));
  return env.Undefined();
}

Napi::Value LibVersion(const Napi::CallbackInfo& info) {
  unsigned long version = 0;
  virGetVersion(&version, nullptr, nullptr);
  return Napi::Number::New(info.Env(), static_cast<double>(version));
}

// The numeric values straight from the headers, so the TS constants can be checked against them.
Napi::Object Constants(Napi::Env env) {
  Napi::Object c = Napi::Object::New(env);
#define GSL_CONST(name) c.Set(#name, Napi::Number::New(env, static_cast<double>(name)))
  GSL_CONST(VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE);
  GSL_CONST(VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT);
  GSL_CONST(VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA);
  GSL_CONST(VIR_DOMAIN_SNAPSHOT_CREATE_HALT);
  GSL_CONST(VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY);
  GSL_CONST(VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT);
  GSL_CONST(VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE);
  GSL_CONST(VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC);
  GSL_CONST(VIR_DOMAIN_SNAPSHOT_CREATE_LIVE);
  GSL_CONST(VIR_DOMAIN_SNAPSHOT_CREATE_VALIDATE);
  GSL_CONST(VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN);
  GSL_CONST(VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY);
  GSL_CONST(VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN_ONLY);
  GSL_CONST(VIR_DOMAIN_BLOCK_COMMIT_SHALLOW);
  GSL_CONST(VIR_DOMAIN_BLOCK_COMMIT_DELETE);
  GSL_CONST(VIR_DOMAIN_BLOCK_COMMIT_ACTIVE);
  GSL_CONST(VIR_DOMAIN_BLOCK_COMMIT_RELATIVE);
  GSL_CONST(VIR_DOMAIN_BLOCK_COMMIT_BANDWIDTH_BYTES);
  GSL_CONST(VIR_DOMAIN_BLOCK_JOB_ABORT_ASYNC);
  GSL_CONST(VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT);
  GSL_CONST(VIR_DOMAIN_UNDEFINE_MANAGED_SAVE);
  GSL_CONST(VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA);
  GSL_CONST(VIR_DOMAIN_UNDEFINE_NVRAM);
  GSL_CONST(VIR_DOMAIN_UNDEFINE_KEEP_NVRAM);
  GSL_CONST(VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA);
  GSL_CONST(VIR_DOMAIN_UNDEFINE_TPM);
  GSL_CONST(VIR_DOMAIN_UNDEFINE_KEEP_TPM);
  GSL_CONST(VIR_DOMAIN_XML_SECURE);
  GSL_CONST(VIR_DOMAIN_XML_INACTIVE);
  GSL_CONST(VIR_DOMAIN_XML_UPDATE_CPU);
  GSL_CONST(VIR_DOMAIN_XML_MIGRATABLE);
  GSL_CONST(VIR_DOMAIN_DESTROY_GRACEFUL);
  GSL_CONST(VIR_DOMAIN_AFFECT_LIVE);
  GSL_CONST(VIR_DOMAIN_AFFECT_CONFIG);
  GSL_CONST(VIR_ERR_NO_DOMAIN);
  GSL_CONST(VIR_ERR_OPERATION_INVALID);
  GSL_CONST(VIR_ERR_NO_CONNECT);
  GSL_CONST(VIR_ERR_NO_DOMAIN_SNAPSHOT);
  GSL_CONST(VIR_ERR_NO_DOMAIN_METADATA);
  GSL_CONST(VIR_ERR_AGENT_UNRESPONSIVE);
  GSL_CONST(VIR_ERR_OPERATION_UNSUPPORTED);
#undef GSL_CONST
  return c;
}

}  // namespace

Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  InitLibvirtOnce();
  auto* data = new AddonData();
  env.SetInstanceData<AddonData>(data);  // deleted by node-addon-api at env teardown
  InitAsync(env, data);
  Napi::Function connCtor = Connection::Init(env);
  Napi::Function domCtor = Domain::Init(env);
  data->connectionCtor = Napi::Persistent(connCtor);
  data->domainCtor = Napi::Persistent(domCtor);
  exports.Set("open", Napi::Function::New(env, Connection::Open, "open"));
  exports.Set("poolStats", Napi::Function::New(env, PoolStatsJs, "poolStats"));
  exports.Set("resetPoolPeak", Napi::Function::New(env, ResetPoolPeak, "resetPoolPeak"));
  exports.Set("configurePool", Napi::Function::New(env, ConfigurePool, "configurePool"));
  exports.Set("libVersion", Napi::Function::New(env, LibVersion, "libVersion"));
  exports.Set("constants", Constants(env));
  exports.Set("NativeConnection", connCtor);
  exports.Set("NativeDomain", domCtor);
  return exports;
}

}  // namespace gsl

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // Module registration is called straight from C, outside node-addon-api's exception handling: an exception
  // escaping here aborts the process. It happens when a worker thread is terminated while it loads the addon
  // (every N-API call then fails); the half-loaded module is never used.
  try {
    return gsl::InitModule(env, exports);
  } catch (const Napi::Error& e) {
    napi_throw(env, e.Value());  // best effort: the environment may already refuse it
    return exports;
  } catch (...) {
    return exports;
  }
}

NODE_API_MODULE(groupsnap_libvirt, Init)
