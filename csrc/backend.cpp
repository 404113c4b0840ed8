// backend.cpp: the table of registered backends (backend.h).
#include "backend.h"

#include <mutex>

namespace gru_native {
namespace {

struct Table {
  std::mutex mutex;
  std::vector<std::pair<c10::DeviceType, const BackendEntry*>> entries;
};

// Function-local: backends register during static initialisation, in any order of files.
Table& table() {
  static Table t;
  return t;
}

}  // namespace

void add_backend(c10::DeviceType type, const BackendEntry* entry) {
  Table& t = table();
  const std::lock_guard<std::mutex> lock(t.mutex);
  for (const auto& e : t.entries) {
    TORCH_CHECK(e.first != type, "gru_native: two backends registered for ", type, ": ",
                e.second->name, " and ", entry->name);
  }
  t.entries.emplace_back(type, entry);
}

const BackendEntry* find_backend(c10::DeviceType type) {
  // Read without the lock: registration happens at load time, before any call.
  for (const auto& e : table().entries) {
    if (e.first == type) return e.second;
  }
  return nullptr;
}

std::vector<std::pair<c10::DeviceType, const BackendEntry*>> registered_backends() {
  Table& t = table();
  const std::lock_guard<std::mutex> lock(t.mutex);
  return t.entries;
}

}  // namespace gru_native
