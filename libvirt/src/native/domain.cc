#include <cstdlib>

#include "handles.h"
#include "pool.h"

namespace gsl {

namespace {

struct DomainInit {
  virDomainPtr dom;
  std::string name;
  std::string uuid;
  std::shared_ptr<ConnHandle> conn;
};

Napi::Value StringResult(Napi::Env env, const std::string& s) { return Napi::String::New(env, s); }

void ReturnString(Outcome& out, char* owned) {
  std::string s = TakeString(owned);
  out.Return([s](Napi::Env env) { return StringResult(env, s); });
}

void ReturnInt(Outcome& out, long long v) {
  out.Return([v](Napi::Env env) { return Napi::Number::New(env, static_cast<double>(v)); });
}

void ReturnBool(Outcome& out, bool v) {
  out.Return([v](Napi::Env env) { return Napi::Boolean::New(env, v); });
}

// Holds the C array of mountpoints that libvirt's fsfreeze calls take.
struct CStrings {
  explicit CStrings(const std::vector<std::string>& v) {
    for (const auto& s : v) ptrs.push_back(s.c_str());
  }
  const char** data() { return ptrs.empty() ? nullptr : ptrs.data(); }
  unsigned int size() const { return static_cast<unsigned int>(ptrs.size()); }
  std::vector<const char*> ptrs;
};

}  // namespace

std::string TakeString(char* s) {
  std::string out = s != nullptr ? s : "";
  free(s);
  return out;
}

std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsString()) {
    throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a string");
  }
  return info[i].As<Napi::String>().Utf8Value();
}

bool ArgOptionalString(const Napi::CallbackInfo& info, size_t i, const char* what, std::string* out) {
  if (info.Length() <= i || info[i].IsNull() || info[i].IsUndefined()) return false;
  *out = ArgString(info, i, what);
  return true;
}

unsigned int ArgFlags(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || info[i].IsUndefined() || info[i].IsNull()) return 0;
  if (!info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "flags must be a number");
  return info[i].As<Napi::Number>().Uint32Value();
}

std::vector<std::string> ArgStringArray(const Napi::CallbackInfo& info, size_t i, const char* what) {
  std::vector<std::string> out;
  if (info.Length() <= i || info[i].IsUndefined() || info[i].IsNull()) return out;
  if (!info[i].IsArray()) throw Napi::TypeError::New(info.Env(), std::string(what) + " must be an array of strings");
  Napi::Array arr = info[i].As<Napi::Array>();
  for (uint32_t k = 0; k < arr.Length(); ++k) {
    Napi::Value v = arr.Get(k);
    if (!v.IsString()) throw Napi::TypeError::New(info.Env(), std::string(what) + " must be an array of strings");
    out.push_back(v.As<Napi::String>().Utf8Value());
  }
  return out;
}

Napi::Function Domain::Init(Napi::Env env) {
  return DefineClass(env, "NativeDomain",
                     {
                         InstanceAccessor<&Domain::Name>("name"),
                         InstanceAccessor<&Domain::UUID>("uuid"),
                         InstanceMethod<&Domain::Free>("free"),
                         InstanceMethod<&Domain::XML>("xml"),
                         InstanceMethod<&Domain::State>("state"),
                         InstanceMethod<&Domain::Info>("info"),
                         InstanceMethod<&Domain::IsActive>("isActive"),
                         InstanceMethod<&Domain::IsPersistent>("isPersistent"),
                         InstanceMethod<&Domain::Suspend>("suspend"),
                         InstanceMethod<&Domain::Resume>("resume"),
                         InstanceMethod<&Domain::Create>("create"),
                         InstanceMethod<&Domain::Destroy>("destroy"),
                         InstanceMethod<&Domain::Undefine>("undefine"),
                         InstanceMethod<&Domain::SnapshotCreateXML>("snapshotCreateXML"),
                         InstanceMethod<&Domain::SnapshotList>("snapshotList"),
                         InstanceMethod<&Domain::SnapshotXML>("snapshotXML"),
                         InstanceMethod<&Domain::SnapshotDelete>("snapshotDelete"),
                         InstanceMethod<&Domain::BlockCommit>("blockCommit"),
                         InstanceMethod<&Domain::BlockJobInfo>("blockJobInfo"),
                         InstanceMethod<&Domain::BlockJobAbort>("blockJobAbort"),
                         InstanceMethod<&Domain::BlockPull>("blockPull"),
                         InstanceMethod<&Domain::ManagedSave>("managedSave"),
                         InstanceMethod<&Domain::HasManagedSaveImage>("hasManagedSaveImage"),
                         InstanceMethod<&Domain::ManagedSaveRemove>("managedSaveRemove"),
                         InstanceMethod<&Domain::SetMetadata>("setMetadata"),
                         InstanceMethod<&Domain::GetMetadata>("getMetadata"),
                         InstanceMethod<&Domain::FSFreeze>("fsFreeze"),
                         InstanceMethod<&Domain::FSThaw>("fsThaw"),
                     });
}

