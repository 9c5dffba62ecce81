// TorchScript scripts (RedisAI's AI.SCRIPTSTORE / AI.SCRIPTEXECUTE): what
// tch does not expose. Source is compiled into a CompilationUnit with a
// resolver that knows `torch`, `redis` and `redisAI`; functions run with
// RedisAI's two calling conventions; and three operators let a script call
// back into the node that runs it (`redis.execute`, `redis.asList`,
// `redisAI.model_execute`).
//
// Conventions (as in shim.cpp): every extern "C" function catches every
// exception and reports it as a malloc'd string in *err. Tensors cross as
// `at::Tensor*` (tch's C_tensor): inputs borrowed, outputs `new`ed for the
// caller to adopt. Callbacks into Rust return a status; C++ throws only
// after they have returned, so no exception unwinds through Rust frames.
#include <torch/script.h>
#include <torch/csrc/jit/api/compilation_unit.h>
#include <torch/csrc/jit/frontend/resolver.h>
#include <torch/csrc/jit/frontend/sugared_value.h>

#include <strings.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

using torch::jit::CompilationUnit;

namespace {

char *dup(const std::string &s) {
  char *p = static_cast<char *>(std::malloc(s.size() + 1));
  if (p) std::memcpy(p, s.c_str(), s.size() + 1);
  return p;
}

}  // namespace

extern "C" {

// A byte string the other side owns.
struct TsStr {
  const char *ptr;
  size_t len;
};

// One node of a reply from the host, the tree flattened in pre-order:
// kind 0 nil, 1 string (ptr, n = length), 2 integer (n), 3 array (n = its
// number of children, which follow).
struct TsReply {
  int32_t kind;
  int64_t n;
  const char *ptr;
};

// `redis.execute(argv...)`: 0 with the reply in *reply (valid until the next
// callback on this thread), or -1 with the message in *err (likewise).
typedef int (*ts_exec_cb)(void *host, const TsStr *argv, size_t argc, const TsReply **reply, size_t *n_nodes,
                          TsStr *err);
// `redisAI.model_execute(key, inputs, n_outputs)`: 0 with *n_outs new
// tensors in *outs (the caller takes them and deletes the pointers), or -1.
typedef int (*ts_model_cb)(void *host, TsStr key, at::Tensor *const *inputs, size_t n_in, int64_t n_out,
                           at::Tensor *const **outs, size_t *n_outs, TsStr *err);

}  // extern "C"

