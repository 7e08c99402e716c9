// Makes the shared library importable as the Python module inception_fast._C; importing it runs
// the TORCH_LIBRARY registrations of every source linked in. No Python API of its own: the ops
// are reached through torch.ops.inception_fast.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