Domain::Domain(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Domain>(info) {
  if (info.Length() < 1 || !info[0].IsExternal()) {
    throw Napi::TypeError::New(info.Env(), "NativeDomain is created by a Connection");
  }
  auto* init = info[0].As<Napi::External<DomainInit>>().Data();
  dom_ = init->dom;
  name_ = init->name;
  uuid_ = init->uuid;
  conn_ = init->conn;
}

Domain::~Domain() { Release(); }

void Domain::Release() {
  if (dom_ == nullptr) return;
  virDomainPtr dom = dom_;
  dom_ = nullptr;
  // The last domain reference may hold the last connection reference, whose disposal talks RPC: not on the
  // JS thread, and not in a GC finalizer.
  Pool::Instance().Submit([dom] {
    virDomainFree(dom);
    virResetLastError();
  });
}

Napi::Object Domain::Wrap(Napi::Env env, virDomainPtr dom, const std::string& name, const std::string& uuid,
                          std::shared_ptr<ConnHandle> conn) {
  auto* data = env.GetInstanceData<AddonData>();
  DomainInit init{dom, name, uuid, std::move(conn)};
  return data->domainCtor.New({Napi::External<DomainInit>::New(env, &init)});
}

void Domain::ReturnDomain(Outcome& out, virDomainPtr dom, std::shared_ptr<ConnHandle> conn) {
  const char* n = virDomainGetName(dom);
  std::string name = n != nullptr ? n : "";
  char uuid[VIR_UUID_STRING_BUFLEN] = {};
  virDomainGetUUIDString(dom, uuid);
  std::string uuidStr = uuid;
  // shared_ptr so the builder stays copyable; the builder takes the reference out before wrapping it.
  auto owned = AdoptDomain(dom);
  out.Return([owned, name, uuidStr, conn](Napi::Env env) mutable -> Napi::Value {
    virDomainPtr raw = owned.get();
    virDomainRef(raw);  // the JS object's own reference; `owned` drops the pool's one when the job is freed
    return Wrap(env, raw, name, uuidStr, conn);
  });
}

Napi::Value Domain::Run(Napi::Env env, std::function<void(virDomainPtr, Outcome&)> fn) {
  if (dom_ == nullptr) {
    CallError e;
    e.code = VIR_ERR_INVALID_DOMAIN;
    e.kind = "freed";
    e.message = "handle of domain '" + name_ + "' was freed";
    return Rejected(env, e);
  }
  if (conn_->closed) return Rejected(env, ClosedError(*conn_));
  DomainRef ref = RefDomain(dom_);
  return Dispatch(env, [ref, fn](Outcome& out) { fn(ref.get(), out); });
}

Napi::Value Domain::Name(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), name_); }
Napi::Value Domain::UUID(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), uuid_); }

Napi::Value Domain::Free(const Napi::CallbackInfo& info) {
  Release();
  return info.Env().Undefined();
}

Napi::Value Domain::XML(const Napi::CallbackInfo& info) {
  unsigned int flags = ArgFlags(info, 0);
  return Run(info.Env(), [flags](virDomainPtr d, Outcome& out) {
    char* xml = virDomainGetXMLDesc(d, flags);
    if (xml == nullptr) return out.Fail();
    ReturnString(out, xml);
  });
}

