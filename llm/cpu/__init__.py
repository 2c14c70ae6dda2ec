"""CPU-only speed: compiled-at-first-use C++ kernels (XLA FFI custom calls) and the CPU's
matrix-engine features that decide whether they are used."""