namespace {

ts_exec_cb exec_cb = nullptr;
ts_model_cb model_cb = nullptr;
// The host of the run on this thread (set for the length of a run).
thread_local void *current_host = nullptr;

struct HostGuard {
  void *before;
  explicit HostGuard(void *host) : before(current_host) { current_host = host; }
  ~HostGuard() { current_host = before; }
};

void *host_or_throw(const char *op) {
  if (!current_host) throw std::runtime_error(std::string(op) + " called outside a script run");
  return current_host;
}

c10::IValue build(const TsReply *nodes, size_t n, size_t &i) {
  if (i >= n) throw std::runtime_error("malformed reply from the host");
  const TsReply &r = nodes[i++];
  switch (r.kind) {
    case 1:
      return c10::IValue(std::string(r.ptr, static_cast<size_t>(r.n)));
    case 2:
      return c10::IValue(static_cast<int64_t>(r.n));
    case 3: {
      c10::impl::GenericList list(c10::AnyType::get());
      for (int64_t k = 0; k < r.n; k++) list.push_back(build(nodes, n, i));
      return c10::IValue(std::move(list));
    }
    default:
      return c10::IValue();
  }
}

c10::IValue redis_execute(const std::string &cmd, const std::vector<std::string> &args) {
  void *host = host_or_throw("redis.execute");
  std::vector<TsStr> argv;
  argv.reserve(args.size() + 1);
  argv.push_back({cmd.data(), cmd.size()});
  for (const auto &a : args) argv.push_back({a.data(), a.size()});
  const TsReply *nodes = nullptr;
  size_t n = 0;
  TsStr err{nullptr, 0};
  if (exec_cb(host, argv.data(), argv.size(), &nodes, &n, &err) != 0) {
    throw std::runtime_error(std::string(err.ptr, err.len));
  }
  size_t i = 0;
  return build(nodes, n, i);
}

c10::impl::GenericList redis_as_list(const c10::IValue &v) { return v.toList(); }

std::vector<at::Tensor> model_execute(const std::string &key, const std::vector<at::Tensor> &inputs,
                                      int64_t n_out) {
  void *host = host_or_throw("redisAI.model_execute");
  std::vector<at::Tensor *> in;
  in.reserve(inputs.size());
  for (const auto &t : inputs) in.push_back(const_cast<at::Tensor *>(&t));
  at::Tensor *const *outs = nullptr;
  size_t n_outs = 0;
  TsStr err{nullptr, 0};
  if (model_cb(host, {key.data(), key.size()}, in.data(), in.size(), n_out, &outs, &n_outs, &err) != 0) {
    throw std::runtime_error(std::string(err.ptr, err.len));
  }
  std::vector<at::Tensor> result;
  result.reserve(n_outs);
  for (size_t k = 0; k < n_outs; k++) {
    result.push_back(std::move(*outs[k]));
    delete outs[k];
  }
  return result;
}

// The names a script may use: `torch` (aten), and the namespaces of the
// operators above, matched without regard to case as RedisAI does.
struct Resolver : public torch::jit::Resolver {
  std::shared_ptr<torch::jit::SugaredValue> resolveValue(const std::string &name, torch::jit::GraphFunction &,
                                                         const torch::jit::SourceRange &) override {
    if (strcasecmp(name.c_str(), "torch") == 0) return std::make_shared<torch::jit::BuiltinModule>("aten");
    if (strcasecmp(name.c_str(), "redis") == 0) return std::make_shared<torch::jit::BuiltinModule>("redis");
    if (strcasecmp(name.c_str(), "redisAI") == 0) return std::make_shared<torch::jit::BuiltinModule>("redisAI");
    return nullptr;
  }
  c10::TypePtr resolveType(const std::string &, const torch::jit::SourceRange &) override { return nullptr; }
};

CompilationUnit &unit(void *h) { return **static_cast<std::shared_ptr<CompilationUnit> *>(h); }

// Argument kinds reported by tessera_script_signature.
enum Kind : int32_t { OTHER = 0, TENSOR = 1, TENSOR_LIST = 2, STR_LIST = 3 };

Kind kind_of(const c10::TypePtr &t) {
  if (t->kind() == c10::TypeKind::TensorType) return TENSOR;
  if (auto list = t->cast<c10::ListType>()) {
    if (list->getElementType()->kind() == c10::TypeKind::TensorType) return TENSOR_LIST;
    if (list->getElementType()->kind() == c10::TypeKind::StringType) return STR_LIST;
  }
  return OTHER;
}

c10::Device device_of(int device) { return device < 0 ? c10::Device(c10::kCPU) : c10::Device(c10::kCUDA, device); }

}  // namespace