Napi::Value Domain::State(const Napi::CallbackInfo& info) {
  return Run(info.Env(), [](virDomainPtr d, Outcome& out) {
    int state = 0, reason = 0;
    if (virDomainGetState(d, &state, &reason, 0) < 0) return out.Fail();
    out.Return([state, reason](Napi::Env env) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("state", state);
      o.Set("reason", reason);
      return o;
    });
  });
}

Napi::Value Domain::Info(const Napi::CallbackInfo& info) {
  return Run(info.Env(), [](virDomainPtr d, Outcome& out) {
    virDomainInfo i = {};
    if (virDomainGetInfo(d, &i) < 0) return out.Fail();
    out.Return([i](Napi::Env env) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("state", static_cast<double>(i.state));
      o.Set("maxMemKiB", static_cast<double>(i.maxMem));
      o.Set("memoryKiB", static_cast<double>(i.memory));
      o.Set("nrVirtCpu", static_cast<double>(i.nrVirtCpu));
      o.Set("cpuTimeNs", Napi::BigInt::New(env, static_cast<uint64_t>(i.cpuTime)));
      return o;
    });
  });
}

Napi::Value Domain::IsActive(const Napi::CallbackInfo& info) {
  return Run(info.Env(), [](virDomainPtr d, Outcome& out) {
    int r = virDomainIsActive(d);
    if (r < 0) return out.Fail();
    ReturnBool(out, r == 1);
  });
}

Napi::Value Domain::IsPersistent(const Napi::CallbackInfo& info) {
  return Run(info.Env(), [](virDomainPtr d, Outcome& out) {
    int r = virDomainIsPersistent(d);
    if (r < 0) return out.Fail();
    ReturnBool(out, r == 1);
  });
}

Napi::Value Domain::Suspend(const Napi::CallbackInfo& info) {
  return Run(info.Env(), [](virDomainPtr d, Outcome& out) {
    if (virDomainSuspend(d) < 0) out.Fail();
  });
}

Napi::Value Domain::Resume(const Napi::CallbackInfo& info) {
  return Run(info.Env(), [](virDomainPtr d, Outcome& out) {
    if (virDomainResume(d) < 0) out.Fail();
  });
}

Napi::Value Domain::Create(const Napi::CallbackInfo& info) {
  unsigned int flags = ArgFlags(info, 0);
  return Run(info.Env(), [flags](virDomainPtr d, Outcome& out) {
    if (virDomainCreateWithFlags(d, flags) < 0) out.Fail();
  });
}

Napi::Value Domain::Destroy(const Napi::CallbackInfo& info) {
  unsigned int flags = ArgFlags(info, 0);
  return Run(info.Env(), [flags](virDomainPtr d, Outcome& out) {
    if (virDomainDestroyFlags(d, flags) < 0) out.Fail();
  });
}

Napi::Value Domain::Undefine(const Napi::CallbackInfo& info) {
  unsigned int flags = ArgFlags(info, 0);
  return Run(info.Env(), [flags](virDomainPtr d, Outcome& out) {
    if (virDomainUndefineFlags(d, flags) < 0) out.Fail();
  });
}

Napi::Value Domain::SnapshotCreateXML(const Napi::CallbackInfo& info) {
  std::string xml = ArgString(info, 0, "xml");
  unsigned int flags = ArgFlags(info, 1);
  return Run(info.Env(), [xml, flags](virDomainPtr d, Outcome& out) {
    virDomainSnapshotPtr snap = virDomainSnapshotCreateXML(d, xml.c_str(), flags);
    if (snap == nullptr) return out.Fail();
    const char* n = virDomainSnapshotGetName(snap);
    std::string name = n != nullptr ? n : "";
    virDomainSnapshotFree(snap);
    out.Return([name](Napi::Env env) { return StringResult(env, name); });
  });
}

