// Makes the shared library importable as the Python module inception_fast._C; importing it runs
// the TORCH_LIBRARY registrations of every source linked in. The ops are reached through
// torch.ops.inception_fast; the module itself holds the CPU memory pool's controls
// (inception_fast.memory wraps them) and the replay of recorded forwards (python_replay.cpp).
#include <Python.h>

#include <c10/util/Exception.h>

#include <exception>

#include "runtime/memory_pool.h"

namespace {

namespace pool = inception_fast::cpu;

template <typename F>
PyObject* guarded(F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

PyObject* pool_enter(PyObject*, PyObject*) {
  return guarded([] {
    pool::pool_enter();
    Py_RETURN_NONE;
  });
}

PyObject* pool_exit(PyObject*, PyObject*) {
  return guarded([] {
    pool::pool_exit();
    Py_RETURN_NONE;
  });
}

PyObject* pool_empty(PyObject*, PyObject*) {
  return guarded([] {
    pool::pool_empty();
    Py_RETURN_NONE;
  });
}

PyObject* pool_set_limit(PyObject*, PyObject* arg) {
  const unsigned long long bytes = PyLong_AsUnsignedLongLong(arg);
  if (PyErr_Occurred()) return nullptr;
  return guarded([bytes] {
    pool::pool_set_limit(static_cast<size_t>(bytes));
    Py_RETURN_NONE;
  });
}

PyObject* pool_stats(PyObject*, PyObject*) {
  return guarded([] {
    const pool::PoolStats s = pool::pool_stats();
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K}", "live_bytes", (unsigned long long)s.live_bytes,
                         "cached_bytes", (unsigned long long)s.cached_bytes, "limit_bytes",
                         (unsigned long long)pool::pool_limit(), "hits", (unsigned long long)s.hits, "misses",
                         (unsigned long long)s.misses);
  });
}

PyMethodDef methods[] = {
    {"_pool_enter", pool_enter, METH_NOARGS, "Enter a pooled-allocation scope on this thread."},
    {"_pool_exit", pool_exit, METH_NOARGS, "Leave a pooled-allocation scope on this thread."},
    {"_pool_empty", pool_empty, METH_NOARGS, "Free the CPU memory pool's cached blocks."},
    {"_pool_set_limit", pool_set_limit, METH_O, "Most bytes the CPU memory pool keeps cached."},
    {"_pool_stats", pool_stats, METH_NOARGS, "The CPU memory pool's counters."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

namespace inception_fast {
void add_replay(PyObject* module);
}

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  try {
    inception_fast::add_replay(module);
  } catch (const std::exception& e) {
    Py_DECREF(module);
    PyErr_SetString(PyExc_ImportError, e.what());
    return nullptr;
  }
  return module;
}
}
