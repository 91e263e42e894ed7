// The Python module `deepclust._C`. It has no functions: importing it loads the shared library,
// whose static initialisers register the operators (torch.ops.deepclust.*) with the dispatcher.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "deepclust C++/CUDA operators (registered in torch.ops.deepclust)",
      -1,    // size
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