extern "C" {

// Registers the operators (once per process, before the first compile).
// The registration is never undone: a static one would deregister at exit,
// possibly after the dispatcher is gone.
int tessera_script_init(ts_exec_cb exec, ts_model_cb model, char **err) {
  static std::once_flag once;
  try {
    std::call_once(once, [&] {
      exec_cb = exec;
      model_cb = model;
      new torch::RegisterOperators(torch::RegisterOperators()
                                       .op("redis::execute", &redis_execute)
                                       .op("redis::asList", &redis_as_list)
                                       .op("redisAI::model_execute", &model_execute));
    });
    return 0;
  } catch (const c10::Error &e) {
    *err = dup(e.what_without_backtrace());
  } catch (const std::exception &e) {
    *err = dup(e.what());
  } catch (...) {
    *err = dup("unknown C++ exception");
  }
  return -1;
}

// Compiles `src`: a handle for the other calls, or NULL with *err.
void *tessera_script_compile(const char *src, size_t len, char **err) {
  try {
    auto cu = std::make_shared<CompilationUnit>();
    cu->define(std::nullopt, std::string(src, len), std::make_shared<Resolver>(), nullptr);
    // A function fills in its schema on first use, unguarded: done here,
    // before any two threads can run it.
    for (torch::jit::Function *f : cu->get_functions()) f->getSchema();
    return new std::shared_ptr<CompilationUnit>(std::move(cu));
  } catch (const c10::Error &e) {
    *err = dup(e.what_without_backtrace());
  } catch (const std::exception &e) {
    *err = dup(e.what());
  } catch (...) {
    *err = dup("unknown C++ exception");
  }
  return nullptr;
}

void tessera_script_free(void *h) { delete static_cast<std::shared_ptr<CompilationUnit> *>(h); }

// The number of arguments of function `fn`, their kinds in kinds[0..cap),
// or -1 when the script has no such function.
int tessera_script_signature(void *h, const char *fn, size_t fn_len, int32_t *kinds, size_t cap) {
  try {
    torch::jit::Function *f = unit(h).find_function(c10::QualifiedName(std::string(fn, fn_len)));
    if (!f) return -1;
    const auto &args = f->getSchema().arguments();
    for (size_t i = 0; i < args.size() && i < cap; i++) kinds[i] = kind_of(args[i].type());
    return static_cast<int>(args.size());
  } catch (...) {
    return -1;
  }
}

// Runs `fn` on `device` (-1: the CPU, k: CUDA device k) with `host` as the
// target of the operators above. Entry points (`entry` != 0) take
// (tensors, keys, args); any other function takes the inputs one per
// Tensor parameter, a List[Tensor] parameter taking all that are left.
// Returns the number of output tensors (*outs: a malloc'd array of new
// tensors on the CPU; none when n_outputs is 0, whatever the function
// returned), -2 when it returned something other than tensors, or -1 with
// *err.
int tessera_script_run(void *h, const char *fn, size_t fn_len, int entry, int device, at::Tensor *const *inputs,
                       size_t n_in, const TsStr *keys, size_t n_keys, const TsStr *args, size_t n_args,
                       int64_t n_outputs, void *host, at::Tensor ***outs, char **err) {
  try {
    std::string name(fn, fn_len);
    torch::jit::Function *f = unit(h).find_function(c10::QualifiedName(name));
    if (!f) {
      *err = dup("Function does not exist: " + name);
      return -1;
    }
    c10::Device dev = device_of(device);
    std::vector<c10::IValue> stack;
    if (entry) {
      c10::List<at::Tensor> tensors;
      tensors.reserve(n_in);
      for (size_t i = 0; i < n_in; i++) tensors.push_back(inputs[i]->to(dev));
      c10::List<std::string> ks, as;
      for (size_t i = 0; i < n_keys; i++) ks.push_back(std::string(keys[i].ptr, keys[i].len));
      for (size_t i = 0; i < n_args; i++) as.push_back(std::string(args[i].ptr, args[i].len));
      stack.emplace_back(std::move(tensors));
      stack.emplace_back(std::move(ks));
      stack.emplace_back(std::move(as));
    } else {
      const auto &params = f->getSchema().arguments();
      if (params.size() > n_in) {
        *err = dup("Wrong number of inputs provided to function: " + name);
        return -1;
      }
      size_t next = 0;
      for (const auto &p : params) {
        Kind k = kind_of(p.type());
        if (k == TENSOR) {
          stack.emplace_back(inputs[next++]->to(dev));
        } else if (k == TENSOR_LIST) {
          c10::List<at::Tensor> rest;
          for (; next < n_in; next++) rest.push_back(inputs[next]->to(dev));
          stack.emplace_back(std::move(rest));
          break;
        } else {
          *err = dup("Unsupported input type in function definition: " + name);
          return -1;
        }
      }
    }
    HostGuard guard(host);
    torch::NoGradGuard no_grad;
    c10::IValue out = (*f)(std::move(stack));
    if (n_outputs == 0) {
      *outs = nullptr;
      return 0;
    }
    std::vector<at::Tensor> res;
    if (out.isTensor()) {
      res.push_back(out.toTensor());
    } else if (out.isTensorList()) {
      for (const at::Tensor &t : out.toTensorList()) res.push_back(t);
    } else if (out.isTuple()) {
      for (const auto &v : out.toTupleRef().elements()) {
        if (!v.isTensor()) return -2;
        res.push_back(v.toTensor());
      }
    } else {
      return -2;
    }
    std::vector<std::unique_ptr<at::Tensor>> host;
    host.reserve(res.size());
    for (const auto &t : res) host.push_back(std::make_unique<at::Tensor>(t.contiguous().to(at::kCPU)));
    auto arr = static_cast<at::Tensor **>(std::malloc(sizeof(at::Tensor *) * (res.size() ? res.size() : 1)));
    if (!arr) {
      *err = dup("out of memory");
      return -1;
    }
    for (size_t i = 0; i < host.size(); i++) arr[i] = host[i].release();
    *outs = arr;
    return static_cast<int>(res.size());
  } catch (const c10::Error &e) {
    *err = dup(e.what_without_backtrace());
  } catch (const std::exception &e) {
    *err = dup(e.what());
  } catch (...) {
    *err = dup("unknown C++ exception");
  }
  return -1;
}

}  // extern "C"
