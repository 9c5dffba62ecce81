// What tch does not expose: the argument names and the number of outputs of
// a TorchScript module's `forward` (RedisAI reports and checks both).
#include <torch/script.h>

#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>

static char *dup(const std::string &s) {
  char *p = static_cast<char *>(std::malloc(s.size() + 1));
  if (p) std::memcpy(p, s.c_str(), s.size() + 1);
  return p;
}

// Loads the module from `data`; on success writes the input names (each
// NUL-terminated, concatenated) to *names (malloc'd), their count to
// *n_inputs and the output count to *n_outputs, and returns 0. On failure
// returns -1 with the message in *err (malloc'd).
extern "C" int tessera_torch_forward_schema(const char *data, size_t len, char **names, size_t *names_len,
                                            int *n_inputs, int *n_outputs, char **err) {
  try {
    std::istringstream in(std::string(data, len));
    torch::jit::Module m = torch::jit::load(in, torch::kCPU);
    auto method = m.find_method("forward");
    if (!method) {
      *err = dup("model has no forward method");
      return -1;
    }
    const c10::FunctionSchema &schema = method->function().getSchema();
    std::string joined;
    int n = 0;
    for (const auto &arg : schema.arguments()) {
      if (arg.name() == "self") continue;
      joined += arg.name();
      joined.push_back('\0');
      n++;
    }
    int outs = 0;
    for (const auto &ret : schema.returns()) {
      const auto &t = ret.type();
      if (auto tuple = t->cast<c10::TupleType>()) {
        outs += static_cast<int>(tuple->elements().size());
      } else {
        outs += 1;
      }
    }
    *names = static_cast<char *>(std::malloc(joined.size() + 1));
    if (!*names) {
      *err = dup("out of memory");
      return -1;
    }
    std::memcpy(*names, joined.data(), joined.size());
    *names_len = joined.size();
    *n_inputs = n;
    *n_outputs = outs;
    return 0;
  } catch (const c10::Error &e) {
    *err = dup(e.what_without_backtrace());
    return -1;
  } catch (const std::exception &e) {
    *err = dup(e.what());
    return -1;
  }
}
