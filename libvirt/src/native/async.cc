#include "async.h"

#include "pool.h"

namespace gsl {

namespace {

struct Job {
  Work work;
  Outcome outcome;
  napi_deferred deferred;
  AddonData* data;
};

void SettleJobIn(Napi::Env env, Job* job) {
  Napi::HandleScope scope(env);
  AddonData* data = job->data;
  if (--data->pending == 0 && data->tsfn != nullptr) napi_unref_threadsafe_function(env, data->tsfn);
  napi_value settled;
  bool ok = !job->outcome.failed();
  if (ok) {
    try {
      settled = job->outcome.Build(env);
    } catch (const Napi::Error& e) {
      ok = false;
      settled = e.Value();
    }
  } else {
    settled = ToJsError(env, job->outcome.error()).Value();
  }
  if (ok) {
    napi_resolve_deferred(env, job->deferred, settled);
  } else {
    napi_reject_deferred(env, job->deferred, settled);
  }
}

// Runs on the JS thread; env is null when the environment is being torn down.
void SettleJob(napi_env rawEnv, napi_value /*js_callback*/, void* /*context*/, void* raw) {
  std::unique_ptr<Job> job(static_cast<Job*>(raw));
  if (rawEnv == nullptr) return;
  try {
    SettleJobIn(Napi::Env(rawEnv), job.get());
  } catch (...) {
    // Only when JS can no longer run (a worker thread being terminated): nothing left to settle.
  }
}

}  // namespace

CallError CaptureLibvirtError() {
  CallError out;
  virError err = {};
  if (virCopyLastError(&err) > 0) {
    out.code = err.code;
    out.domain = err.domain;
    out.level = err.level;
    out.message = err.message != nullptr ? err.message : "libvirt error";
  } else {
    out.message = "libvirt call failed without reporting an error";
  }
  virResetError(&err);
  virResetLastError();
  return out;
}

Napi::Error ToJsError(Napi::Env env, const CallError& error) {
  Napi::Error e = Napi::Error::New(env, error.message);
  Napi::Object o = e.Value();
  o.Set("libvirtCode", Napi::Number::New(env, error.code));
  o.Set("libvirtDomain", Napi::Number::New(env, error.domain));
  o.Set("libvirtLevel", Napi::Number::New(env, error.level));
  if (!error.kind.empty()) o.Set("kind", Napi::String::New(env, error.kind));
  return e;
}

namespace {

struct GateHook {
  std::shared_ptr<EnvGate> gate;
};

void CloseGate(void* arg) {
  auto* hook = static_cast<GateHook*>(arg);
  std::lock_guard<std::mutex> lock(hook->gate->mu);
  hook->gate->open = false;
}

}  // namespace

void* NewGateHook(const std::shared_ptr<EnvGate>& gate) { return new GateHook{gate}; }

void AddGateHook(napi_env env, void* hook) { napi_add_env_cleanup_hook(env, CloseGate, hook); }

void RemoveGateHook(napi_env env, void* hook) {
  // A no-op when the hook already ran (environment teardown).
  napi_remove_env_cleanup_hook(env, CloseGate, hook);
  delete static_cast<GateHook*>(hook);
}

void InitAsync(Napi::Env env, AddonData* data) {
  napi_value name = Napi::String::New(env, "groupsnap-libvirt-call");
  NAPI_THROW_IF_FAILED_VOID(env, napi_create_threadsafe_function(env, nullptr, nullptr, name, 0, 1, nullptr,
                                                                 nullptr, nullptr, SettleJob, &data->tsfn));
  AddGateHook(env, NewGateHook(data->gate));  // lives as long as the environment
  // Unref'd until a call is pending, so an idle process can exit.
  NAPI_THROW_IF_FAILED_VOID(env, napi_unref_threadsafe_function(env, data->tsfn));
}

Napi::Promise Dispatch(Napi::Env env, Work work) {
  auto* data = env.GetInstanceData<AddonData>();
  napi_deferred deferred;
  napi_value promise;
  // Fails only while the environment is being torn down (a worker thread terminated mid-loop): JS can no longer
  // run, and throwing would escape node-addon-api's handler (it cannot throw into a dying env) and abort the
  // process. Nothing was started; return nothing.
  if (napi_create_promise(env, &deferred, &promise) != napi_ok) return Napi::Promise();
  auto* job = new Job{std::move(work), Outcome(), deferred, data};
  if (data->pending++ == 0) napi_ref_threadsafe_function(env, data->tsfn);
  napi_threadsafe_function tsfn = data->tsfn;
  std::shared_ptr<EnvGate> gate = data->gate;
  Pool::Instance().Submit([job, tsfn, gate] {
    virResetLastError();
    job->work(job->outcome);
    job->work = nullptr;  // drop captured libvirt references here, off the JS thread
    std::lock_guard<std::mutex> lock(gate->mu);
    if (!gate->open || napi_call_threadsafe_function(tsfn, job, napi_tsfn_nonblocking) != napi_ok) delete job;
  });
  return Napi::Promise(env, promise);
}

Napi::Promise Rejected(Napi::Env env, CallError error) {
  napi_deferred deferred;
  napi_value promise;
  if (napi_create_promise(env, &deferred, &promise) != napi_ok) return Napi::Promise();  // see Dispatch
  try {
    napi_reject_deferred(env, deferred, ToJsError(env, error).Value());
  } catch (const Napi::Error&) {
    // the environment is going away: the promise is never observed
  }
  return Napi::Promise(env, promise);
}

DomainRef RefDomain(virDomainPtr dom) {
  virDomainRef(dom);
  return AdoptDomain(dom);
}

DomainRef AdoptDomain(virDomainPtr dom) {
  return DomainRef(dom, [](virDomainPtr d) { virDomainFree(d); });
}

ConnectRef RefConnect(virConnectPtr conn) {
  virConnectRef(conn);
  return ConnectRef(conn, [](virConnectPtr c) { virConnectClose(c); });
}

}  // namespace gsl