Napi::Value Domain::SnapshotList(const Napi::CallbackInfo& info) {
  unsigned int flags = ArgFlags(info, 0);
  return Run(info.Env(), [flags](virDomainPtr d, Outcome& out) {
    virDomainSnapshotPtr* snaps = nullptr;
    int n = virDomainListAllSnapshots(d, &snaps, flags);
    if (n < 0) return out.Fail();
    std::vector<std::string> names;
    for (int i = 0; i < n; ++i) {
      const char* name = virDomainSnapshotGetName(snaps[i]);
      names.emplace_back(name != nullptr ? name : "");
      virDomainSnapshotFree(snaps[i]);
    }
    free(snaps);
    out.Return([names](Napi::Env env) {
      Napi::Array arr = Napi::Array::New(env, names.size());
      for (size_t i = 0; i < names.size(); ++i) arr.Set(i, names[i]);
      return arr;
    });
  });
}

Napi::Value Domain::SnapshotXML(const Napi::CallbackInfo& info) {
  std::string name = ArgString(info, 0, "name");
  unsigned int flags = ArgFlags(info, 1);
  return Run(info.Env(), [name, flags](virDomainPtr d, Outcome& out) {
    virDomainSnapshotPtr snap = virDomainSnapshotLookupByName(d, name.c_str(), 0);
    if (snap == nullptr) return out.Fail();
    char* xml = virDomainSnapshotGetXMLDesc(snap, flags);
    if (xml == nullptr) out.Fail();
    virDomainSnapshotFree(snap);
    if (xml != nullptr) ReturnString(out, xml);
  });
}

Napi::Value Domain::SnapshotDelete(const Napi::CallbackInfo& info) {
  std::string name = ArgString(info, 0, "name");
  unsigned int flags = ArgFlags(info, 1);
  return Run(info.Env(), [name, flags](virDomainPtr d, Outcome& out) {
    virDomainSnapshotPtr snap = virDomainSnapshotLookupByName(d, name.c_str(), 0);
    if (snap == nullptr) return out.Fail();
    if (virDomainSnapshotDelete(snap, flags) < 0) out.Fail();
    virDomainSnapshotFree(snap);
  });
}

Napi::Value Domain::BlockCommit(const Napi::CallbackInfo& info) {
  std::string disk = ArgString(info, 0, "disk");
  std::string base, top;
  bool hasBase = ArgOptionalString(info, 1, "base", &base);
  bool hasTop = ArgOptionalString(info, 2, "top", &top);
  double bandwidth = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().DoubleValue() : 0;
  unsigned int flags = ArgFlags(info, 4);
  return Run(info.Env(), [=](virDomainPtr d, Outcome& out) {
    if (virDomainBlockCommit(d, disk.c_str(), hasBase ? base.c_str() : nullptr, hasTop ? top.c_str() : nullptr,
                             static_cast<unsigned long>(bandwidth), flags) < 0) {
      out.Fail();
    }
  });
}

Napi::Value Domain::BlockJobInfo(const Napi::CallbackInfo& info) {
  std::string disk = ArgString(info, 0, "disk");
  unsigned int flags = ArgFlags(info, 1);
  return Run(info.Env(), [disk, flags](virDomainPtr d, Outcome& out) {
    virDomainBlockJobInfo job = {};
    int r = virDomainGetBlockJobInfo(d, disk.c_str(), &job, flags);
    if (r < 0) return out.Fail();
    out.Return([r, job](Napi::Env env) -> Napi::Value {
      if (r == 0) return env.Null();
      Napi::Object o = Napi::Object::New(env);
      o.Set("type", static_cast<double>(job.type));
      o.Set("bandwidth", static_cast<double>(job.bandwidth));
      o.Set("cur", static_cast<double>(job.cur));
      o.Set("end", static_cast<double>(job.end));
      return o;
    });
  });
}

Napi::Value Domain::BlockJobAbort(const Napi::CallbackInfo& info) {
  std::string disk = ArgString(info, 0, "disk");
  unsigned int flags = ArgFlags(info, 1);
  return Run(info.Env(), [disk, flags](virDomainPtr d, Outcome& out) {
    if (virDomainBlockJobAbort(d, disk.c_str(), flags) < 0) out.Fail();
  });
}

Napi::Value Domain::BlockPull(const Napi::CallbackInfo& info) {
  std::string disk = ArgString(info, 0, "disk");
  double bandwidth = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : 0;
  unsigned int flags = ArgFlags(info, 2);
  return Run(info.Env(), [=](virDomainPtr d, Outcome& out) {
    if (virDomainBlockPull(d, disk.c_str(), static_cast<unsigned long>(bandwidth), flags) < 0) out.Fail();
  });
}

Napi::Value Domain::ManagedSave(const Napi::CallbackInfo& info) {
  unsigned int flags = ArgFlags(info, 0);
  return Run(info.Env(), [flags](virDomainPtr d, Outcome& out) {
    if (virDomainManagedSave(d, flags) < 0) out.Fail();
  });
}

Napi::Value Domain::HasManagedSaveImage(const Napi::CallbackInfo& info) {
  return Run(info.Env(), [](virDomainPtr d, Outcome& out) {
    int r = virDomainHasManagedSaveImage(d, 0);
    if (r < 0) return out.Fail();
    ReturnBool(out, r == 1);
  });
}

Napi::Value Domain::ManagedSaveRemove(const Napi::CallbackInfo& info) {
  return Run(info.Env(), [](virDomainPtr d, Outcome& out) {
    if (virDomainManagedSaveRemove(d, 0) < 0) out.Fail();
  });
}

// Affects what the caller would expect to see next: the running definition and, for a persistent domain, the
// saved one too; for a shut-off domain only the saved one exists.
static int MetadataWriteFlags(virDomainPtr d, Outcome& out) {
  int active = virDomainIsActive(d);
  if (active < 0) return out.Fail(), -1;
  int persistent = virDomainIsPersistent(d);
  if (persistent < 0) return out.Fail(), -1;
  if (active == 0) return VIR_DOMAIN_AFFECT_CONFIG;
  return VIR_DOMAIN_AFFECT_LIVE | (persistent == 1 ? VIR_DOMAIN_AFFECT_CONFIG : 0);
}

Napi::Value Domain::SetMetadata(const Napi::CallbackInfo& info) {
  std::string uri = ArgString(info, 0, "namespaceUri");
  std::string key, xml;
  bool hasKey = ArgOptionalString(info, 1, "key", &key);
  bool hasXml = ArgOptionalString(info, 2, "xml", &xml);
  if (hasXml && !hasKey) throw Napi::TypeError::New(info.Env(), "key is required when setting metadata");
  return Run(info.Env(), [=](virDomainPtr d, Outcome& out) {
    int flags = MetadataWriteFlags(d, out);
    if (flags < 0) return;
    if (virDomainSetMetadata(d, VIR_DOMAIN_METADATA_ELEMENT, hasXml ? xml.c_str() : nullptr,
                             hasKey ? key.c_str() : nullptr, uri.c_str(), flags) < 0) {
      out.Fail();
    }
  });
}

Napi::Value Domain::GetMetadata(const Napi::CallbackInfo& info) {
  std::string uri = ArgString(info, 0, "namespaceUri");
  unsigned int flags = ArgFlags(info, 1);
  return Run(info.Env(), [uri, flags](virDomainPtr d, Outcome& out) {
    char* xml = virDomainGetMetadata(d, VIR_DOMAIN_METADATA_ELEMENT, uri.c_str(), flags);
    if (xml == nullptr) return out.Fail();
    ReturnString(out, xml);
  });
}

Napi::Value Domain::FSFreeze(const Napi::CallbackInfo& info) {
  std::vector<std::string> mounts = ArgStringArray(info, 0, "mountpoints");
  return Run(info.Env(), [mounts](virDomainPtr d, Outcome& out) {
    CStrings c(mounts);
    int n = virDomainFSFreeze(d, c.data(), c.size(), 0);
    if (n < 0) return out.Fail();
    ReturnInt(out, n);
  });
}

Napi::Value Domain::FSThaw(const Napi::CallbackInfo& info) {
  std::vector<std::string> mounts = ArgStringArray(info, 0, "mountpoints");
  return Run(info.Env(), [mounts](virDomainPtr d, Outcome& out) {
    CStrings c(mounts);
    int n = virDomainFSThaw(d, c.data(), c.size(), 0);
    if (n < 0) return out.Fail();
    ReturnInt(out, n);
  });
}

}  // namespace gsl
